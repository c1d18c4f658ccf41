"""Fine-tuning ALBERT for classification or NER on Ray Train, from labelled Parquet to a model folder that
`albert-batch run` loads directly.

The driver reads and checks the labelled data, prepares the starting model (a pretrained ALBERT or one
built offline with `albert_batch.model_init`) and tokenizes through Ray Data; `TorchTrainer` workers
train data-parallel with AdamW, and after every epoch rank 0 scores the eval split *through the batch
pipeline's own predictor*, so the reported quality is the quality users get. The best epoch is kept.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from albert_batch import labels as bio
from albert_batch import models, storage
from albert_batch.config import Precision, Task
from albert_batch.errors import AlbertBatchError, ConfigError, InputError
from albert_batch.model_init import SIZES
from albert_batch.storage import Location

log = logging.getLogger(__name__)

REPORT = "training_report.json"
MODEL_FILES = ("config.json", "model.safetensors", "spiece.model", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json")
BUCKET_BATCHES = 16  # batches drawn together and grouped by length, so little compute goes to padding


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Settings of one fine-tuning run; validated at construction."""

    task: Task
    train: str
    eval: str
    output: str
    base_model: str | None = None
    init: str | None = None
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float | None = None
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    max_length: int = 512
    max_windows: int | None = None
    vocab_size: int = 8000
    text_column: str = "text"
    label_column: str = "label"
    entities_column: str = "entities"
    ray_address: str | None = None
    allow_pickle_weights: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "task", Task(str(self.task)))
        except ValueError:
            raise ConfigError(f"task {self.task!r} must be classify or ner") from None
        if (self.base_model is None) == (self.init is None):
            raise ConfigError("give exactly one of base_model (--base-model) and init (--init tiny|base)")
        if self.init is not None and self.init not in SIZES:
            raise ConfigError(f"init {self.init!r} must be one of {', '.join(SIZES)}")
        for name in ("train", "eval", "output"):
            Location.parse(getattr(self, name), what=name)
        for name, low in (("epochs", 1), ("batch_size", 1), ("num_workers", 1), ("max_length", 16), ("vocab_size", 100)):
            if int(getattr(self, name)) < low:
                raise ConfigError(f"{name} must be at least {low}")
        if self.max_windows is not None and int(self.max_windows) < 1:
            raise ConfigError("max_windows must be at least 1 (or unset: every window of every text)")
        if self.max_length > 512:
            raise ConfigError("max_length must be at most 512 (ALBERT's position embeddings)")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise ConfigError("learning_rate must be between 0 and 1, e.g. 5e-5")

    @property
    def lr(self) -> float:
        """5e-5, the classic ALBERT fine-tuning rate, for pretrained bases; a model built from scratch
        learns in minutes only with a higher one."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 5e-5 if self.base_model else 2e-3


@dataclass
class LabelledData:
    texts: list[str]
    targets: list[Any]  # label names (classify) or validated (start, end, label) spans (ner)
    rows: int
    skipped_blank: int = 0

    def sizes(self) -> dict[str, int]:
        sizes = {"rows": self.rows, "used": len(self.texts), "skipped_blank_text": self.skipped_blank}
        if self.targets and isinstance(self.targets[0], list):
            sizes["entities"] = sum(len(t) for t in self.targets)
        return sizes


def read_labelled(uri: str, config: FinetuneConfig, *, what: str) -> LabelledData:
    """Read and check a labelled Parquet file or folder; rows with blank text are skipped and counted."""
    loc = Location.parse(uri, what=what)
    target_column = config.label_column if config.task is Task.CLASSIFY else config.entities_column
    try:
        import pyarrow.dataset as pads

        dataset = pads.dataset(loc.path, filesystem=loc.filesystem, format="parquet",
                               exclude_invalid_files=False, ignore_prefixes=["_", "."])
    except (OSError, pa.ArrowInvalid) as err:
        raise InputError(f"cannot read {what} data {loc}: {err}") from err
    missing = [c for c in (config.text_column, target_column) if c not in dataset.schema.names]
    if missing:
        raise InputError(f"{what} data {loc} has no column {missing[0]!r}; available columns: "
                         f"{', '.join(dataset.schema.names)}")
    try:
        table = dataset.to_table(columns=[config.text_column, target_column])
    except (OSError, pa.ArrowInvalid) as err:
        raise InputError(f"cannot read {what} data {loc}: {err}") from err
    data = LabelledData(texts=[], targets=[], rows=table.num_rows)
    for row, (text, target) in enumerate(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True)):
        if text is None or not str(text).strip():
            data.skipped_blank += 1
            continue
        if config.task is Task.CLASSIFY:
            if target is None:
                raise InputError(f"{what} data {loc}: row {row} has no label")
            data.targets.append(str(target))
        else:
            data.targets.append(bio.validate_spans(text, target or [], row=row))
        data.texts.append(text)
    if not data.texts:
        raise InputError(f"{what} data {loc} has no rows with text")
    return data


def label_names(config: FinetuneConfig, train: LabelledData, evaluation: LabelledData) -> tuple[str, ...]:
    if config.task is Task.CLASSIFY:
        names = sorted(set(train.targets))
        unseen = sorted(set(evaluation.targets) - set(names))
        if unseen:
            raise InputError(f"eval labels {', '.join(unseen)} never occur in the training data")
        if len(names) < 2:
            raise InputError(f"training data has a single label ({names[0]}); classification needs two or more")
        return tuple(names)
    types = sorted({label for spans in train.targets for _, _, label in spans})
    if not types:
        raise InputError("training data has no entities")
    return bio.bio_labels(types)


def prepare_base(config: FinetuneConfig, labels: tuple[str, ...], texts: list[str], folder: Path) -> Path:
    """The starting model, with a fresh head for ``labels``, as a local folder the workers load."""
    from transformers import AlbertForSequenceClassification, AlbertForTokenClassification, AutoTokenizer

    from albert_batch.model_init import init_model

    if config.init:
        init_model(folder, config.task, labels, texts=texts, size=config.init, seed=config.seed,
                   vocab_size=config.vocab_size, initializer_range=0.02)
        # Positions beyond the training length are never learnt; the saved tokenizer's length makes
        # inference use windows (NER) and truncation (classification) of exactly what was trained.
        AutoTokenizer.from_pretrained(str(folder), model_max_length=config.max_length).save_pretrained(str(folder))
        return folder
    local_dir, _ = models.resolve(config.base_model or "")
    cls = AlbertForSequenceClassification if config.task is Task.CLASSIFY else AlbertForTokenClassification
    try:
        model = cls.from_pretrained(local_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                    label2id={name: i for i, name in enumerate(labels)}, ignore_mismatched_sizes=True,
                                    use_safetensors=None if config.allow_pickle_weights else True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(local_dir, trust_remote_code=False)
    except Exception as err:  # from_pretrained raises many types for an unusable folder
        raise models.ModelLoadError(f"cannot load base model {config.base_model}: {err}") from err
    if model.config.model_type != "albert":
        raise models.ModelLoadError(f"base model {config.base_model} is not ALBERT (model_type {model.config.model_type!r})")
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def encode(texts: list[str], targets: list[Any], tokenizer: Any, task: Task, label2id: dict[str, int],
           max_length: int, max_windows: int | None = None) -> pa.Table:
    """Training rows: token ids with [CLS]/[SEP] and their labels, one per text (classify) or per token (ner).

    Classification truncates, as inference does. NER cuts long texts into consecutive windows instead, so
    every position up to ``max_length`` is learnt: inference covers long texts with windows of the model's
    full length, and positions never seen in training predict noise. ``max_windows`` keeps only the first
    windows of each text, to save time where a few very long documents hold a large share of the tokens
    (in the demo corpus, 2% of the documents hold a third of the tokens)."""
    if task is Task.CLASSIFY:
        encoded = tokenizer(texts, truncation=True, max_length=max_length, verbose=False)
        ids = [np.asarray(x, dtype=np.int32) for x in encoded["input_ids"]]
        return pa.table({"input_ids": ids, "label": pa.array([label2id[t] for t in targets], pa.int64())})
    encoded = tokenizer(texts, add_special_tokens=False, truncation=False, return_offsets_mapping=True,
                        return_special_tokens_mask=True, verbose=False)
    size = max_length - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    rows_ids, rows_labels = [], []
    for spans, ids, offsets, special in zip(targets, encoded["input_ids"], encoded["offset_mapping"],
                                            encoded["special_tokens_mask"], strict=True):
        token_labels = bio.align_tokens(spans, np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
                                        np.asarray(special, dtype=bool), label2id)
        for start in range(0, max(1, len(ids)), size)[:max_windows]:
            rows_ids.append(np.asarray([cls, *ids[start : start + size], sep], dtype=np.int32))
            rows_labels.append(np.concatenate([[bio.IGNORE_INDEX], token_labels[start : start + size],
                                               [bio.IGNORE_INDEX]]).astype(np.int64))
    return pa.table({"input_ids": rows_ids, "labels": rows_labels})


def bucketed_batches(rows: list[dict[str, np.ndarray]], batch_size: int, rng: np.random.Generator,
                     pad_id: int) -> Iterator[dict[str, Any]]:
    """Shuffle, then group rows of similar length into batches (in random order) and pad them."""
    import torch

    order = rng.permutation(len(rows))
    span = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: len(rows[i]["input_ids"]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    for b in (batches[i] for i in rng.permutation(len(batches))):
        width = max(len(rows[i]["input_ids"]) for i in b)
        ids = torch.full((len(b), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(b), width), dtype=torch.long)
        token_level = "labels" in rows[b[0]]
        targets = torch.full((len(b), width), bio.IGNORE_INDEX, dtype=torch.long) if token_level else torch.empty(len(b), dtype=torch.long)
        for k, i in enumerate(b):
            n = len(rows[i]["input_ids"])
            ids[k, :n] = torch.as_tensor(rows[i]["input_ids"], dtype=torch.long)
            mask[k, :n] = 1
            if token_level:
                targets[k, :n] = torch.as_tensor(rows[i]["labels"], dtype=torch.long)
            else:
                targets[k] = int(rows[i]["label"])
        yield {"input_ids": ids, "attention_mask": mask, "labels": targets}


def evaluate(folder: str, task: Task, evaluation: LabelledData) -> dict[str, float]:
    """Score the eval split with the batch pipeline's own predictor (fp32)."""
    from albert_batch.predictors import build_predictor

    info = models.inspect(folder, task, hash_weights=False)
    predictor = build_predictor(info, precision=Precision.FP32)
    results = predictor(evaluation.texts)
    if task is Task.CLASSIFY:
        index = {name: i for i, name in enumerate(info.labels)}
        return bio.classification_metrics([index[t] for t in evaluation.targets],
                                          [index[r["label"]] for r in results], len(info.labels))
    predicted = [[(e["start"], e["end"], e["label"]) for e in r["entities"]] for r in results]
    return bio.span_metrics(evaluation.targets, predicted)


