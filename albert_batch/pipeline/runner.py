"""One batch run, end to end: check inputs and models, stream read -> tokenize -> model -> write on Ray
Data, check that every input row is accounted for, then publish each partition atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from albert_batch import storage
from albert_batch.config import RunConfig
from albert_batch.contract import REJECTS, TASK_OUTPUTS, Manifest, Task, schema, tables_for
from albert_batch.errors import PublishError
from albert_batch.inference import models
from albert_batch.inference.device import describe_precision
from albert_batch.inference.models import ModelInfo
from albert_batch.pipeline import publish
from albert_batch.pipeline.backpressure import QueueLimits, bounded_queues
from albert_batch.pipeline.cluster import connect_ray, package_versions, worker_error
from albert_batch.pipeline.inputs import InputPlan, plan_input, read_input
from albert_batch.pipeline.sink import StagingSink, WriteReport, parquet_bytes
from albert_batch.pipeline.sizing import StageSizing, size_stages
from albert_batch.pipeline.stages import ModelStage, TokenizeStage

log = logging.getLogger(__name__)

ROWS_PER_FILE = 100_000
QUEUE_BYTES = 32 * 2**20  # output a stage may have waiting for the next, beside its rows (see backpressure)


@dataclass(frozen=True)
class RunSummary:
    """What a finished run did; the same figures are in every partition's ``_manifest.json``."""

    run_id: str
    output: str
    partitions: dict[str, str]
    input_rows: int
    accepted_rows: int
    rejected_rows: int
    rejects_by_reason: dict[str, int]
    label_counts: dict[str, int]
    sample_entities: list[dict[str, Any]]
    seconds: float
    precision: str
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)  # the StageSizing the run used

    @property
    def rows_per_second(self) -> float:
        return self.input_rows / self.seconds if self.seconds else 0.0


@dataclass
class _Run:
    """What the steps of one run hand each other."""

    config: RunConfig
    plan: InputPlan
    models: dict[Task, ModelInfo]
    started: float = field(default_factory=time.monotonic)
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    timings: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.timings[name] = round(now - since, 3)
        return now


def run(config: RunConfig) -> RunSummary:
    """Run one batch job; return its summary once every partition is published.

    Raises ConfigError, InputError or ModelLoadError before any work when settings, input or models are
    unusable, and PublishError (or another AlbertBatchError) when the run fails; a failed run publishes
    nothing it did not finish."""
    started = time.monotonic()
    plan = plan_input(config.input_location, id_column=config.id_column, text_column=config.text_column)
    infos = {
        task: models.inspect(config.model_for(task), task, allow_pickle_weights=config.allow_pickle_weights)
        for task in config.tasks
    }
    job = _Run(config, plan, infos, started=started)
    log.info("input %s: %d rows in %d files", plan.location, plan.num_rows, len(plan.files))
    started_ray = connect_ray(config.ray_address)
    try:
        publish.recover(config.output_location, config.partition_path)
        phase = job.lap("checks_s", started)
        report, sizing = _process(job)
        phase = job.lap("process_s", phase)
        summary = _publish(job, report, sizing)
        log.info("published run %s in %.1fs", config.run_id, time.monotonic() - phase)
        return summary
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _process(job: _Run) -> tuple[WriteReport, StageSizing]:
    import ray

    config = job.config
    sizing = size_stages(config, ray.cluster_resources())
    log.info("stage sizing: %s", sizing)
    output = config.output_location
    sink = StagingSink(
        staging=publish.staging_location(output, config.run_id),
        run_id=config.run_id,
        models={task: info.uri for task, info in job.models.items()},
        id_type=job.plan.id_type,
        rows_per_file=ROWS_PER_FILE,
    )
    try:
        limits = QueueLimits(
            rows=sizing.max_rows_ahead, rows_into_write=ROWS_PER_FILE + sizing.max_rows_ahead, bytes=QUEUE_BYTES
        )
        with bounded_queues(limits, batch_rows=sizing.batch_size):
            _stream(job, sizing, sink)
    except Exception as err:
        publish.discard(output, config.run_id)
        failure = worker_error(err, f"run {config.run_id} failed while processing {job.plan.location}")
        if failure is err:
            raise
        raise failure from err
    assert sink.result is not None
    return sink.result, sizing


