"""One batch run, end to end: check inputs and models, stream read -> tokenize -> model -> write on Ray
Data, check that every input row is accounted for, then publish each partition atomically."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import platform
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from albert_batch import errors, models, publish, storage
from albert_batch.backpressure import QueueLimits, bounded_queues
from albert_batch.config import REJECTS, TASK_TABLES, RunConfig, Task, tables_for
from albert_batch.errors import AlbertBatchError, ConfigError, PublishError, RayUnavailable
from albert_batch.inputs import InputPlan, plan_input
from albert_batch.models import ModelInfo
from albert_batch.output import StagingSink, parquet_bytes, schema
from albert_batch.predictors import describe_precision
from albert_batch.stages import ModelStage, TokenizeStage

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

ROWS_PER_FILE = 100_000
READ_TASK_BYTES = 16 * 2**20  # uncompressed row groups per read task (read_input)
QUEUE_BYTES = 32 * 2**20  # output a stage may have waiting for the next, beside its rows (backpressure.py)
VERSIONED_PACKAGES = ("albert-batch", "ray", "transformers", "torch", "tokenizers", "pyarrow")


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


# Stage throughputs behind the sizing, for ALBERT-base shapes: the tokenizer stage handles ~0.5M tokens/s
# per CPU (Rust tokenizer plus Arrow columns); a CPU model actor ~1-2k tokens/s per core (bf16 on AMX); one
# H200 ~2-4.5M tokens/s (15-35k sequences of 128 tokens per second in bf16). So one tokenizer actor keeps
# dozens of CPU model cores busy, while a GPU needs several CPUs tokenizing for it.
CPUS_PER_MODEL_ACTOR = 8
CPUS_PER_TOKENIZER_ACTOR = 64
TOKENIZER_ACTORS_PER_GPU = 6
# Rows per model batch, on CPUs and GPUs: each batch is sorted by length and cut into forward passes, so
# larger batches pad less. On the benchmark's log-normal lengths, 4,096 rows pad 3% and 1,024 rows 8%
# (sorting the whole corpus: 2%). A batch of short texts is still small: 4,096 rows of 50 tokens are ~1 MB
# of features. On CPUs, forward passes of ~2k tokens keep the activations in cache (8k runs at half the
# speed); a GPU needs far larger ones to amortise kernel launches and keep its cores busy.
BATCH_ROWS = 4096
CPU_TOKENS_PER_FORWARD = 2048
GPU_TOKENS_PER_FORWARD = 65_536


@dataclass(frozen=True)
class StageSizing:
    model_actors: int
    cpus_per_model_actor: float
    gpus_per_model_actor: float
    torch_threads: int
    tokenizer_actors: int
    cpus_per_tokenizer_actor: float
    batch_size: int
    max_tokens_per_forward: int
    max_rows_ahead: int  # how far each stage may run ahead of the next (albert_batch/backpressure.py)


def size_stages(config: RunConfig, cluster: dict[str, float]) -> StageSizing:
    """Derive the stage layout from the cluster's resources; settings in ``config.resources`` win.

    Ray Data's list, read and write tasks each ask for a whole logical CPU, so the actors' reservations
    leave one CPU free or the pipeline would deadlock; settings that would not raise ConfigError. Logical
    reservations only schedule: a CPU model actor runs torch on its whole share of the cores (tokenizing
    and I/O take little).
    CPU clusters: one model actor per 8 CPUs, one tokenizer actor per 64 CPUs.
    GPU clusters: one model actor per ``num_gpus_per_actor`` share of each GPU with up to one CPU to drive
    it, several tokenizer actors per GPU on the CPUs left, and GPU-sized forward passes."""
    res = config.resources
    cpus = max(1.0, float(cluster.get("CPU", os.cpu_count() or 1)))
    spare = max(0.5, cpus - 1.0)  # what the actors may reserve between them
    if res.num_gpus_per_actor > 0:
        sizing = _size_gpu_stages(config, spare, float(cluster.get("GPU", 0.0)))
    else:
        sizing = _size_cpu_stages(config, cpus, spare)
    reserved = sizing.model_actors * sizing.cpus_per_model_actor + sizing.tokenizer_actors * sizing.cpus_per_tokenizer_actor
    if reserved > spare + 1e-6:
        raise ConfigError(
            f"resources: the model and tokenizer actors would reserve {reserved:g} of the cluster's {cpus:g} CPUs, "
            f"leaving less than the whole CPU that Ray Data's read and write tasks need: the run would wait "
            f"forever. Lower num_cpus_per_actor, model_actors or tokenizer_actors (at most {spare:g} CPUs in all)"
        )
    return sizing


def _size_cpu_stages(config: RunConfig, cpus: float, spare: float) -> StageSizing:
    res = config.resources
    actors = res.model_actors or max(1, int(cpus // CPUS_PER_MODEL_ACTOR))
    cpus_per_actor = res.num_cpus_per_actor or spare * 0.75 / actors
    threads = int(res.num_cpus_per_actor) if res.num_cpus_per_actor else int(cpus // actors)
    tokenizers = res.tokenizer_actors or math.ceil(cpus / CPUS_PER_TOKENIZER_ACTOR)
    batch_size = res.batch_size or BATCH_ROWS
    return StageSizing(
        model_actors=actors,
        cpus_per_model_actor=round(cpus_per_actor, 3),
        gpus_per_model_actor=0.0,
        torch_threads=max(1, threads),
        tokenizer_actors=tokenizers,
        cpus_per_tokenizer_actor=_tokenizer_share(spare - cpus_per_actor * actors, tokenizers),
        batch_size=batch_size,
        max_tokens_per_forward=res.max_tokens_per_forward or CPU_TOKENS_PER_FORWARD,
        max_rows_ahead=_rows_ahead(batch_size, actors),
    )


def _size_gpu_stages(config: RunConfig, spare: float, gpus: float) -> StageSizing:
    res = config.resources
    if gpus == 0:
        log.warning("num_gpus_per_actor is set but the cluster reports no GPU: the run waits for GPU nodes to join "
                    "until Ray Data's no-progress timeout; set num_gpus_per_actor to 0 on a CPU-only cluster")
    actors = res.model_actors or max(1, math.floor(gpus / res.num_gpus_per_actor + 1e-9))
    # Each model actor's CPU only launches kernels and postprocesses; tokenizers get at least half the CPUs.
    cpus_per_actor = res.num_cpus_per_actor or min(1.0, spare / (2 * actors))
    left = spare - cpus_per_actor * actors
    tokenizers = res.tokenizer_actors or max(1, min(math.ceil(TOKENIZER_ACTORS_PER_GPU * max(gpus, 1.0)), int(left)))
    batch_size = res.batch_size or BATCH_ROWS
    return StageSizing(
        model_actors=actors,
        cpus_per_model_actor=round(cpus_per_actor, 3),
        gpus_per_model_actor=res.num_gpus_per_actor,
        torch_threads=max(1, int(cpus_per_actor)),
        tokenizer_actors=tokenizers,
        cpus_per_tokenizer_actor=_tokenizer_share(left, tokenizers),
        batch_size=batch_size,
        max_tokens_per_forward=res.max_tokens_per_forward or GPU_TOKENS_PER_FORWARD,
        max_rows_ahead=_rows_ahead(batch_size, actors),
    )


def _rows_ahead(batch_size: int, model_actors: int) -> int:
    """A spare batch waiting for each model actor (at least two), beside the batches Ray Data has already
    handed to each actor: enough to keep the model stage fed, while the queues stay a few batches long
    however large the corpus."""
    return batch_size * max(2, model_actors)


def _tokenizer_share(left: float, tokenizers: int) -> float:
    """Each tokenizer actor's logical CPUs: an even split of what the model actors left, at most one CPU
    (a tokenizer actor runs one batch at a time), and a token 0.05 when nothing is left."""
    return round(min(1.0, max(0.05, left / tokenizers)), 3)


def connect_ray(address: str | None) -> bool:
    """Join ``address`` (``auto`` or ``host:port``), or — when absent and no ``RAY_ADDRESS`` is set, as it is
    inside ``ray job submit`` — start an embedded local Ray. Returns True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    joining = address or os.environ.get("RAY_ADDRESS")
    try:
        if joining:
            ray.init(address=address, **kwargs)  # None: Ray reads RAY_ADDRESS
        else:
            ray.init(include_dashboard=False, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError) as err:
        where = f"the Ray cluster at {joining}" if joining else "an embedded local Ray"
        raise RayUnavailable(f"cannot start or join {where}: {type(err).__name__}: {err}") from err
    return True


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def run(config: RunConfig) -> RunSummary:
    """Run one batch job; return its summary once every partition is published.

    Raises ConfigError, InputError or ModelLoadError before any work when settings, input or models are
    unusable, and PublishError (or another AlbertBatchError) when the run fails; a failed run publishes
    nothing it did not finish."""
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)
    output = config.output_location
    plan = plan_input(config.input_location, id_column=config.id_column, text_column=config.text_column)
    infos = {
        task: models.inspect(config.model_for(task), task, allow_pickle_weights=config.allow_pickle_weights)
        for task in config.tasks
    }
    log.info("input %s: %d rows in %d files", plan.location, plan.num_rows, len(plan.files))
    started_ray = connect_ray(config.ray_address)
    try:
        publish.recover(output, config.partition_path)
        timings: dict[str, float] = {"checks_s": round(time.monotonic() - started, 3)}
        phase = time.monotonic()
        report = _process(config, plan, infos)
        timings["process_s"] = round(time.monotonic() - phase, 3)
        phase = time.monotonic()
        summary = _publish(config, plan, infos, report, timings, started, started_at)
        log.info("published run %s in %.1fs", config.run_id, time.monotonic() - phase)
        return summary
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _process(config: RunConfig, plan: InputPlan, infos: dict[Task, ModelInfo]) -> dict[str, Any]:
    import ray

    sizing = size_stages(config, ray.cluster_resources())
    log.info("stage sizing: %s", sizing)
    model_uris = {task: info.uri for task, info in infos.items()}
    output = config.output_location
    sink = StagingSink(
        staging=publish.staging_location(output, config.run_id),
        run_id=config.run_id,
        models=model_uris,
        id_type=plan.id_type,
        rows_per_file=ROWS_PER_FILE,
    )
    try:
        limits = QueueLimits(
            rows=sizing.max_rows_ahead, rows_into_write=ROWS_PER_FILE + sizing.max_rows_ahead, bytes=QUEUE_BYTES
        )
        with bounded_queues(limits, batch_rows=sizing.batch_size):
            _stream(config, plan, sizing, infos, sink)
    except Exception as err:
        publish.discard(output, config.run_id)
        failure = worker_error(err, f"run {config.run_id} failed while processing {plan.location}")
        if failure is err:
            raise
        raise failure from err
    assert sink.result is not None
    return {**sink.result, "stages": asdict(sizing)}