def train_loop(loop: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from transformers import (
        AlbertForSequenceClassification,
        AlbertForTokenClassification,
        get_linear_schedule_with_warmup,
    )

    torch.manual_seed(loop["seed"])
    if loop["threads"]:
        torch.set_num_threads(loop["threads"])
    task = Task(loop["task"])
    cls = AlbertForSequenceClassification if task is Task.CLASSIFY else AlbertForTokenClassification
    model = ray.train.torch.prepare_model(cls.from_pretrained(loop["base"]))
    shard = ray.train.get_dataset_shard("train")
    rows = [row for batch in shard.iter_batches(batch_size=4096, batch_format="numpy")
            for row in ({k: batch[k][i] for k in batch} for i in range(len(batch["input_ids"])))]
    steps = loop["epochs"] * max(1, -(-len(rows) // loop["batch_size"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=loop["lr"], weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    rng = np.random.default_rng(loop["seed"] + ray.train.get_context().get_world_rank())
    device = ray.train.torch.get_device()
    rank = ray.train.get_context().get_world_rank()
    for epoch in range(1, loop["epochs"] + 1):
        started = time.monotonic()
        model.train()
        total, count = 0.0, 0
        for batch in bucketed_batches(rows, loop["batch_size"], rng, loop["pad_id"]):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            total, count = total + float(loss), count + 1
        metrics: dict[str, Any] = {"epoch": epoch, "loss": total / max(1, count),
                                   "epoch_seconds": round(time.monotonic() - started, 2)}
        if rank == 0:
            folder = tempfile.mkdtemp(prefix=f"epoch-{epoch}-")
            unwrapped = model.module if hasattr(model, "module") else model
            unwrapped.save_pretrained(folder, safe_serialization=True)
            for name in loop["tokenizer_files"]:
                shutil.copy(Path(loop["base"]) / name, Path(folder) / name)
            metrics.update(evaluate(folder, task, loop["eval"]))
            metrics["score"] = metrics["macro_f1" if task is Task.CLASSIFY else "f1"]
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
            shutil.rmtree(folder, ignore_errors=True)
        else:
            ray.train.report(metrics)


@dataclass
class FinetuneResult:
    output: str
    labels: tuple[str, ...]
    best_epoch: int
    best_metrics: dict[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune and write the best epoch's model folder and ``training_report.json`` to ``config.output``."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from transformers import AutoTokenizer

    from albert_batch.runner import connect_ray, versions

    started = time.monotonic()
    train = read_labelled(config.train, config, what="train")
    evaluation = read_labelled(config.eval, config, what="eval")
    labels = label_names(config, train, evaluation)
    label2id = {name: i for i, name in enumerate(labels)}
    workdir = Path(tempfile.mkdtemp(prefix="albert-finetune-"))
    started_ray = connect_ray(config.ray_address)
    try:
        base = prepare_base(config, labels, train.texts, workdir / "base")
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        encoded = encode(train.texts, train.targets, tokenizer, config.task, label2id, config.max_length,
                         config.max_windows)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={
                "task": config.task.value, "base": str(base), "epochs": config.epochs, "batch_size": config.batch_size,
                "lr": config.lr, "seed": config.seed, "pad_id": tokenizer.pad_token_id or 0, "eval": evaluation,
                "threads": max(1, cpus // config.num_workers) if not config.use_gpu else None,
                "tokenizer_files": [n for n in MODEL_FILES[2:] if (base / n).exists()],
            },
            scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                         resources_per_worker={"CPU": max(1, cpus // config.num_workers) - 0.5}
                                         if not config.use_gpu else None),
            run_config=RunConfig(
                name="finetune", storage_path=str(workdir / "ray_train"),
                # Every epoch's checkpoint is kept (they are small and temporary) so that the report has
                # every epoch's metrics; the best is chosen below.
                checkpoint_config=CheckpointConfig(num_to_keep=None),
            ),
            datasets={"train": ray.data.from_arrow(encoded)},
        )
        try:
            result = trainer.fit()
        except Exception as err:  # Ray wraps worker failures; keep the root cause
            raise AlbertBatchError(f"fine-tuning failed: {err}") from err
        history = _history(result)
        best_checkpoint, best_metrics = max(result.best_checkpoints, key=lambda pair: pair[1]["score"])
        report = {
            "task": config.task.value,
            "base": config.base_model or f"init:{config.init}",
            "labels": list(labels),
            "data": {"train": train.sizes(), "eval": evaluation.sizes(), "train_location": config.train,
                     "eval_location": config.eval},
            "hyperparameters": {k: v for k, v in asdict(config).items()
                                if k in ("epochs", "batch_size", "seed", "num_workers", "max_length", "max_windows",
                                         "vocab_size")}
            | {"learning_rate": config.lr, "optimizer": "AdamW", "weight_decay": 0.01,
               "schedule": "linear, 10% warmup"},
            "epochs": history,
            "best_epoch": best_metrics["epoch"],
            "best_metrics": {k: v for k, v in best_metrics.items() if not k.startswith("_")},
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "seconds": round(time.monotonic() - started, 1),
            "versions": versions(),
        }
        with best_checkpoint.as_directory() as folder:
            _write_output(Path(folder), Location.parse(config.output, what="output"), report)
        return FinetuneResult(output=config.output, labels=labels, best_epoch=best_metrics["epoch"],
                              best_metrics=report["best_metrics"], epochs=history, seconds=report["seconds"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if started_ray:
            ray.shutdown()


def _history(result: Any) -> list[dict[str, Any]]:
    frame = result.metrics_dataframe
    keep = [c for c in frame.columns if not str(c).startswith("_") and c not in ("timestamp", "checkpoint_dir_name")]
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame[keep].to_dict(orient="records")]


def _write_output(folder: Path, output: Location, report: dict[str, Any]) -> None:
    """Copy the model folder and the report; the report goes last, so its presence marks a complete model."""
    for path in sorted(folder.iterdir()):
        if path.is_file():
            storage.write_bytes(output.child(path.name), path.read_bytes())
    storage.write_bytes(output.child(REPORT), json.dumps(report, indent=2, default=str).encode())
    log.info("wrote the fine-tuned model to %s", output)


def write_labelled(path: str | Path, texts: list[str], targets: list[Any], task: Task) -> None:
    """Write labelled Parquet in the shape `finetune` reads (used by the demo and tests)."""
    if task is Task.CLASSIFY:
        table = pa.table({"text": texts, "label": targets})
    else:
        struct = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("label", pa.string())])
        spans = [[{"start": s, "end": e, "label": label} for s, e, label in t] for t in targets]
        table = pa.table({"text": texts, "entities": pa.array(spans, pa.list_(struct))})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))
