"""What every Ray Train worker runs, and how an epoch's model is scored."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from albert_batch.config import Precision
from albert_batch.contract import Task
from albert_batch.inference import models
from albert_batch.training import metrics
from albert_batch.training.data import LabelledData, bucketed_batches, length_buckets
from albert_batch.training.progress import Step, report_step
from albert_batch.training.workspace import TRAINING_STATE


@dataclass(frozen=True)
class TrainLoop:
    """The settings every Ray Train worker gets (as ``train_loop_config={"loop": TrainLoop(...)}``)."""

    task: Task
    base: str  # the prepared starting model, where every node can read it (the output location)
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    pad_id: int
    evaluation: LabelledData  # scored by rank 0 after every epoch
    threads: int | None  # torch threads per CPU worker; None on GPUs
    tokenizer_files: tuple[str, ...]  # copied from ``base`` into every epoch's checkpoint
    progress: Any = None  # the driver's `progress.StepCounter` actor, which rank 0 reports every step to


def evaluate(folder: str, task: Task, evaluation: LabelledData) -> dict[str, float]:
    """Score the eval split with the batch pipeline's own predictor (fp32)."""
    from albert_batch.inference.predictors import build_predictor

    info = models.inspect(folder, task, hash_weights=False)
    predictor = build_predictor(info, precision=Precision.FP32)
    results = predictor(evaluation.texts)
    if task is Task.CLASSIFY:
        index = {name: i for i, name in enumerate(info.labels)}
        return metrics.classification_metrics([index[t] for t in evaluation.targets],
                                              [index[r["label"]] for r in results], len(info.labels))
    predicted = [[(e["start"], e["end"], e["label"]) for e in r["entities"]] for r in results]
    return metrics.span_metrics(evaluation.targets, predicted)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: AdamW with linear warm-up and decay; every epoch, rank 0 saves the
    model, with the optimizer's state, as a checkpoint and reports its eval scores. Workers that start with a
    checkpoint (restarted after a failure, or a re-run) continue after its epoch, replaying the shuffles of
    the epochs before it, so that they train on the batches an uninterrupted run would."""
    import ray.train
    import torch
    from transformers import (
        AlbertForSequenceClassification,
        AlbertForTokenClassification,
        get_linear_schedule_with_warmup,
    )

    loop: TrainLoop = config["loop"]
    torch.manual_seed(loop.seed)
    if loop.threads:
        torch.set_num_threads(loop.threads)
    cls = AlbertForSequenceClassification if loop.task is Task.CLASSIFY else AlbertForTokenClassification
    base, _ = models.resolve(loop.base)
    checkpoint = ray.train.get_checkpoint()
    state: dict[str, Any] = {"epoch": 0}
    if checkpoint is None:
        model = cls.from_pretrained(base)
    else:
        with checkpoint.as_directory() as folder:
            model = cls.from_pretrained(folder)
            state = torch.load(Path(folder) / TRAINING_STATE, weights_only=True)
    model = ray.train.torch.prepare_model(model)
    shard = ray.train.get_dataset_shard("train")
    rows = [row for batch in shard.iter_batches(batch_size=4096, batch_format="numpy")
            for row in ({k: batch[k][i] for k in batch} for i in range(len(batch["input_ids"])))]
    per_epoch = max(1, -(-len(rows) // loop.batch_size))
    steps = loop.epochs * per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=loop.learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    if checkpoint is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    rank = ray.train.get_context().get_world_rank()
    rng = np.random.default_rng(loop.seed + rank)
    for _ in range(state["epoch"]):
        length_buckets([len(row["input_ids"]) for row in rows], loop.batch_size, rng)
    device = ray.train.torch.get_device()
    for epoch in range(state["epoch"] + 1, loop.epochs + 1):
        started = time.monotonic()
        model.train()
        total, count = 0.0, 0
        for step, batch in enumerate(bucketed_batches(rows, loop.batch_size, rng, loop.pad_id),
                                     start=(epoch - 1) * per_epoch + 1):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            total, count = total + float(loss), count + 1
            if rank == 0:
                report_step(loop.progress, Step(step=step, steps=steps, epoch=epoch, epochs=loop.epochs,
                                                loss=float(loss)))
        # resumed_from: the epoch of the checkpoint these workers started from (0: the base model).
        scores: dict[str, Any] = {"epoch": epoch, "loss": total / max(1, count),
                                  "epoch_seconds": round(time.monotonic() - started, 2),
                                  "resumed_from": int(state["epoch"])}
        if rank == 0:
            training_state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
            _report_with_checkpoint(loop, base, model, training_state, scores)
        else:
            ray.train.report(scores)


def _report_with_checkpoint(loop: TrainLoop, base: str, model: Any, training_state: dict[str, Any],
                            scores: dict[str, Any]) -> None:
    """Save the epoch's model with the tokenizer and the training state, score it on the eval split, and
    report both."""
    import ray.train
    import torch
    from ray.train import Checkpoint

    folder = tempfile.mkdtemp(prefix=f"epoch-{scores['epoch']}-")
    unwrapped = model.module if hasattr(model, "module") else model
    unwrapped.save_pretrained(folder, safe_serialization=True)
    for name in loop.tokenizer_files:
        shutil.copy(Path(base) / name, Path(folder) / name)
    torch.save(training_state, Path(folder) / TRAINING_STATE)
    scores.update(evaluate(folder, loop.task, loop.evaluation))
    scores["score"] = scores["macro_f1" if loop.task is Task.CLASSIFY else "f1"]
    ray.train.report(scores, checkpoint=Checkpoint.from_directory(folder))
    shutil.rmtree(folder, ignore_errors=True)
