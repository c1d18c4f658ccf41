"""The contenders, each run in a fresh child process (``python -m benchmarks.contenders NAME PARAMS OUT``) so
that its memory is its own and nothing warm carries over from the one before.

Clocks: the Hugging Face pipeline is timed over its call on the corpus, with the model already loaded
(generous to it); the two Ray contenders are timed end to end, from starting Ray to the last output file
(Ray start, actor start-up and model loading, reading and writing included); the hand loop is timed over
its forward passes only, on tokens prepared beforehand — it is the model-bound ceiling.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HF_TASKS = {"classify": "text-classification", "ner": "token-classification"}
HAND_LOOP_TOKENS_PER_FORWARD = 2048
WARMUP_TEXTS = 8


def hf_pipeline(task: str, model: str, texts_file: str, batch_size: int | None) -> dict[str, Any]:
    """(a) ``transformers.pipeline`` as a user would call it: default settings, or with ``batch_size``."""
    from transformers import pipeline

    texts = json.loads(Path(texts_file).read_text())
    kwargs: dict[str, Any] = {"truncation": True} if task == "classify" else {}
    pipe = pipeline(HF_TASKS[task], model=model, device="cpu",
                    **({"aggregation_strategy": "simple"} if task == "ner" else {}))
    if batch_size:
        kwargs["batch_size"] = batch_size
    pipe(texts[:WARMUP_TEXTS], **kwargs)
    started = time.perf_counter()
    results = pipe(texts, **kwargs)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": len(results)}


class DocsPatternPredictor:
    """The Ray Data batch-inference docs' pattern: a Hugging Face pipeline built once per actor and called
    on each batch's texts."""

    def __init__(self, task: str, model: str) -> None:
        from transformers import pipeline

        self.task = task
        self.pipe = pipeline(HF_TASKS[task], model=model, device="cpu",
                             **({"aggregation_strategy": "simple"} if task == "ner" else {}))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = list(batch["text"])
        if self.task == "classify":
            results = self.pipe(texts, truncation=True)
            return {"id": batch["id"], "label": np.array([r["label"] for r in results]),
                    "score": np.array([r["score"] for r in results])}
        results = self.pipe(texts)
        entities = [json.dumps([{"label": e["entity_group"], "start": int(e["start"]), "end": int(e["end"]),
                                 "score": float(e["score"])} for e in row]) for row in results]
        return {"id": batch["id"], "entities": np.array(entities)}


def ray_docs(task: str, model: str, corpus: str, output: str, batch_size: int, actors: int) -> dict[str, Any]:
    """(b) read_parquet -> map_batches(DocsPatternPredictor on an actor pool) -> write_parquet, one actor
    per CPU but one (Ray Data's read and write tasks need a CPU of their own)."""
    import ray

    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ds = ray.data.read_parquet(corpus, columns=["id", "text"])
    ds = ds.map_batches(DocsPatternPredictor, fn_constructor_kwargs={"task": task, "model": model},
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors))
    ds.write_parquet(output)
    seconds = time.perf_counter() - started
    stats = ds.stats()
    ray.shutdown()
    return {"seconds": seconds, "rows": _parquet_rows(output), "ray_stats": stats}


