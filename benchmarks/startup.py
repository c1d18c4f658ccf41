"""Where a small run's start-up goes: ``albert-batch run`` in a fresh process on its embedded Ray, from the
command's start to the model stage's first batch, step by step.

    python -m benchmarks.startup                       # base-shaped classifier, 256 documents, 3 runs
    python -m benchmarks.startup --tasks classify,ner --runs 5

Each run is the CLI in a process of its own, as a user or a scheduler starts it, with a fresh output (no
earlier work to reuse). The steps come from the run's manifest (`timings`: the laps of its checks, Ray's
start and the reuse check; and, in seconds after the run's call, when the first tokenizer and model actors
started, when a model actor had its models loaded, and when the model stage began and finished its first
batch's forward work); the time from the command's start to the run's call (the interpreter, imports and
settings) is the manifest's ``started_at`` less the moment the command was started. Prints each run's steps and their
medians, in seconds after the command's start, as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import workload
from benchmarks.machine import cpu_class, cpu_model

ROOT = Path(__file__).resolve().parent.parent
PARTITION = "dt=2026-12-06"
# Laps, in the order a run takes them; then the milestones, already counted from the run's call.
LAPS = ("checks_s", "ray_s", "reuse_s")
MILESTONES = ("tokenizer_actor_s", "model_actor_s", "models_loaded_s", "first_forward_s", "first_batch_s")


def steps(launched: float, manifest: dict) -> dict[str, float]:
    """One run's steps, from its manifest, in seconds after the command's start (``launched``, epoch seconds)."""
    called = dt.datetime.fromisoformat(manifest["started_at"]).timestamp() - launched
    timings = manifest["timings"]
    found, at = {"run_called": called}, called
    for lap in LAPS:
        at += timings.get(lap, 0.0)
        found[lap.removesuffix("_s") + "_done"] = at
    for milestone in MILESTONES:
        if milestone in timings:
            found[milestone.removesuffix("_s")] = called + timings[milestone]
    found["run_done"] = called + timings["total_s"]
    return {name: round(value, 2) for name, value in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--tasks", default="classify")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"))
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = workload.build_models(work, args.size)
    corpus = workload.build_corpus(work, args.docs, models)
    model_flags = {"classify": ["--classifier-model", models.classifier], "ner": ["--ner-model", models.ner]}
    runs = []
    with tempfile.TemporaryDirectory(prefix="startup-", dir=work) as scratch:
        for number in range(args.runs):
            output = Path(scratch) / f"out-{number}"
            command = [sys.executable, "-m", "albert_batch.cli", "run", "-q", "--input", corpus.folder,
                       "--output", str(output), "--tasks", args.tasks, "--partition", PARTITION,
                       "--precision", args.precision,
                       *(flag for task in args.tasks.split(",") for flag in model_flags[task])]
            launched = time.time()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            done = round(time.time() - launched, 2)
            manifest = next(output.glob(f"*/{PARTITION}/_manifest.json"))
            runs.append({**steps(launched, json.loads(manifest.read_text())), "command_done": done})
    medians = {name: round(statistics.median(run[name] for run in runs), 2) for name in runs[0]}
    print(json.dumps({"cpu": cpu_model(), "cpu_class": cpu_class(), "docs": args.docs, "size": args.size,
                      "tasks": args.tasks, "precision": args.precision, "runs": runs, "median": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
