"""What resuming saves: a run killed most of the way through, then run again, against a clean run.

    python -m benchmarks.resume                       # 2,000 documents, base-shaped models, killed at 80%
    python -m benchmarks.resume --size tiny --docs 400 --kill-at 0.5

The corpus is the benchmark's (`benchmarks.workload`), written as one file of ``--units`` row groups, each
a unit of work (a run's units are at most 16 MiB of row groups; a 2,000-document corpus would be one,
so units are set to one row group here, as a large corpus's would be). Each run is ``albert-batch run`` in
a process of its own, with batches and output files of one unit. The killed run gets SIGKILL (its whole
process group) once ``--kill-at`` of the units are staged; the resumed run is the same command again.
Prints the three times and the units the resumed run reused, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from benchmarks import workload

ROOT = Path(__file__).resolve().parent.parent
PARTITION = "dt=2026-11-30"
SMALL_UNITS = ("import sys; from albert_batch.pipeline import inputs; inputs.UNIT_BYTES = 1; "
               "from albert_batch.cli import main; sys.exit(main(sys.argv[1:]))")


def command(corpus: Path, output: Path, models: workload.Models, run_id: str, rows_per_unit: int, precision: str,
            summary: Path) -> list[str]:
    return [sys.executable, "-c", SMALL_UNITS, "run", "-q", "--input", str(corpus), "--output", str(output),
            "--classifier-model", models.classifier, "--ner-model", models.ner, "--partition", PARTITION,
            "--run-id", run_id, "--precision", precision, "--batch-size", str(rows_per_unit),
            "--rows-per-file", str(rows_per_unit), "--summary-json", str(summary)]


def done_units(output: Path, units: int, rows_per_unit: int) -> int:
    from albert_batch.pipeline import staging
    from albert_batch.storage import Location

    folder = staging.partition_folder(Location.parse(str(output)), PARTITION)
    done, _ = staging.done_units(folder, dict.fromkeys(range(units), rows_per_unit))
    return len(done)


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    return time.monotonic() - started


def killed(argv: list[str], output: Path, units: int, rows_per_unit: int, kill_at: float) -> tuple[float, int]:
    """Seconds until the run was killed, and how many units it had staged by then."""
    started = time.monotonic()
    process = subprocess.Popen(argv, start_new_session=True,
                               env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    while done_units(output, units, rows_per_unit) < kill_at * units:
        if process.poll() is not None:
            raise RuntimeError("the run ended before it could be killed; lower --kill-at")
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    process.wait()
    time.sleep(5)  # its Ray goes with it (Ray's reaper): let any write under way land before counting
    return elapsed, done_units(output, units, rows_per_unit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--units", type=int, default=10)
    parser.add_argument("--kill-at", type=float, default=0.8, help="share of the units staged when it is killed")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"))
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = workload.build_models(work, args.size)
    base = workload.build_corpus(work, args.docs, models)
    rows_per_unit = -(-args.docs // args.units)
    with tempfile.TemporaryDirectory(prefix="resume-", dir=work) as scratch:
        root = Path(scratch)
        corpus = root / "corpus"
        corpus.mkdir()
        table = pq.ParquetDataset(base.folder).read()
        pq.write_table(table, corpus / "part-0.parquet", row_group_size=rows_per_unit)
        units = -(-table.num_rows // rows_per_unit)

        def argv(output: str, run_id: str) -> list[str]:
            return command(corpus, root / output, models, run_id, rows_per_unit, args.precision,
                           root / f"{run_id}.json")

        clean_s = timed(argv("clean", "clean"))
        killed_s, staged = killed(argv("resumed", "killed"), root / "resumed", units, rows_per_unit, args.kill_at)
        resumed_s = timed(argv("resumed", "resumed"))
        summary: dict[str, Any] = json.loads((root / "resumed.json").read_text())
    print(json.dumps({"docs": args.docs, "size": args.size, "units": units, "precision": args.precision,
                      "clean_s": round(clean_s, 1), "killed_after_s": round(killed_s, 1), "staged_when_killed": staged,
                      "resumed_s": round(resumed_s, 1), "resumed_reused": summary["units"]["reused"],
                      "resumed_run_s": round(summary["seconds"], 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