def albert_batch(task: str, model: str, corpus: str, output: str, precision: str, tokens_file: str,
                 resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """(c) ``albert-batch run`` end to end: the library's own run, from settings to published partitions."""
    from albert_batch import RunConfig, Task, run

    tasks = [Task(t) for t in task.split(",")]
    models = json.loads(model)
    config = RunConfig(input=corpus, output=output, tasks=tasks, precision=precision, partition=["dt=bench"],
                       classifier_model=models.get("classify"), ner_model=models.get("ner"), resources=resources or {})
    started, started_epoch = time.perf_counter(), time.time()
    summary = run(config)
    wall = time.perf_counter() - started
    table = "classifications" if tasks[0] is Task.CLASSIFY else "entities"
    batches = _finished_batches(Path(output) / table / "dt=bench", np.load(tokens_file))
    return {"seconds": summary.seconds, "wall_with_shutdown_s": wall, "rows": summary.accepted_rows,
            "precision": summary.precision, "stages": summary.stages, "first_batch_done_s": batches[0][0] - started_epoch,
            "last_batch_done_s": batches[-1][0] - started_epoch, "batches": batches}


def hand_loop(task: str, model: str, texts_file: str, dtype: str, tokens_per_forward: int,
              tuned: bool = False) -> dict[str, Any]:
    """(d) The best hand-written loop: pre-tokenized, sorted by length, batches capped at a token budget
    (padding included), torch on every core. It does no I/O and no postprocessing. ``tuned`` adds what
    albert-batch's CPU model actors do on top: the kernels ``auto`` runs with in ``dtype``
    (`albert_batch.inference.kernels.prepare`: the fused GELU; in bf16 oneDNN's linear layers too), and one
    forward pass per core side by side, each on one thread, instead of one pass on every core."""
    import torch
    from transformers import AlbertForSequenceClassification, AlbertForTokenClassification, AutoTokenizer

    from albert_batch.config import Precision
    from albert_batch.inference import kernels
    from albert_batch.inference.predictor import map_longest_first, pass_threads, token_budget_batches

    texts = json.loads(Path(texts_file).read_text())
    tokenizer = AutoTokenizer.from_pretrained(model)
    cls = AlbertForSequenceClassification if task == "classify" else AlbertForTokenClassification
    net = cls.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    threads = torch.get_num_threads()
    if tuned:
        kernels.prepare(net, precision=Precision.AUTO, dtype=getattr(torch, dtype), device=torch.device("cpu"))
    rows = tokenizer(texts, truncation=True, verbose=False)["input_ids"]
    batches = token_budget_batches(np.array([len(r) for r in rows]), tokens_per_forward)
    tensors = [_padded(rows, batch, tokenizer.pad_token_id) for batch in batches]

    def one_pass(inputs: tuple[Any, Any]) -> np.ndarray:
        with torch.inference_mode():
            return net(input_ids=inputs[0], attention_mask=inputs[1]).logits.float().numpy()

    pool = pass_threads(threads) if tuned else None

    def run_all(items: list[tuple[Any, Any]]) -> list[np.ndarray]:
        if pool is None:
            return [one_pass(inputs) for inputs in items]
        return map_longest_first(pool, one_pass, items)

    run_all(tensors[: 2 * threads])  # warm-up: first calls pick kernels, on every thread
    started = time.perf_counter()
    run_all(tensors)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": len(rows), "forwards": len(batches), "threads": threads,
            "side_by_side_passes": tuned, "dtype": dtype}


def model_ceiling(model: str, texts_file: str, use_gpu: bool, seconds: float, batch_rows: int,
                  tokens_per_forward: int) -> dict[str, Any]:
    """The model stage's ceiling on this device: `Predictor.forward` alone, in the precision ``auto`` picks,
    on batches of ``batch_rows`` pre-tokenized sequences (as a model actor gets them), for about
    ``seconds``. No Ray, no tokenizing, no I/O."""
    from albert_batch.config import Precision
    from albert_batch.contract import Task
    from albert_batch.inference import models
    from albert_batch.inference.predictors import build_predictor

    texts = json.loads(Path(texts_file).read_text())
    predictor = build_predictor(models.inspect(model, Task.CLASSIFY, hash_weights=False), precision=Precision.AUTO,
                                use_gpu=use_gpu, max_tokens_per_forward=tokens_per_forward)
    ends = np.array([predictor.cls_id, predictor.sep_id], dtype=np.int64)
    ids = predictor.preprocess(texts)["input_ids"]
    batches = [[np.concatenate([ends[:1], row, ends[1:]]) for row in ids[i : i + batch_rows]]
               for i in range(0, len(ids), batch_rows)]
    predictor.forward(batches[0])  # warm-up: kernels, allocator, autotuning
    calls, sequences, tokens = 0, 0, 0
    started, started_epoch = time.perf_counter(), time.time()
    while time.perf_counter() - started < seconds:
        batch = batches[calls % len(batches)]
        predictor.forward(batch)
        calls, sequences, tokens = calls + 1, sequences + len(batch), tokens + sum(map(len, batch))
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "sequences": sequences, "tokens": tokens,
            "window": [started_epoch, started_epoch + elapsed], "dtype": str(predictor.dtype),
            "device": str(predictor.device)}


