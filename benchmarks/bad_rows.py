"""What one bad row per 10,000 costs: the same corpus run clean, then with rows that make a stage raise
(the test-only fault hook, `albert_batch.pipeline.isolation.FAULTS_ENV`), each run ``albert-batch run`` in
a process of its own; and what the clean path pays for the checks isolation adds per batch (the read's
UTF-8 check of the text column).

    python -m benchmarks.bad_rows                    # 20,000 documents, tiny models, classification and NER
    python -m benchmarks.bad_rows --size base --docs 4096 --every 2048 --tasks classify --runs clean,model_stage

The hook raises before a batch's work in its stage, so the figures are the cost of finding the rows (the
batch split in 16 parts, then halves) and of the parts run again; an error raised late in a model batch
also wastes the work done before it. Prints the times as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from albert_batch.pipeline.isolation import FAULTS_ENV
from benchmarks import workload

ROOT = Path(__file__).resolve().parent.parent


def timed_run(corpus: str, output: Path, models: workload.Models, args: argparse.Namespace,
              faults: dict[str, list[int]] | None) -> tuple[float, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", FAULTS_ENV)}
    if faults:
        env[FAULTS_ENV] = json.dumps(faults)
    summary = output.with_suffix(".json")
    argv = [sys.executable, "-m", "albert_batch.cli", "run", "-q", "--input", corpus, "--output", str(output),
            "--classifier-model", models.classifier, "--ner-model", models.ner, "--tasks", args.tasks,
            "--partition", "dt=2026-12-05", "--precision", args.precision, "--summary-json", str(summary)]
    started = time.monotonic()
    subprocess.run(argv, check=True, env=env)
    return time.monotonic() - started, json.loads(summary.read_text())


def utf8_check_cost(corpus: str, batch_rows: int) -> dict[str, float]:
    """Seconds per batch of the read's UTF-8 check of the text column."""
    from albert_batch.pipeline.inputs import decode_strings

    texts = pq.ParquetDataset(corpus).read(columns=["text"]).column("text").slice(0, batch_rows)
    texts = pa.chunked_array([texts.combine_chunks()])
    started, rounds = time.perf_counter(), 50
    for _ in range(rounds):
        decode_strings(texts)
    return {"rows": len(texts), "seconds_per_batch": (time.perf_counter() - started) / rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--tasks", default="classify,ner")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--every", type=int, default=10_000, help="one bad row per this many rows")
    parser.add_argument("--runs", default="clean,model_stage,tokenize_stage,clean_again",
                        help="which runs, in order (clean, model_stage, tokenize_stage, clean_again)")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"))
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = workload.build_models(work, args.size)
    corpus = workload.build_corpus(work, args.docs, models)
    bad = list(range(args.every // 2, args.docs, args.every))
    results: dict[str, Any] = {"docs": args.docs, "size": args.size, "tasks": args.tasks, "bad_rows": len(bad),
                               "read_utf8_check": utf8_check_cost(corpus.folder, 4096)}
    with tempfile.TemporaryDirectory(prefix="bad-rows-", dir=work) as scratch:
        root = Path(scratch)
        faults_of = {"clean": None, "model_stage": {"model": bad}, "tokenize_stage": {"tokenize": bad},
                     "clean_again": None}
        for name in args.runs.split(","):
            faults = faults_of[name]
            seconds, summary = timed_run(corpus.folder, root / name, models, args, faults)
            results[name] = {"seconds": round(seconds, 1), "process_s": summary["timings"].get("process_s"),
                             "rejects": summary["rejects_by_reason"]}
            print(json.dumps({name: results[name]}), flush=True)
    clean = min(results[name]["seconds"] for name in ("clean", "clean_again") if name in results)
    for name in ("model_stage", "tokenize_stage"):
        if name in results:
            results[name]["share_of_clean"] = round(results[name]["seconds"] / clean, 3)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
