"""Fine-tuning ALBERT for classification or NER on Ray Train, from labelled Parquet to a model folder that
`albert-batch run` loads directly.

The driver reads and checks the labelled data (`albert_batch.training.data`), prepares the starting
model (a pretrained ALBERT, or one built offline with `albert_batch.training.model_init`) into the output
location, where every node can read it, and tokenizes; `TorchTrainer` workers train data-parallel
(`albert_batch.training.loop`), and after every epoch rank 0 scores the eval split *through the batch
pipeline's own predictor*, so the reported quality is the quality users get. The best epoch is kept.

Ray Train's checkpoints are kept in the output location too (`albert_batch.training.workspace`): workers
that fail are restarted from the last epoch's checkpoint, and a re-run of the same command after the
driver was lost resumes from it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from albert_batch import storage
from albert_batch.contract import Task
from albert_batch.errors import AlbertBatchError, ModelLoadError
from albert_batch.inference import models
from albert_batch.pipeline.cluster import connect_ray, package_versions
from albert_batch.storage import Location
from albert_batch.training import workspace
from albert_batch.training.config import FinetuneConfig
from albert_batch.training.data import LabelledData, encode, label_names, read_labelled
from albert_batch.training.loop import TrainLoop, train_loop
from albert_batch.training.pretrain import REPORT as PRETRAINING_REPORT
from albert_batch.training.progress import StepMonitor, start_step_counter

log = logging.getLogger(__name__)

REPORT = "training_report.json"
WORK_DIR = "_finetuning"  # in the output: the starting model and Ray Train's checkpoints; removed at the end
# Default rates: the classic ALBERT recipe for a pretrained model, and what a small model far from converged
# needs — one built with --init, or pretrained here from one for thousands of steps rather than ALBERT's
# hundreds of thousands (at 5e-5 such a model reached entity F1 0.02 where 2e-3 reached 0.67; BENCHMARKS.md).
PRETRAINED_LR, FROM_SCRATCH_LR = 5e-5, 2e-3


def learning_rate(config: FinetuneConfig) -> float:
    """``--learning-rate``, or the default for the starting model."""
    if config.learning_rate is not None:
        return config.learning_rate
    return FROM_SCRATCH_LR if config.init or _pretrained_from_scratch(config.base_model or "") else PRETRAINED_LR


def _pretrained_from_scratch(base: str) -> bool:
    """Whether ``base`` is a folder that `albert-batch pretrain --init` wrote (its report says so)."""
    try:
        report = json.loads(storage.read_bytes(Location.parse(base, what="base model").child(PRETRAINING_REPORT)))
    except (AlbertBatchError, ValueError):  # not a readable folder of ours: a hub id, another model
        return False
    return isinstance(report, dict) and str(report.get("base", "")).startswith("init:")


def prepare_base(config: FinetuneConfig, labels: tuple[str, ...], texts: list[str], folder: Path) -> Path:
    """The starting model, with a fresh head for ``labels``, as a local folder the workers load."""
    from transformers import AlbertForSequenceClassification, AlbertForTokenClassification, AutoTokenizer

    from albert_batch.training.model_init import init_model

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
        raise ModelLoadError(f"cannot load base model {config.base_model}: {err}") from err
    if model.config.model_type != "albert":
        raise ModelLoadError(f"base model {config.base_model} is not ALBERT (model_type {model.config.model_type!r})")
    # The positions the model knows: those of its pretraining (the tokenizer's length, as `pretrain` saves
    # it), and those fine-tuning trains; inference windows and truncates at the larger.
    trained = min(config.max_length, model.config.max_position_embeddings)
    if tokenizer.model_max_length < trained:
        tokenizer.model_max_length = trained
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


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

    started = time.monotonic()
    train = read_labelled(config.train, config, what="train")
    evaluation = read_labelled(config.eval, config, what="eval")
    labels = label_names(config, train, evaluation)
    output = Location.parse(config.output, what="output")
    work = output.child(WORK_DIR)
    settings = workspace.run_settings(config, labels=list(labels))
    resuming = workspace.start(output, work, REPORT, settings)
    started_ray = connect_ray(config.ray_address)
    try:
        if resuming:
            log.info("resuming fine-tuning from the checkpoints in %s", work)
        else:  # built in a scratch folder that lives only until the upload: a driver killed later leaves none
            with tempfile.TemporaryDirectory(prefix="albert-finetune-") as local:
                workspace.upload_base(prepare_base(config, labels, train.texts, Path(local) / "base"), work)
            workspace.record_settings(work, settings)
        counter = start_step_counter()
        lr = learning_rate(config)
        trainer = _trainer(config, labels, train, evaluation, work, counter, lr)
        log.info("fine-tuning on %d Ray Train worker(s): %d training texts, %d eval texts; checkpoints in %s",
                 config.num_workers, len(train.texts), len(evaluation.texts), work)
        try:
            with StepMonitor(counter):
                result = trainer.fit()
        except Exception as err:  # Ray wraps worker failures; keep the root cause
            raise AlbertBatchError(f"fine-tuning failed: {err}; running the same command again resumes from the "
                                   f"last epoch's checkpoint in {work}") from err
        history = _history(result)
        best_checkpoint, best_metrics = max(result.best_checkpoints, key=lambda pair: pair[1]["score"])
        report = _report(config, labels, train, evaluation, history, best_metrics, started, lr)
        with best_checkpoint.as_directory() as folder:
            _write_output(Path(folder), output, work, report)
        return FinetuneResult(output=config.output, labels=labels, best_epoch=best_metrics["epoch"],
                              best_metrics=report["best_metrics"], epochs=history, seconds=report["seconds"])
    finally:
        if started_ray:
            ray.shutdown()


def _trainer(config: FinetuneConfig, labels: tuple[str, ...], train: LabelledData, evaluation: LabelledData,
             work: Location, counter: Any, lr: float) -> Any:
    """A `TorchTrainer` over the encoded training rows, starting from the base model in ``work``."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from transformers import AutoTokenizer

    base_uri = work.child(workspace.BASE).uri
    base = Path(models.resolve(base_uri)[0])
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    label2id = {name: i for i, name in enumerate(labels)}
    encoded = encode(train.texts, train.targets, tokenizer, config.task, label2id, config.max_length, config.max_windows)
    cpus = workspace.node_cpus()
    loop = TrainLoop(
        task=config.task, base=base_uri, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=lr, seed=config.seed, pad_id=tokenizer.pad_token_id or 0, evaluation=evaluation,
        threads=max(1, cpus // config.num_workers) if not config.use_gpu else None,
        tokenizer_files=tuple(n for n in workspace.TOKENIZER_FILES if (base / n).exists()), progress=counter,
    )
    return TorchTrainer(
        train_loop,
        train_loop_config={"loop": loop},
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu,
            resources_per_worker=({"GPU": 1} if config.use_gpu else {"CPU": max(1, cpus // config.num_workers) - 0.5})
            | dict(config.worker_resources or {})),
        # Every epoch's checkpoint is kept (they are small and removed at the end) so that the report has
        # every epoch's metrics; the best is chosen afterwards.
        run_config=workspace.run_config("finetune", work, num_to_keep=None),
        datasets={"train": ray.data.from_arrow(encoded)},
    )


def _report(config: FinetuneConfig, labels: tuple[str, ...], train: LabelledData, evaluation: LabelledData,
            history: list[dict[str, Any]], best_metrics: dict[str, Any], started: float, lr: float) -> dict[str, Any]:
    """``training_report.json``: the data, hyperparameters, every epoch's scores and the best epoch."""
    hyperparameters = ("epochs", "batch_size", "seed", "num_workers", "max_length", "max_windows", "vocab_size")
    return {
        "task": config.task.value,
        "base": config.base_model or f"init:{config.init}",
        "labels": list(labels),
        "data": {"train": train.sizes(), "eval": evaluation.sizes(), "train_location": config.train,
                 "eval_location": config.eval},
        "hyperparameters": {k: v for k, v in asdict(config).items() if k in hyperparameters}
        | {"learning_rate": lr, "optimizer": "AdamW", "weight_decay": 0.01, "schedule": "linear, 10% warmup"},
        "epochs": history,
        "best_epoch": best_metrics["epoch"],
        "best_metrics": {k: v for k, v in best_metrics.items() if not k.startswith("_")},
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "seconds": round(time.monotonic() - started, 1),
        "versions": package_versions(),
    }


def _history(result: Any) -> list[dict[str, Any]]:
    frame = result.metrics_dataframe
    keep = [c for c in frame.columns if not str(c).startswith("_") and c not in ("timestamp", "checkpoint_dir_name")]
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame[keep].to_dict(orient="records")]


def _write_output(folder: Path, output: Location, work: Location, report: dict[str, Any]) -> None:
    """Copy the model folder, remove the working folder, and write the report; the report goes last, so its
    presence marks a complete model."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != workspace.TRAINING_STATE:
            storage.write_bytes(output.child(path.name), path.read_bytes())
    storage.delete_dir(work)
    storage.write_bytes(output.child(REPORT), json.dumps(report, indent=2, default=str).encode())
    log.info("wrote the fine-tuned model to %s", output)
