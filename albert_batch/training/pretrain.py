"""Pretraining ALBERT on a user's own unlabelled Parquet corpus — masked-LM plus sentence-order prediction
(SOP), the objective ALBERT was designed with — on Ray Train, into a model folder that
`albert-batch finetune --base-model` takes directly.

The driver checks the corpus as `run` checks its input (every Parquet footer, the id and text columns),
prepares the starting model (a pretrained ALBERT, or one built offline with a SentencePiece tokenizer
trained on the corpus) and writes it into the output location, where every node can read it. One streamed
pass then counts documents, examples and SOP pairs, so an unusable corpus is refused before training, and
collects the held-out slice: the documents whose id hashes into a small share (about a thousand documents,
at most a tenth). Ray Train workers stream the rest of the corpus through Ray Data (`get_dataset_shard`),
so a corpus need not fit in memory; Ray Train keeps its checkpoints in the output location too, so that
dead workers restart from the last one and a re-run of the same settings resumes from it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from albert_batch import storage
from albert_batch.errors import AlbertBatchError, InputError, ModelLoadError
from albert_batch.inference import models
from albert_batch.pipeline.cluster import connect_ray, package_versions
from albert_batch.pipeline.inputs import InputPlan, plan_input, read_input
from albert_batch.storage import Location
from albert_batch.training import sop, workspace
from albert_batch.training.config import PretrainConfig
from albert_batch.training.masking import Masker
from albert_batch.training.pretrain_data import (
    ROWS_PER_BLOCK,
    ExampleSettings,
    corpus_examples,
    count_corpus,
    held_out_buckets,
)
from albert_batch.training.progress import StepMonitor, start_step_counter

log = logging.getLogger(__name__)

REPORT = "pretraining_report.json"
WORK_DIR = "_pretraining"  # in the output: the starting model and Ray Train's checkpoints; removed at the end
TOKENIZER_CHARACTERS = 2**25  # a new tokenizer learns from the corpus's first 32 Mi characters of text


@dataclass
class PretrainResult:
    output: str
    data: dict[str, Any]
    evaluations: list[dict[str, Any]]  # the held-out scores before the first step and at every report
    seconds: float


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pretrain, then write the model folder and ``pretraining_report.json`` (last) to ``config.output``."""
    import ray

    started = time.monotonic()
    corpus = Location.parse(config.corpus, what="corpus")
    output = Location.parse(config.output, what="output")
    work = output.child(WORK_DIR)
    plan = plan_input(corpus, id_column=config.id_column, text_column=config.text_column)
    if not plan.num_rows:
        raise InputError(f"corpus {corpus} is empty: its Parquet files hold no rows")
    settings_json = workspace.run_settings(config)
    resuming = workspace.start(output, work, REPORT, settings_json)
    started_ray = connect_ray(config.ray_address)
    try:
        from transformers import AutoTokenizer

        from albert_batch.training.pretrain_loop import EVALUATIONS, mask_held_out

        # The starting model is built in a local scratch folder that lives only until it is uploaded and its
        # tokenizer read, so that a driver killed while training (the long part) leaves nothing behind here.
        with tempfile.TemporaryDirectory(prefix="albert-pretrain-") as local:
            if resuming:
                log.info("resuming pretraining from the checkpoints in %s", work)
                base_uri = work.child(workspace.BASE).uri
                base = Path(models.resolve(base_uri)[0])
            else:
                base = prepare_base(config, plan, Path(local) / "base")
                base_uri = workspace.upload_base(base, work)
                workspace.record_settings(work, settings_json)
            tokenizer = AutoTokenizer.from_pretrained(str(base))
        settings = ExampleSettings.of(config, tokenizer, held_out_buckets(plan.num_rows))
        log.info("reading the corpus once to count its examples (%d rows in %d files)", plan.num_rows, len(plan.files))
        data = count_corpus(config, plan, settings)
        log.info("corpus: %d documents to train on (%d examples, %d sentence-order pairs), %d held out; %d rows "
                 "skipped", data["training"]["documents"], data["training"]["examples"], data["training"]["sop_pairs"],
                 data["held_out"]["documents"], sum(data["skipped_rows"].values()))
        masker = Masker(mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                        special_ids=frozenset(tokenizer.all_special_ids), probability=config.mlm_probability)
        held_out = mask_held_out(corpus_examples(config, plan, settings, side="held_out").take_all(), masker,
                                 config.seed)
        counter = start_step_counter()
        trainer = _trainer(config, plan, settings, data, work, base_uri, held_out, masker,
                           pad_id=tokenizer.pad_token_id or 0, counter=counter)
        log.info("pretraining on %d Ray Train worker(s); checkpoints in %s", config.num_workers, work)
        try:
            with StepMonitor(counter):
                result = trainer.fit()
        except Exception as err:  # Ray wraps worker failures; keep the root cause
            raise AlbertBatchError(f"pretraining failed: {err}; running the same command again resumes from the "
                                   f"last checkpoint in {work}") from err
        with result.checkpoint.as_directory() as folder:
            evaluations = json.loads((Path(folder) / EVALUATIONS).read_text())
            for path in sorted(Path(folder).iterdir()):
                if path.is_file() and path.name not in (EVALUATIONS, workspace.TRAINING_STATE):
                    storage.write_bytes(output.child(path.name), path.read_bytes())
        storage.delete_dir(work)
        seconds = round(time.monotonic() - started, 1)
        storage.write_bytes(output.child(REPORT), json.dumps(_report(config, data, evaluations, seconds), indent=2,
                                                             default=str).encode())
        log.info("wrote the pretrained model to %s", output)
        return PretrainResult(output=config.output, data=data, evaluations=evaluations, seconds=seconds)
    finally:
        if started_ray:
            ray.shutdown()