def _stream(
    config: RunConfig, plan: InputPlan, sizing: StageSizing, infos: dict[Task, ModelInfo], sink: StagingSink
) -> None:
    """Read -> tokenize -> model -> write, streamed through Ray Data; returns once the sink has every row."""
    import ray.data

    model_uris = {task: info.uri for task, info in infos.items()}
    weights_sha256 = {task: info.weights_sha256 for task, info in infos.items()}
    ds = read_input(config, plan, rows_per_block=sizing.batch_size)
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
            "weights_sha256": weights_sha256,
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


def read_input(config: RunConfig, plan: InputPlan, *, rows_per_block: int) -> ray.data.Dataset:
    """The input's ``id`` and ``text`` columns as a Ray dataset, in blocks of at most ``rows_per_block`` rows.

    A map stage writes its output into blocks of up to 128 MiB, so one input file would reach the model
    stage as one block: one task, on one actor, however many actors there are. Blocks of one batch each
    spread the work over every tokenizer and model actor.

    The read runs one task at a time, each over at most ``READ_TASK_BYTES`` of row groups (a row group is
    never split). A read task runs to its end once started, whatever the stages after it can take, and
    Ray Data's default packs 128 MiB of row groups into each and starts them all at once: three million
    short rows of text then waited in the object store, and one worker held 1.6 GiB splitting them (see
    BENCHMARKS.md). One task decodes Parquet text far faster than any model stage consumes it."""
    import ray.data

    with _environment(RAY_DATA_PARQUET_BIN_PACKING_BYTES=str(READ_TASK_BYTES)):  # read when the read is planned
        ds = ray.data.read_parquet(
            plan.uris if plan.location.scheme == "s3" else list(plan.files),
            filesystem=plan.location.filesystem,
            columns=[config.id_column, config.text_column],
            partitioning=None,
            file_extensions=None,  # every listed file is data: never drop one for its name
            concurrency=1,
        )
    if (config.id_column, config.text_column) != ("id", "text"):
        ds = ds.rename_columns({config.id_column: "id", config.text_column: "text"})
    return ds.repartition(target_num_rows_per_block=rows_per_block)


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# A line of a traceback that names an exception: ``albert_batch.errors.StorageError: writing … failed``.
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*): (?P<message>.*\S)", re.MULTILINE)


