"""What scoring identical texts once (`albert_batch.pipeline.dedupe`) costs a corpus without repeats and
saves one with them: ``albert-batch run`` with de-duplication (the default) and with ``--no-dedupe``, in
turns (`benchmarks.turns`), on

- the benchmark corpus (log-normal lengths; its generator repeats about 2% of its texts), and
- the same rows where ``--repeated`` of them (30% by default) carry a copy of the text of a row that keeps
  its own, as templates, spam and retweets give; the repeats are spread over the whole corpus.

    python -m benchmarks.dedupe                        # 20,000 documents, tiny models, 3 runs each way
    python -m benchmarks.dedupe --docs 5000 --repeats 2
    python -m benchmarks.dedupe --size base --docs 1024 --repeated 0.5 --corpora repeated --repeats 1

Also the stages alone, in this process (`stage_alone`): a batch through the tokenizer and the model stage
with and without it, what its bookkeeping costs per batch. Prints JSON: each way's processing seconds
(median), the change against de-duplication on, and the share of rows the run found repeated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import workload
from benchmarks.machine import cpu_model
from benchmarks.turns import in_turns

ROOT = Path(__file__).resolve().parent.parent
WAYS = {"dedupe": ((), {}), "no_dedupe": (("--no-dedupe",), {})}


def with_repeats(corpus: workload.Corpus, share: float, folder: Path) -> str:
    """The corpus's rows with ``share`` of them given the text of a row that keeps its own (chosen at random,
    seeded), so that at least ``share`` of the rows repeat a text."""
    if not (folder / "part.parquet").exists():
        table = pq.read_table(corpus.folder, columns=["id", "text"])
        rng = np.random.default_rng(workload.SEED)
        texts = table.column("text").to_pylist()
        chosen = rng.choice(len(texts), size=int(len(texts) * share), replace=False)
        sources = np.setdiff1d(np.arange(len(texts)), chosen)  # rows that keep their text: each copy repeats one
        for row in chosen:
            texts[row] = texts[int(rng.choice(sources))]
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": table.column("id"), "text": pa.array(texts, pa.string())}),
                       folder / "part.parquet")
    return str(folder)


def stage_alone(models: workload.Models, corpus: workload.Corpus, batch_rows: int, calls: int) -> dict[str, Any]:
    """A batch of ``batch_rows`` of the distinct corpus through the tokenizer and model stages (the tiny
    classifier, fp32) in this process, with and without de-duplication, in turns; the model stage's cache
    emptied before each call, so that every call runs every distinct text: what the bookkeeping costs."""
    import ray

    from albert_batch.config import Precision
    from albert_batch.contract import Task
    from albert_batch.inference import models as model_info
    from albert_batch.pipeline.cluster import start_embedded_ray
    from albert_batch.pipeline.dedupe import ResultCache
    from albert_batch.pipeline.stages import ModelStage, TokenizeStage

    start_embedded_ray(num_cpus=2)
    try:
        uris = {Task.CLASSIFY: models.classifier}
        sha = {Task.CLASSIFY: model_info.inspect(models.classifier, Task.CLASSIFY).weights_sha256}
        table = pq.read_table(corpus.folder, columns=["id", "text"]).slice(0, batch_rows)
        ways = {way: (TokenizeStage(model_uris=uris, dedupe=way == "dedupe"),
                      ModelStage(model_uris=uris, weights_sha256=sha, precision=Precision.FP32, use_gpu=False,
                                 torch_threads=2, max_tokens_per_forward=2048, window_overlap=0,
                                 dedupe=way == "dedupe")) for way in ("dedupe", "no_dedupe")}
        seconds: dict[str, dict[str, list[float]]] = {way: {"tokenize": [], "model": []} for way in ways}
        for number in range(calls + 1):  # the first call of each way warms it up
            for way, (tokenize, model) in ways.items():
                model.cache = ResultCache() if model.cache is not None else None
                started = time.perf_counter()
                batch = tokenize(table)
                tokenized = time.perf_counter()
                model(batch)
                if number:
                    seconds[way]["tokenize"].append(tokenized - started)
                    seconds[way]["model"].append(time.perf_counter() - tokenized)
        medians = {way: {stage: round(statistics.median(found), 4) for stage, found in by_stage.items()}
                   for way, by_stage in seconds.items()}
        on, off = (sum(medians[way].values()) for way in ("dedupe", "no_dedupe"))
        return {"batch_rows": batch_rows, "calls": calls, "seconds": medians, "cost_share": round(on / off - 1, 4)}
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeated", type=float, default=0.3)
    parser.add_argument("--batch-rows", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--corpora", default="distinct,repeated", help="which corpora: distinct, repeated or both")
    parser.add_argument("--cache", default=str(ROOT / ".cache/bench"))
    args = parser.parse_args()
    cache = Path(args.cache)
    models = workload.build_models(cache, args.size)
    corpus = workload.build_corpus(cache, args.docs, models)
    repeated = with_repeats(corpus, args.repeated, cache / f"copies-{args.docs}-{args.repeated}")
    with tempfile.TemporaryDirectory(prefix="dedupe-bench-") as work:
        folders = {"distinct": corpus.folder, "repeated": repeated}
        report = {"cpu": cpu_model(), "docs": args.docs, "size": args.size,
                  "stage": stage_alone(models, corpus, args.batch_rows, args.calls) if args.calls else None,
                  **{name: in_turns(models, folders[name], WAYS, args.repeats, Path(work) / name)
                     for name in args.corpora.split(",")}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
