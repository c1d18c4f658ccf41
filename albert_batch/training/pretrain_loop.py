"""What every Ray Train worker of `albert-batch pretrain` runs: masked-LM plus sentence-order training on its
shard of the streamed corpus, masked afresh every epoch, and the held-out slice's scores."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from albert_batch.inference import models
from albert_batch.training.bio import IGNORE_INDEX
from albert_batch.training.data import BUCKET_BATCHES, length_buckets
from albert_batch.training.masking import Masker
from albert_batch.training.progress import Step, report_step
from albert_batch.training.sop import NO_PAIR
from albert_batch.training.workspace import TOKENIZER_FILES, TRAINING_STATE

EVALUATIONS = "evaluations.json"  # in every checkpoint: the scores of every evaluation up to it
EVAL_BATCH = 64


@dataclass(frozen=True)
class MaskedExample:
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray  # the original id where a token is masked, IGNORE_INDEX elsewhere
    sentence_order: int


@dataclass(frozen=True)
class PretrainLoop:
    """The settings every Ray Train worker gets (as ``train_loop_config={"loop": PretrainLoop(...)}``)."""

    base: str  # the prepared starting model, where every node can read it (the output location)
    epochs: int
    stop_after: int | None  # optimizer steps, from --max-steps
    schedule_steps: int  # the linear decay's length: the steps this run is expected to take
    planned_epochs: int  # the epochs those steps take (fewer than ``epochs`` when --max-steps ends training)
    report_every: int | None
    batch_size: int
    learning_rate: float
    seed: int
    pad_id: int
    masker: Masker
    held_out: list[MaskedExample]  # masked once, so that every evaluation scores the same tokens
    threads: int | None  # torch threads per CPU worker; None on GPUs
    progress: Any = None  # the driver's `progress.StepCounter` actor, which rank 0 reports every step to


class Objective(torch.nn.Module):
    """ALBERT's pretraining losses, summed over a batch, with the counts they are averaged by.

    The masked-LM head runs only where a token is masked: over the whole sequence, its projection onto the
    vocabulary costs more than a tiny model's encoder."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model  # an AlbertForPreTraining

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                labels: torch.Tensor, sentence_order: torch.Tensor) -> dict[str, torch.Tensor]:
        encoded = self.model.albert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        masked = labels != IGNORE_INDEX
        logits = self.model.predictions(encoded.last_hidden_state[masked])
        targets = labels[masked]
        paired = sentence_order != NO_PAIR
        order_logits = self.model.sop_classifier(encoded.pooler_output)[paired]
        orders = sentence_order[paired]
        return {
            "mlm_loss": F.cross_entropy(logits, targets, reduction="sum"),
            "mlm_correct": (logits.argmax(-1) == targets).sum(),
            "mlm_count": masked.sum(),
            "sop_loss": F.cross_entropy(order_logits, orders, reduction="sum"),
            "sop_correct": (order_logits.argmax(-1) == orders).sum(),
            "sop_count": paired.sum(),
        }