def worker_error(err: Exception, context: str) -> AlbertBatchError:
    """The error to raise for ``err``, which a Ray Data execution raised: ``err`` itself if this process
    raised it, else what the worker raised, in one line after ``context``. Ray hands a worker's error back
    wrapped (``RayTaskError``, or ``ActorDiedError`` when an actor's ``__init__`` failed), with the worker's
    whole traceback as its message; an error of albert-batch's own keeps its type and message, anything
    else becomes an AlbertBatchError naming the root exception."""
    from ray.exceptions import RayError

    if not isinstance(err, RayError):
        if isinstance(err, AlbertBatchError):
            return err
        while err.__cause__ is not None and str(err.__cause__):  # Ray Data chains an empty SystemException
            err = err.__cause__
        return AlbertBatchError(f"{context}: {type(err).__name__}: {err}")
    raised = [(m["type"], m["message"]) for m in _EXCEPTION_LINE.finditer(str(err))]
    ours = [(name, message) for name, message in raised if name.startswith("albert_batch.errors.")]
    if ours:
        name, message = ours[-1]  # the outermost: it names what failed, with its cause
        kind = getattr(errors, name.rsplit(".", 1)[1], None)
        if not (isinstance(kind, type) and issubclass(kind, AlbertBatchError)):
            kind = AlbertBatchError
        return kind(f"{context}: {message}")
    others = [(name, message) for name, message in raised if not name.startswith("ray.")
              and ("." in name or name.endswith(("Error", "Exception", "Exit", "Interrupt")))]
    name, message = others[0] if others else (type(err).__name__, str(err).splitlines()[0])
    return AlbertBatchError(f"{context}: {name}: {message}")