def agreement(task: str, model: str, texts_file: str, precisions: list[str]) -> dict[str, Any]:
    """Each of ``precisions`` against fp32 on the corpus, through the pipeline's own predictors: the share of
    documents with the same label, or, for NER, the F1 of the entity spans (label, start, end) against
    fp32's; with each precision's time over fp32's (both include loading the model)."""
    from albert_batch.config import Precision
    from albert_batch.contract import Task
    from albert_batch.inference import models
    from albert_batch.inference.predictors import build_predictor

    texts = json.loads(Path(texts_file).read_text())
    info = models.inspect(model, Task(task), hash_weights=False)
    results, seconds = {}, {}
    for precision in (Precision.FP32, *map(Precision, precisions)):
        started = time.perf_counter()
        results[precision] = build_predictor(info, precision=precision)(texts)
        seconds[precision] = time.perf_counter() - started
    fp32 = results.pop(Precision.FP32)
    return {precision.value: {**_agreement(task, fp32, other, len(texts)), "fp32_s": seconds[Precision.FP32],
                              "seconds": seconds[precision], "speedup": seconds[Precision.FP32] / seconds[precision]}
            for precision, other in results.items()}


def _agreement(task: str, fp32: list[dict[str, Any]], other: list[dict[str, Any]], docs: int) -> dict[str, Any]:
    if task == "classify":
        same = sum(a["label"] == b["label"] for a, b in zip(fp32, other, strict=True))
        margins = [_margin(r["scores"]) for r in fp32]
        return {"label_agreement": same / docs, "median_fp32_margin": float(np.median(margins))}
    want = [{(e["label"], e["start"], e["end"]) for e in r["entities"]} for r in fp32]
    got = [{(e["label"], e["start"], e["end"]) for e in r["entities"]} for r in other]
    common = sum(len(w & g) for w, g in zip(want, got, strict=True))
    total = sum(len(w) + len(g) for w, g in zip(want, got, strict=True))
    return {"entity_span_agreement": 2 * common / total if total else 1.0, "fp32_entities": sum(map(len, want)),
            "identical_documents": sum(w == g for w, g in zip(want, got, strict=True)) / docs}


def _margin(scores: dict[str, float]) -> float:
    """Gap between the best and second-best label's score: how decisive a prediction is."""
    best = sorted(scores.values(), reverse=True)
    return best[0] - best[1] if len(best) > 1 else best[0]


def _padded(rows: list[list[int]], batch: list[int], pad: int):
    import torch

    width = max(len(rows[i]) for i in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for k, i in enumerate(batch):
        ids[k, : len(rows[i])] = torch.tensor(rows[i])
        mask[k, : len(rows[i])] = 1
    return ids, mask


def _parquet_rows(folder: str) -> int:
    import pyarrow.dataset as pads

    return pads.dataset(folder, format="parquet").count_rows()


def _finished_batches(partition: Path, tokens: np.ndarray) -> list[list[float]]:
    """[finish time (s), rows, real tokens] per model-stage batch, in time order. The model stage stamps
    each batch's rows with one ``processed_at`` as it finishes, so these give the pipeline's throughput
    between its first and last batch: its steady state, without start-up and the final write."""
    import pyarrow.dataset as pads

    table = pads.dataset(str(partition), format="parquet").to_table(columns=["id", "processed_at"])
    stamps = table.column("processed_at").cast("int64").to_numpy()
    times, inverse = np.unique(stamps, return_inverse=True)
    rows = np.bincount(inverse, minlength=len(times))
    batch_tokens = np.bincount(inverse, weights=tokens[table.column("id").to_numpy()], minlength=len(times))
    return [[t / 1e6, int(r), int(k)] for t, r, k in zip(times, rows, batch_tokens, strict=True)]


CONTENDERS = {"hf_pipeline": hf_pipeline, "ray_docs": ray_docs, "albert_batch": albert_batch, "hand_loop": hand_loop,
              "agreement": agreement, "model_ceiling": model_ceiling}


def main(argv: list[str]) -> int:
    name, params, out = argv
    result = CONTENDERS[name](**json.loads(params))
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