def _stream(job: _Run, sizing: StageSizing, sink: StagingSink) -> None:
    """Read -> tokenize -> model -> write, streamed through Ray Data; returns once the sink has every row."""
    import ray.data

    config = job.config
    model_uris = {task: info.uri for task, info in job.models.items()}
    ds = read_input(config, job.plan, rows_per_block=sizing.batch_size)
    ds = ds.map_batches(
        TokenizeStage,
        fn_constructor_kwargs={"model_uris": model_uris, "allow_pickle_weights": config.allow_pickle_weights},
        batch_format="pyarrow",
        batch_size=sizing.batch_size,
        compute=ray.data.ActorPoolStrategy(size=sizing.tokenizer_actors),
        num_cpus=sizing.cpus_per_tokenizer_actor,
    )
    ds = ds.map_batches(
        ModelStage,
        fn_constructor_kwargs={
            "model_uris": model_uris,
            "weights_sha256": {task: info.weights_sha256 for task, info in job.models.items()},
            "precision": config.precision,
            "use_gpu": sizing.gpus_per_model_actor > 0,
            "torch_threads": sizing.torch_threads,
            "max_tokens_per_forward": sizing.max_tokens_per_forward,
            "window_overlap": config.resources.ner_window_overlap,
            "allow_pickle_weights": config.allow_pickle_weights,
        },
        batch_format="pyarrow",
        batch_size=sizing.batch_size,
        compute=ray.data.ActorPoolStrategy(size=sizing.model_actors),
        num_cpus=sizing.cpus_per_model_actor,
        num_gpus=sizing.gpus_per_model_actor or None,
    )
    ds.write_datasink(sink)


def _check_accounting(job: _Run, report: WriteReport) -> None:
    """Every input row is in each task's table or in the rejects, exactly once."""
    rejected = report.rows.get(REJECTS, 0)
    for task in job.config.tasks:
        table = TASK_OUTPUTS[task].table
        if report.rows.get(table, 0) + rejected != job.plan.num_rows:
            publish.discard(job.config.output_location, job.config.run_id)
            raise PublishError(
                f"row accounting failed for {table}: {job.plan.num_rows} input rows but {report.rows.get(table, 0)} "
                f"results and {rejected} rejects; nothing was published"
            )


def _staged_files(job: _Run, report: WriteReport) -> dict[str, list[str]]:
    """Each table's staged files; a table without rows gets an empty file, which carries its schema."""
    config = job.config
    staging = publish.staging_location(config.output_location, config.run_id)
    files = {table: sorted(report.files.get(table, [])) for table in tables_for(config.tasks)}
    for table, names in files.items():
        if not names:
            name = f"part-{config.run_id}-empty.parquet"
            storage.write_bytes(staging.child(table, name), parquet_bytes(schema(table, job.plan.id_type).empty_table()))
            names.append(name)
    return files


def _publish(job: _Run, report: WriteReport, sizing: StageSizing) -> RunSummary:
    config, plan = job.config, job.plan
    _check_accounting(job, report)
    files = _staged_files(job, report)
    rejected = report.rows.get(REJECTS, 0)
    precision = describe_precision(config.precision, use_gpu=config.resources.num_gpus_per_actor > 0)
    seconds = time.monotonic() - job.started
    job.timings["total_s"] = round(seconds, 3)
    model_entries = {task.value: info.manifest_entry() for task, info in job.models.items()}
    shared = {
        "run_id": config.run_id,
        "partition": dict(config.partition),
        "tasks": [t.value for t in config.tasks],
        "input": {"location": plan.location.uri, "files": len(plan.files), "rows": plan.num_rows},
        "counts": {"input_rows": plan.num_rows, "accepted_rows": plan.num_rows - rejected, "rejected_rows": rejected,
                   **{f"{table}_rows": report.rows.get(table, 0) for table in files}},
        "models": model_entries,
        "precision": precision,
        "rejects_by_reason": dict(report.rejects),
        "label_counts": dict(report.labels),
        "started_at": job.started_at.isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "timings": job.timings,
        "stages": dataclasses.asdict(sizing),
        "versions": package_versions(),
    }
    manifests = {table: Manifest(table=table, rows=report.rows.get(table, 0), files=names, **shared)
                 for table, names in files.items()}
    publish.publish(config.output_location, config.run_id, config.partition_path, manifests)
    return RunSummary(
        run_id=config.run_id,
        output=config.output_location.uri,
        partitions={table: config.output_location.child(table, config.partition_path).uri for table in files},
        input_rows=plan.num_rows,
        accepted_rows=plan.num_rows - rejected,
        rejected_rows=rejected,
        rejects_by_reason=dict(report.rejects),
        label_counts=dict(report.labels),
        sample_entities=report.samples,
        seconds=seconds,
        precision=precision,
        models=model_entries,
        stages=shared["stages"],
    )
