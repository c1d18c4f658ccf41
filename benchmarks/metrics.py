"""What a run's metrics (`albert_batch.metrics`) cost it: the same work with recording on and off
(``ALBERT_BATCH_METRICS=0``), measured in one invocation, in turns.

    python -m benchmarks.metrics                  # 20,000 documents, tiny models, 3 runs each way
    python -m benchmarks.metrics --docs 5000 --repeats 2

Two measurements:

- the model stage alone, in this process on a local Ray: a tokenized batch of ``--batch-rows`` rows through
  `ModelStage` (the tiny classifier, fp32), ``--calls`` times each way in turns; the per-batch time with and
  without recording, and what recording one batch takes (its metrics calls alone);
- ``albert-batch run`` end to end (tiny classifier and NER models), each run in a process of its own, in
  turns with and without recording; each run's processing seconds (``timings.process_s``: read, tokenize,
  model and stage, without Ray's start and the publication).

A tiny model makes a batch's forward passes short, so recording is the largest share of a batch it can be;
with a base-sized model the same microseconds are a far smaller share. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import workload
from benchmarks.machine import cpu_model
from benchmarks.turns import in_turns

ROOT = Path(__file__).resolve().parent.parent


def stage_alone(models: workload.Models, corpus: workload.Corpus, batch_rows: int, calls: int) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import ray

    from albert_batch import metrics
    from albert_batch.config import Precision
    from albert_batch.contract import Task
    from albert_batch.inference import models as model_info
    from albert_batch.pipeline.cluster import start_embedded_ray
    from albert_batch.pipeline.ledger import start_ledger
    from albert_batch.pipeline.stages import ModelStage, TokenizeStage

    start_embedded_ray(num_cpus=2)
    try:
        metrics.bind(metrics.RunTags("bench", "dt=bench"))
        uris = {Task.CLASSIFY: models.classifier}
        batch = TokenizeStage(model_uris=uris)(pq.read_table(corpus.folder, columns=["id", "text"]).slice(0, batch_rows))
        # Without de-duplication, each call runs the whole batch again (with it, the texts would be cached).
        stage = ModelStage(model_uris=uris, weights_sha256={Task.CLASSIFY: model_info.inspect(
            models.classifier, Task.CLASSIFY).weights_sha256}, precision=Precision.FP32, use_gpu=False,
            torch_threads=2, max_tokens_per_forward=2048, window_overlap=0, dedupe=False, ledger=start_ledger())
        stage(batch)  # warm-up: the model's load, kernels, the metrics' creation
        seconds: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(calls):
            for way in ("on", "off"):
                os.environ[metrics.ENABLED_ENV] = "1" if way == "on" else "0"
                started = time.perf_counter()
                stage(batch)
                seconds[way].append(time.perf_counter() - started)
        os.environ[metrics.ENABLED_ENV] = "1"
        recording = []
        for _ in range(calls):
            for predictor in stage.predictors.values():  # a batch's worth of passes to report
                predictor.forward_stats.pass_seconds = [0.01] * 20
                predictor.forward_stats.real_tokens, predictor.forward_stats.padding_tokens = 40_000, 4_000
            started = time.perf_counter()
            stage._report(batch.num_rows, began=time.time())
            metrics.count("albert_batch_rows_processed", batch.num_rows, task="classify")
            recording.append(time.perf_counter() - started)
        on, off = statistics.median(seconds["on"]), statistics.median(seconds["off"])
        return {"batch_rows": batch.num_rows, "calls": calls, "batch_s_on": round(on, 4), "batch_s_off": round(off, 4),
                "cost_share": round(on / off - 1, 4), "recording_one_batch_ms": round(statistics.median(recording) * 1000, 3)}
    finally:
        ray.shutdown()


def end_to_end(models: workload.Models, corpus: workload.Corpus, repeats: int, work: Path) -> dict[str, Any]:
    found = in_turns(models, corpus.folder, {"on": ((), {"ALBERT_BATCH_METRICS": "1"}),
                                             "off": ((), {"ALBERT_BATCH_METRICS": "0"})}, repeats, work)
    on, off = found["process_s"]["on"], found["process_s"]["off"]
    return {"runs": found["runs"], "process_s_on": on, "process_s_off": off, "cost_share": round(on / off - 1, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--cache", default=str(ROOT / ".cache/bench"))
    args = parser.parse_args()
    cache = Path(args.cache)
    models = workload.build_models(cache, "tiny")
    corpus = workload.build_corpus(cache, args.docs, models)
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as work:
        report = {"cpu": cpu_model(), "stage": stage_alone(models, corpus, args.batch_rows, args.calls),
                  "end_to_end": end_to_end(models, corpus, args.repeats, Path(work))}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
