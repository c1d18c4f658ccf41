"""``albert-batch run`` end to end, the same corpus several ways (settings, environment) in turns, each run
in a process of its own: a comparison measured in one invocation, so that a busy machine slows every way
alike. Each run's processing seconds (``timings.process_s``: read, tokenize, model and stage, without
Ray's start and the publication) and its whole seconds."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import workload


def in_turns(models: workload.Models, corpus_folder: str, ways: Mapping[str, tuple[Sequence[str], Mapping[str, str]]],
             repeats: int, work: Path) -> dict[str, Any]:
    """``ways``: name -> (extra flags, extra environment). Returns each way's runs and median seconds, and
    each way's median processing seconds against the first way's."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    work.mkdir(parents=True, exist_ok=True)
    for number in range(repeats):
        for name, (flags, env) in ways.items():
            out, summary = work / f"out-{name}-{number}", work / f"summary-{name}-{number}.json"
            command = [sys.executable, "-m", "albert_batch.cli", "run", "--input", corpus_folder, "--output", str(out),
                       "--classifier-model", models.classifier, "--ner-model", models.ner, "--partition", "dt=bench",
                       "--precision", "fp32", "-q", "--summary-json", str(summary), *flags]
            environment = {**os.environ, **env}
            environment.pop("RAY_ADDRESS", None)
            subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL)
            figures = json.loads(summary.read_text())
            runs[name].append({"process_s": figures["timings"]["process_s"], "seconds": round(figures["seconds"], 3),
                               "dedupe": figures.get("dedupe"),
                               "forward_real_tokens": sum(f.get("real_tokens", 0) for f in figures.get("forward", {}).values())})
    medians = {name: statistics.median(r["process_s"] for r in found) for name, found in runs.items()}
    first = next(iter(medians.values()))
    return {"runs": runs, "process_s": medians,
            "against_first": {name: round(value / first - 1, 4) for name, value in medians.items()}}