def prepare_base(config: PretrainConfig, plan: InputPlan, folder: Path) -> Path:
    """The starting `AlbertForPreTraining` and its tokenizer, as a local folder."""
    from transformers import AlbertForPreTraining, AutoTokenizer

    from albert_batch.training.model_init import SENTENCE_ORDER_LABELS, init_pretraining_model

    if config.init:
        init_pretraining_model(folder, texts=tokenizer_texts(config, plan), size=config.init, seed=config.seed,
                               vocab_size=config.vocab_size)
        # Positions beyond the training length are never learnt: the tokenizer's length says so, as
        # `finetune --init` does.
        AutoTokenizer.from_pretrained(str(folder), model_max_length=config.max_length).save_pretrained(str(folder))
        return folder
    name = config.base_model or ""
    local_dir, _ = models.resolve(name, allow_pickle_weights=config.allow_pickle_weights)
    try:
        model_type = json.loads((Path(local_dir) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"base model {name} has no readable config.json: {err}") from err
    if model_type != "albert":
        raise ModelLoadError(f"base model {name} is not ALBERT (model_type {model_type!r}); pretrain continues the "
                             "pretraining of ALBERT models")
    try:
        # The sentence-order head has two classes, whatever head the base model was saved with.
        model = AlbertForPreTraining.from_pretrained(
            local_dir, id2label=dict(enumerate(SENTENCE_ORDER_LABELS)),
            label2id={label: i for i, label in enumerate(SENTENCE_ORDER_LABELS)}, ignore_mismatched_sizes=True,
            use_safetensors=None if config.allow_pickle_weights else True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(local_dir, trust_remote_code=False)
    except Exception as err:  # from_pretrained raises many types for an unusable folder
        raise ModelLoadError(f"cannot load base model {name}: {err}") from err
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ModelLoadError(f"base model {name}: a fast (tokenizers-backed) tokenizer is needed for word boundaries")
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def tokenizer_texts(config: PretrainConfig, plan: InputPlan) -> list[str]:
    """The corpus's first texts, up to `TOKENIZER_CHARACTERS`, for training a new tokenizer."""
    texts: list[str] = []
    size = 0
    dataset = read_input(config, plan, list(plan.units()), rows_per_block=ROWS_PER_BLOCK)
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for text in batch.column("text").to_pylist():
            if text and text.strip():
                texts.append(text)
                size += len(text)
        if size >= TOKENIZER_CHARACTERS:
            break
    if not texts:
        raise InputError(f"corpus {plan.location} has no text to learn a tokenizer from: every one of its "
                         f"{plan.num_rows} rows has a null or blank {config.text_column!r}")
    return texts


def _trainer(config: PretrainConfig, plan: InputPlan, settings: ExampleSettings, data: dict[str, Any],
             work: Location, base: str, held_out: list[Any], masker: Masker, *, pad_id: int, counter: Any) -> Any:
    """A `TorchTrainer` streaming the training examples, starting from the uploaded base model."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from albert_batch.training.pretrain_loop import PretrainLoop, train_loop

    cpus = workspace.node_cpus()
    per_worker = data["training"]["examples"] // config.num_workers
    per_epoch = max(1, math.ceil(per_worker / config.batch_size))
    expected = config.epochs * per_epoch
    steps = min(expected, config.max_steps or expected)
    loop = PretrainLoop(
        base=base, epochs=config.epochs, stop_after=config.max_steps, schedule_steps=steps,
        planned_epochs=min(config.epochs, math.ceil(steps / per_epoch)), report_every=config.report_every,
        batch_size=config.batch_size, learning_rate=config.lr, seed=config.seed, pad_id=pad_id, masker=masker,
        held_out=held_out,
        threads=max(1, cpus // config.num_workers) if not config.use_gpu else None, progress=counter,
    )
    return TorchTrainer(
        train_loop,
        train_loop_config={"loop": loop},
        # One CPU stays free for Ray Data's read and tokenize tasks, which stream the corpus to the workers.
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": max(0, cpus - 1) / config.num_workers}
                                     if not config.use_gpu else None),
        run_config=workspace.run_config("pretrain", work, num_to_keep=1),
        datasets={"train": corpus_examples(config, plan, settings, side="training")},
    )


def _report(config: PretrainConfig, data: dict[str, Any], evaluations: list[dict[str, Any]],
            seconds: float) -> dict[str, Any]:
    """``pretraining_report.json``: the data, the objective, hyperparameters and every held-out evaluation."""
    hyperparameters = ("epochs", "max_steps", "batch_size", "seed", "num_workers", "max_length", "mlm_probability",
                       "vocab_size")
    return {
        "base": config.base_model or f"init:{config.init}",
        "data": data,
        "objective": {
            "masking": "whole words in n-grams of 1-3 words (P(n) proportional to 1/n), about mlm_probability of "
                       "each sequence's tokens; 80% [MASK], 10% a random token, 10% unchanged; masked afresh "
                       "every epoch, the held-out slice once",
            "sentence_order": "consecutive segments of one document, swapped half of the time; single-segment "
                              "examples train the masked LM only",
            "short_sequence_probability": sop.SHORT_SEQ_PROB,
        },
        "hyperparameters": {k: v for k, v in asdict(config).items() if k in hyperparameters}
        | {"learning_rate": config.lr, "optimizer": "AdamW", "weight_decay": 0.01, "schedule": "linear, 10% warmup"},
        "evaluations": evaluations,
        "final": evaluations[-1],
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "seconds": seconds,
        "versions": package_versions(),
    }