def _publish(
    config: RunConfig,
    plan: InputPlan,
    infos: dict[Task, ModelInfo],
    report: dict[str, Any],
    timings: dict[str, float],
    started: float,
    started_at: dt.datetime,
) -> RunSummary:
    output = config.output_location
    rows: Counter = report["rows"]
    rejected = rows.get(REJECTS, 0)
    accepted = plan.num_rows - rejected
    for task in config.tasks:
        table = TASK_TABLES[task]
        if rows.get(table, 0) + rejected != plan.num_rows:
            publish.discard(output, config.run_id)
            raise PublishError(
                f"row accounting failed for {table}: {plan.num_rows} input rows but {rows.get(table, 0)} results "
                f"and {rejected} rejects; nothing was published"
            )
    files = {table: sorted(report["files"].get(table, [])) for table in tables_for(config.tasks)}
    staging = publish.staging_location(output, config.run_id)
    for table, names in files.items():
        if not names:  # an empty partition still carries the schema for consumers
            name = f"part-{config.run_id}-empty.parquet"
            storage.write_bytes(staging.child(table, name), parquet_bytes(schema(table, plan.id_type).empty_table()))
            names.append(name)
    precision = describe_precision(config.precision, use_gpu=config.resources.num_gpus_per_actor > 0)
    seconds = time.monotonic() - started
    timings["total_s"] = round(seconds, 3)
    partition = dict(config.partition)
    model_entries = {task.value: info.manifest_entry() for task, info in infos.items()}
    base_manifest = {
        "run_id": config.run_id,
        "partition": partition,
        "tasks": [t.value for t in config.tasks],
        "input": {"location": plan.location.uri, "files": len(plan.files), "rows": plan.num_rows},
        "models": model_entries,
        "precision": precision,
        "counts": {"input_rows": plan.num_rows, "accepted_rows": accepted, "rejected_rows": rejected,
                   **{f"{table}_rows": rows.get(table, 0) for table in files}},
        "rejects_by_reason": dict(report["rejects"]),
        "label_counts": dict(report["labels"]),
        "started_at": started_at.isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "timings": timings,
        "stages": report["stages"],
        "versions": versions(),
    }
    manifests = {table: {**base_manifest, "table": table, "rows": rows.get(table, 0), "files": names}
                 for table, names in files.items()}
    publish.publish(output, config.run_id, config.partition_path, files, manifests)
    return RunSummary(
        run_id=config.run_id,
        output=output.uri,
        partitions={table: output.child(table, config.partition_path).uri for table in files},
        input_rows=plan.num_rows,
        accepted_rows=accepted,
        rejected_rows=rejected,
        rejects_by_reason=dict(report["rejects"]),
        label_counts=dict(report["labels"]),
        sample_entities=report["samples"],
        seconds=seconds,
        precision=precision,
        models=model_entries,
        stages=report["stages"],
    )
