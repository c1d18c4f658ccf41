"""What a changed input costs: a published partition of ``--files`` files gets a late file and one file
written again; the next run of the partition (which processes only those two) against a fresh run of the
new input.

    python -m benchmarks.incremental                  # 2,048 documents in 10 files, base-shaped classifier
    python -m benchmarks.incremental --size tiny --docs 400

The corpus is the benchmark's (`benchmarks.workload`), split into ``--files`` files of one row group each;
``--unit-mib`` is set below a file's size, so that each file is a unit of work of its own (as files larger
than the default 16 MiB are). The late file holds the first file's texts with a few words added, under
new ids (texts no earlier row has, so de-duplication does not make the fresh run cheaper); the rewritten
file holds its own texts in reverse order. Each run is ``albert-batch run`` in a process of its own.
Prints the times and the units each run reused, as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks import workload
from benchmarks.machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
PARTITION = "dt=2026-12-06"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2048)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--unit-mib", default="0.01")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"))
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = workload.build_models(work, args.size)
    base = workload.build_corpus(work, args.docs, models)
    with tempfile.TemporaryDirectory(prefix="incremental-", dir=work) as scratch:
        root = Path(scratch)
        corpus = root / "corpus"
        parts = workload.split_into_files(base, args.files, corpus)

        def timed(output: str, run_id: str) -> tuple[float, dict]:
            summary = root / f"{run_id}.json"
            command = [sys.executable, "-m", "albert_batch.cli", "run", "-q", "--input", str(corpus), "--output",
                       str(root / output), "--classifier-model", models.classifier, "--tasks", "classify",
                       "--partition", PARTITION, "--run-id", run_id, "--precision", args.precision,
                       "--unit-mib", args.unit_mib, "--summary-json", str(summary)]
            started = time.monotonic()
            subprocess.run(command, check=True)
            return time.monotonic() - started, json.loads(summary.read_text())

        first_s, _ = timed("incremental", "first")
        late = pa.table({"id": pc.add(parts[0].column("id"), pa.scalar(10 * base.docs, parts[0].column("id").type)),
                         "text": pc.binary_join_element_wise(parts[0].column("text"), "(a late copy)", " ")})
        pq.write_table(late, corpus / f"part-{len(parts):03d}.parquet")
        rewritten = parts[1].take(list(reversed(range(parts[1].num_rows))))
        pq.write_table(rewritten, corpus / "part-001.parquet")
        changed_s, changed = timed("incremental", "changed")
        fresh_s, fresh = timed("fresh", "fresh")
    print(json.dumps({"cpu": cpu_model(), "docs": args.docs, "size": args.size, "files": len(parts) + 1,
                      "precision": args.precision, "first_run_s": round(first_s, 1),
                      "changed_run_s": round(changed_s, 1), "fresh_run_s": round(fresh_s, 1),
                      "changed_share_of_fresh": round(changed_s / fresh_s, 2),
                      "changed_units": {k: changed["units"][k] for k in ("total", "reused")},
                      "changed_earlier_files": changed["units"]["earlier"]["files"],
                      "fresh_units": {k: fresh["units"][k] for k in ("total", "reused")}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
