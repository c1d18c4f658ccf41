"""Put what `make demo` built (.demo/corpus and .demo/models) into the local stack's S3 store, laid out as
the demo DAG (infra/dag-configs/demo.yaml) and infra/README.md expect:

    s3://corpus/demo/dt=DATE/part-*.parquet, then _SUCCESS     the input partition, marked complete
    s3://models/demo/classify/, s3://models/demo/ner/           the two demo models

    docker compose -f infra/compose.yaml run --rm seed-demo --date 2026-11-28

S3 is reached through albert-batch's own storage layer, so the endpoint and credentials come from the
standard AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), as for every run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from albert_batch import storage
from albert_batch.storage import Location

CORPUS = "s3://corpus/demo"
MODELS = {"classify": "s3://models/demo/classify", "ner": "s3://models/demo/ner"}
MARKER = "_SUCCESS"


def upload_folder(folder: Path, target: Location) -> int:
    """Copy every file under ``folder`` to the same relative key under ``target``; returns the file count."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        storage.write_bytes(target.child(*path.relative_to(folder).parts), path.read_bytes())
    return len(files)


def seed(demo: Path, date: str) -> dict[str, int]:
    """Upload the demo corpus as partition ``dt=date`` (marker last) and the demo models."""
    folders = {"corpus": demo / "corpus", **{task: demo / "models" / task for task in MODELS}}
    missing = [str(folder) for folder in folders.values() if not any(folder.glob("*"))]
    if missing:
        raise SystemExit(f"seed-demo: nothing in {', '.join(missing)}; run `make demo` first to build them")
    partition = Location.parse(CORPUS).child(f"dt={date}")
    counts = {"corpus": upload_folder(folders["corpus"], partition)}
    storage.write_bytes(partition.child(MARKER), b"")
    for task, uri in MODELS.items():
        counts[task] = upload_folder(folders[task], Location.parse(uri))
    return counts


def _iso_date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-28") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seed_demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path(".demo"), help="the folder `make demo` filled")
    parser.add_argument("--date", type=_iso_date, default=dt.datetime.now(dt.UTC).date().isoformat(),
                        help="the input partition's date, YYYY-MM-DD (default: today, UTC)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = seed(args.demo, args.date)
    print(f"seed-demo: {counts['corpus']} corpus files in {CORPUS}/dt={args.date}/ (then {MARKER}); "
          + ", ".join(f"{counts[task]} files in {uri}" for task, uri in MODELS.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