def mask_held_out(rows: list[dict[str, Any]], masker: Masker, seed: int) -> list[MaskedExample]:
    """Mask the held-out examples once; each one's masks follow from the seed and its own tokens, so they
    do not depend on the order in which the corpus was read."""
    masked = []
    for row in rows:
        ids = np.asarray(row["input_ids"], dtype=np.int64)
        rng = np.random.default_rng([seed, zlib.crc32(ids.tobytes())])
        input_ids, labels = masker(ids, np.asarray(row["word_starts"], dtype=bool), rng)
        masked.append(MaskedExample(input_ids, np.asarray(row["token_type_ids"]), labels, int(row["sentence_order"])))
    return masked


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: AdamW with linear warm-up and decay. Rank 0 scores the held-out slice
    before the first step, after every epoch and every ``report_every`` steps, and saves a checkpoint with
    each score after the first."""
    import ray.train
    from transformers import AlbertForPreTraining, get_linear_schedule_with_warmup

    loop: PretrainLoop = config["loop"]
    torch.manual_seed(loop.seed)
    if loop.threads:
        torch.set_num_threads(loop.threads)
    base, _ = models.resolve(loop.base)
    checkpoint = ray.train.get_checkpoint()
    # Where training starts: the base model before the first step, or a checkpoint's step, `skip` batches
    # into its epoch (those batches are passed over, not trained on again).
    history: list[dict[str, Any]] = []
    state: dict[str, Any] = {"step": 0, "epoch": 1, "skip": 0}
    if checkpoint is None:
        model = AlbertForPreTraining.from_pretrained(base)
    else:
        with checkpoint.as_directory() as folder:
            model = AlbertForPreTraining.from_pretrained(folder)
            history = json.loads((Path(folder) / EVALUATIONS).read_text())
            state = torch.load(Path(folder) / TRAINING_STATE, weights_only=True)
    core = Objective(model)
    objective = ray.train.torch.prepare_model(core)  # wrapped for data parallelism when there are several workers
    optimizer = torch.optim.AdamW(objective.parameters(), lr=loop.learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, loop.schedule_steps // 10), loop.schedule_steps)
    if checkpoint is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    rank = ray.train.get_context().get_world_rank()
    rng = np.random.default_rng([loop.seed, rank, state["step"]])  # fresh masks after a resume
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    started = time.monotonic()
    step, resumed_from = int(state["step"]), int(state["step"])
    totals = dict.fromkeys(("mlm_loss", "mlm_count", "sop_loss", "sop_count"), 0.0)

    def report(epoch: int, trained: int | None) -> None:
        """Score and report; ``trained``: the batches of ``epoch`` trained so far, None when it is complete."""
        nonlocal totals
        scores: dict[str, Any] = {"step": step, "epoch": epoch, "seconds": round(time.monotonic() - started, 1),
                                  "resumed_from": resumed_from}
        if step:
            scores["train_mlm_loss"] = totals["mlm_loss"] / max(1.0, totals["mlm_count"])
            scores["train_sop_loss"] = totals["sop_loss"] / max(1.0, totals["sop_count"])
        totals = dict.fromkeys(totals, 0.0)
        if rank == 0:
            # The unwrapped module: a data-parallel wrapper's forward would sync buffers with workers that
            # are not evaluating.
            scores.update(evaluate(core, loop.held_out, loop.pad_id, device))
            history.append(scores)
        resume_at = {"step": step, "epoch": epoch + 1, "skip": 0} if trained is None else {
            "step": step, "epoch": epoch, "skip": trained}
        training_state = resume_at | {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
        _report(core.model, base, scores, (history, training_state) if rank == 0 and step else None)

    if checkpoint is None:
        report(epoch=0, trained=None)
    elif loop.stop_after and step >= loop.stop_after:  # the driver was lost after the last checkpoint
        return
    for epoch in range(int(state["epoch"]), loop.epochs + 1):
        skip = int(state["skip"]) if epoch == state["epoch"] else 0
        trained = skip
        for i, batch in enumerate(_training_batches(shard, loop, rng)):
            if i < skip:
                continue
            objective.train()
            out = objective(**{k: v.to(device) for k, v in batch.items()})
            loss = out["mlm_loss"] / out["mlm_count"].clamp(min=1) + out["sop_loss"] / out["sop_count"].clamp(min=1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step, trained = step + 1, trained + 1
            for key in totals:
                totals[key] += float(out[key])
            if rank == 0:
                report_step(loop.progress, Step(step=step, steps=loop.schedule_steps, epoch=epoch,
                                                epochs=loop.planned_epochs, loss=float(loss)))
            if step == loop.stop_after or (loop.report_every and step % loop.report_every == 0):
                report(epoch, trained)
            if step == loop.stop_after:
                return
        if not (loop.report_every and step % loop.report_every == 0):
            report(epoch, None)


def evaluate(objective: Any, held_out: list[MaskedExample], pad_id: int, device: Any) -> dict[str, float]:
    """Masked-LM loss and accuracy over the masked tokens, and sentence-order accuracy over the pairs."""
    sums = dict.fromkeys(("mlm_loss", "mlm_correct", "mlm_count", "sop_loss", "sop_correct", "sop_count"), 0.0)
    order = sorted(range(len(held_out)), key=lambda i: len(held_out[i].input_ids))
    objective.eval()
    with torch.no_grad():
        for start in range(0, len(order), EVAL_BATCH):
            batch = _collate([held_out[i] for i in order[start : start + EVAL_BATCH]], pad_id)
            out = objective(**{k: v.to(device) for k, v in batch.items()})
            for key in sums:
                sums[key] += float(out[key])
    return {
        "mlm_loss": sums["mlm_loss"] / max(1.0, sums["mlm_count"]),
        "mlm_accuracy": sums["mlm_correct"] / max(1.0, sums["mlm_count"]),
        "sop_loss": sums["sop_loss"] / max(1.0, sums["sop_count"]),
        "sop_accuracy": sums["sop_correct"] / max(1.0, sums["sop_count"]),
    }


def _training_batches(shard: Any, loop: PretrainLoop, rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """Streamed examples, masked afresh, in batches of similar length (little compute goes to padding)."""
    span = loop.batch_size * BUCKET_BATCHES
    for rows in shard.iter_batches(batch_size=span, batch_format="numpy", local_shuffle_buffer_size=4 * span):
        lengths = [len(ids) for ids in rows["input_ids"]]
        for bucket in length_buckets(lengths, loop.batch_size, rng):
            examples = []
            for i in bucket:
                ids, labels = loop.masker(rows["input_ids"][i], rows["word_starts"][i], rng)
                examples.append(MaskedExample(ids, rows["token_type_ids"][i], labels, int(rows["sentence_order"][i])))
            yield _collate(examples, loop.pad_id)


def _collate(examples: list[MaskedExample], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)  # a copy: Ray Data's arrays are read-only
        types[row, :n] = torch.tensor(e.token_type_ids, dtype=torch.long)
        labels[row, :n] = torch.as_tensor(e.labels, dtype=torch.long)
        attention[row, :n] = 1
    orders = torch.as_tensor([e.sentence_order for e in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attention, "token_type_ids": types, "labels": labels,
            "sentence_order": orders}


def _report(model: Any, base: str, scores: dict[str, Any],
            saved: tuple[list[dict[str, Any]], dict[str, Any]] | None) -> None:
    """Report ``scores``; with ``saved`` (rank 0, after the first step: every evaluation so far and the
    training state), with a checkpoint: the model, its tokenizer, the evaluations and the training state."""
    import ray.train
    from ray.train import Checkpoint

    if saved is None:
        ray.train.report(scores)
        return
    history, training_state = saved
    folder = Path(tempfile.mkdtemp(prefix=f"step-{scores['step']}-"))
    model.save_pretrained(str(folder), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (Path(base) / name).exists():
            shutil.copy(Path(base) / name, folder / name)
    (folder / EVALUATIONS).write_text(json.dumps(history))
    torch.save(training_state, folder / TRAINING_STATE)
    ray.train.report(scores, checkpoint=Checkpoint.from_directory(str(folder)))
    shutil.rmtree(folder, ignore_errors=True)
