"""One batch run, end to end: check inputs, models and the destination; resume the partition's staged work
or start afresh; stream read -> tokenize -> model -> write on Ray Data for the units not done; check that
every input row is accounted for; then publish each partition atomically, its files merged to size. Each
step is a short function; what it does lives in the module it calls (inputs, staging, stages, writer,
destination)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from albert_batch import metrics, storage
from albert_batch.config import RunConfig
from albert_batch.contract import REJECTS, TASK_OUTPUTS, Manifest, RejectReason, Task, schema, tables_for
from albert_batch.errors import AlbertBatchError, ErrorBudgetExceeded, PublishError, Stopped
from albert_batch.inference import models
from albert_batch.inference.device import slow_precision
from albert_batch.inference.models import ModelInfo
from albert_batch.pipeline import ledger as ledger_module
from albert_batch.pipeline import reuse, staging
from albert_batch.pipeline.backpressure import QueueLimits, bounded_queues
from albert_batch.pipeline.cluster import (
    cluster_with,
    connect_ray,
    find_host,
    package_versions,
    wait_for_a_host,
    worker_error,
)
from albert_batch.pipeline.destination import Destination, open_destination
from albert_batch.pipeline.inputs import InputPlan, WorkUnit, plan_input, read_input
from albert_batch.pipeline.interrupts import Interrupts
from albert_batch.pipeline.isolation import injected_faults
from albert_batch.pipeline.monitor import Monitor
from albert_batch.pipeline.sizing import StageSizing, actor_needs, model_needs, reserved, size_stages
from albert_batch.pipeline.stages import ModelStage, TokenizeStage
from albert_batch.pipeline.summary import RunSummary
from albert_batch.pipeline.writer import StagingWriter, WriteQueue, WriteReport, parquet_bytes
from albert_batch.quality import REPORT, partition_report

log = logging.getLogger(__name__)

QUEUE_BYTES = 32 * 2**20  # output a stage may have waiting for the next, beside its rows (see backpressure)


@dataclass
class _Run:
    """What the steps of one run hand each other."""

    config: RunConfig
    plan: InputPlan
    models: dict[Task, ModelInfo]
    destination: Destination
    units: tuple[WorkUnit, ...] = ()  # cut once the earlier work to reuse is known (`albert_batch.pipeline.reuse`)
    started: float = field(default_factory=time.monotonic)
    retries_before: Counter[str] = field(default_factory=Counter)  # the driver's storage retries before the run
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    timings: dict[str, float] = field(default_factory=dict)
    ledger: ledger_module.RunLedger | None = None  # where the run's workers report to, while it processes
    reuse: dict[str, Any] | None = None  # what was reused of earlier work (`reuse.describe`)

    @property
    def folder(self) -> storage.Location:
        """The partition's staging folder."""
        return self.destination.folder

    @functools.cached_property
    def key(self) -> staging.WorkKey:
        """What the partition's results depend on (see `reuse.work_key`)."""
        return reuse.work_key(self.config, self.plan, self.models)

    @property
    def tags(self) -> metrics.RunTags:
        return metrics.RunTags(self.config.run_id, self.config.partition_path)

    def lap(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.timings[name] = round(now - since, 3)
        return now


def run(config: RunConfig) -> RunSummary:
    """Run one batch job; return its summary once every partition is published.

    Raises ConfigError, InputError, OutputError or ModelLoadError before any work when settings, input,
    destination or models are unusable, and PublishError (or another AlbertBatchError) when the run fails;
    a failed run publishes nothing it did not finish, and the next run of its partition reuses the work it
    staged. Called from the main thread, SIGTERM and SIGINT stop it with `Stopped` within seconds, whatever
    it is doing (a publication it has committed to is finished first)."""
    started, started_at, retries_before = time.monotonic(), dt.datetime.now(dt.UTC), Counter(storage.retries_made())
    with Interrupts() as interrupts, interrupts.raised():
        if warning := slow_precision(config.precision, use_gpu=config.resources.num_gpus_per_actor > 0):
            log.warning("%s (judged by this machine's CPU; each model actor warns for its own)", warning)
        plan = plan_input(config.input_location, id_column=config.id_column, text_column=config.text_column,
                          keep_columns=config.keep_columns)
        infos = {task: models.inspect(config.model_for(task), task, allow_pickle_weights=config.allow_pickle_weights)
                 for task in config.tasks}
        destination = open_destination(config, plan.id_type, plan.kept)
        job = _Run(config, plan, infos, destination, started=started, started_at=started_at,
                   retries_before=retries_before)
        phase = job.lap("checks_s", started)
        started_ray = connect_ray(config.ray_address)
        job.lap("ray_s", phase)
        interrupts.take_back()
        try:
            return _run(job, interrupts)
        finally:
            if job.ledger is not None:
                job.ledger.close()
            if started_ray:
                import ray

                ray.shutdown()


def _run(job: _Run, interrupts: Interrupts) -> RunSummary:
    import ray

    config, phase = job.config, time.monotonic()
    with interrupts.deferred():  # an interrupted publication is finished whole, or the partition stays hidden
        job.destination.recover()
    resumed = _reuse(job)
    phase = job.lap("reuse_s", phase)
    todo = [u for u in job.units if u.index not in resumed.done]
    with interrupts.raised():  # model actors that need GPUs or custom resources are sized for their hosts
        host = find_host(model_needs(config), config.wait_for_nodes_s) if todo else None
    node_cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=None)
    sizing = size_stages(config, cluster_with(host, model_needs(config)), node_cpus, host)
    metrics.bind(job.tags)
    if todo:
        job.ledger = ledger_module.start_ledger()
        log.info("stage sizing: %s", sizing)
        try:
            with interrupts.raised():
                wait_for_a_host(actor_needs(config, sizing), config.wait_for_nodes_s)
                _process(job, sizing, todo, interrupts)
        except Stopped as err:
            raise Stopped(f"{err}: nothing was published; {_kept(job)}", err.signum) from None
    phase = job.lap("process_s", phase)
    done, _ = staging.done_units(job.folder, job.units)
    missing = [u.index for u in job.units if u.index not in done]
    if missing:
        raise PublishError(f"run {config.run_id}: units {missing[:10]} of {len(job.units)} are not all staged after "
                           "the stages finished; nothing was published")
    figures = ledger_module.final_snapshot(job.ledger)
    if start_up := ledger_module.start_up(figures, job.started_at.timestamp()):
        job.timings.update(start_up)
        log.info("start-up, seconds after the run's call: %s", ", ".join(f"{k[:-2]} {v:.1f}" for k, v in start_up.items()))
    with interrupts.deferred():
        summary = _publish(job, done, sizing, resumed, figures)
    publish_s = round(time.monotonic() - phase, 3)
    log.info("published run %s in %.1fs", config.run_id, publish_s)
    return dataclasses.replace(summary, timings={**summary.timings, "publish_s": publish_s})


def _kept(job: _Run) -> str:
    """What a stopped or failed run leaves for the next one, in words."""
    try:
        done, _ = staging.done_units(job.folder, job.units)
    except AlbertBatchError:  # the store may be what failed
        return f"the work staged in {job.folder} is kept for the next run of partition {job.config.partition_path}"
    return (f"{len(done)} of {len(job.units)} units are staged in {job.folder}, and the next run of partition "
            f"{job.config.partition_path} resumes from them")


def _reuse(job: _Run) -> staging.Resumed:
    """Find the partition's earlier work, cut the input around what of it can be reused, and make the staging
    folder ready: staged work kept where it covers a unit, published work copied in (`albert_batch.pipeline.reuse`)."""
    config, plan = job.config, job.plan
    earlier = reuse.find(job.destination)
    if not reuse.reusable(earlier, job.key, fresh=config.fresh):
        earlier = None
    unit_bytes = int(config.resources.unit_mib * 2**20) if config.resources.unit_mib else None
    job.units = plan.units(unit_bytes, keep=earlier.units if earlier else ())
    log.info("input %s: %d rows in %d files, %d units of work", plan.location, plan.num_rows, len(plan.files),
             len(job.units))
    pieces: dict[str, staging.Piece] = {}  # the piece records read, so that each is read once
    staging.prepare(job.folder, job.destination.table_dirs, job.key, config.run_id, job.units,
                    keep=earlier is not None and earlier.where == "staged", files=reuse.input_files(plan.files),
                    published=job.destination.published_files, cache=pieces)
    if earlier is not None and earlier.where == "published":
        reuse.import_published(earlier, job.units, job.destination, config.run_id)
    resumed = staging.resumed(job.folder, job.units, cache=pieces)
    job.reuse = reuse.describe(earlier, plan.files, job.units, resumed.done)
    return resumed


def _process(job: _Run, sizing: StageSizing, units: list[WorkUnit], interrupts: Interrupts) -> None:
    config = job.config
    faults = injected_faults()
    writer = StagingWriter(folder=job.folder, table_dirs=job.destination.table_dirs, run_id=config.run_id,
                           models={t: i.uri for t, i in job.models.items()}, id_type=job.plan.id_type,
                           partition_columns=job.destination.partition_columns, faults=faults, ledger=job.ledger,
                           kept=job.plan.kept, unit_keys={u.index: u.key for u in units}, run=job.tags)
    limits = QueueLimits(rows=sizing.max_rows_ahead, bytes=QUEUE_BYTES)
    try:
        with (Monitor(folder=job.folder, unit_rows={u.index: u.rows for u in units}, total_rows=job.plan.num_rows,
                      actor_needs=actor_needs(config, sizing), wait_for_nodes_s=config.wait_for_nodes_s,
                      interrupts=interrupts, ledger=job.ledger, units=len(job.units), run_id=config.run_id),
              bounded_queues(limits, batch_rows=sizing.batch_size),
              WriteQueue(writer, {u.index: u.rows for u in units}, rows_per_file=sizing.rows_per_file,
                         flush_s=config.resources.flush_seconds) as writes):
            _stream(job, sizing, units, writes, faults)
    except Stopped:
        raise
    except Exception as err:
        failure = worker_error(err, f"run {config.run_id} failed while processing {job.plan.location}")
        log.error("%s; %s", failure, _kept(job))
        if failure is err:
            raise
        raise failure from err


def _stream(job: _Run, sizing: StageSizing, units: list[WorkUnit], writes: WriteQueue,
            faults: dict[str, frozenset[object]]) -> None:
    """Read -> tokenize -> model, streamed through Ray Data, into the write queue; returns once every row
    is staged. Without tokenizer actors (CPU runs: `albert_batch.pipeline.sizing`) the model actors tokenize."""
    import ray.data

    config = job.config
    model_uris = {task: info.uri for task, info in job.models.items()}
    ds = read_input(config, job.plan, units, rows_per_block=sizing.batch_size, retries_to=job.folder,
                    ledger=job.ledger, run=job.tags)
    if sizing.tokenizer_actors:
        ds = ds.map_batches(
            TokenizeStage,
            fn_constructor_kwargs={"model_uris": model_uris, "allow_pickle_weights": config.allow_pickle_weights,
                                   "max_text_chars": config.max_text_chars, "dedupe": not config.no_dedupe,
                                   "ledger": job.ledger, "run": job.tags, "faults": faults},
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
            "dedupe": not config.no_dedupe,
            "ledger": job.ledger,
            "run": job.tags,
            "faults": faults,
            "tokenize": not sizing.tokenizer_actors,
            "max_text_chars": config.max_text_chars,
        },
        batch_format="pyarrow",
        batch_size=sizing.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=sizing.model_actors, max_size=sizing.max_model_actors),
        num_cpus=sizing.cpus_per_model_actor,
        num_gpus=sizing.gpus_per_model_actor or None,
        resources=dict(config.resources.model_actor_resources) or None,
    )
    # Ray Data's own iterator over the output blocks (what Dataset.iter_internal_ref_bundles returns), with its
    # executor, so that a stopped or failed run ends the execution and its actors here, not when the dataset
    # is collected: a process that runs again on the same cluster would otherwise wait for their resources.
    bundles, _, executor = ds._execute_to_iterator(capture_executor=False)
    try:
        for bundle in bundles:
            writes.add(bundle)
    except BaseException as err:
        if executor is not None:
            executor.shutdown(force=True, exception=err if isinstance(err, Exception) else None)
        raise
    writes.finish()


def _check_error_budget(job: _Run, report: WriteReport) -> None:
    """Fail the run, before it publishes, when more input rows are processing errors than ``max_error_rate``
    of them, rounded up (so one bad row never fails a run unless the rate is 0): a broken model or a wrong
    column must not publish a partition of rejects. The staged work is kept: a run with a higher budget, or
    after a fix that changes nothing the results depend on, reuses it."""
    errors = report.rejects.get(RejectReason.PROCESSING_ERROR.value, 0)
    allowed = math.ceil(job.config.max_error_rate * job.plan.num_rows - 1e-9)
    if errors > allowed:
        detail, count = report.errors.most_common(1)[0] if report.errors else ("(no detail recorded)", errors)
        raise ErrorBudgetExceeded(
            f"run {job.config.run_id}: {errors} of {job.plan.num_rows} input rows ({errors / job.plan.num_rows:.2%}) "
            f"failed in processing, more than max_error_rate {job.config.max_error_rate:g} allows; the most frequent "
            f"error, on {count} row(s): {detail}. Nothing was published; {_kept(job)}")


def _check_accounting(job: _Run, report: WriteReport) -> None:
    """Every input row is in each task's table or in the rejects, exactly once."""
    rejected = report.rows.get(REJECTS, 0)
    for task in job.config.tasks:
        table = TASK_OUTPUTS[task].table
        if report.rows.get(table, 0) + rejected != job.plan.num_rows:
            staging.discard(job.folder)
            raise PublishError(
                f"row accounting failed for {table}: {job.plan.num_rows} input rows but {report.rows.get(table, 0)} "
                f"results and {rejected} rejects; nothing was published"
            )


def _staged_files(job: _Run, report: WriteReport) -> dict[str, dict[str, int]]:
    """Each table's staged files (name -> rows), in the order of their units; in Hive folders a table without
    rows gets an empty file, which carries its schema."""
    config = job.config
    files = {table: dict(report.files.get(table, {})) for table in tables_for(config.tasks)}
    for table, names in files.items():
        if not names and job.destination.empty_tables_need_a_file:
            name = f"part-{config.run_id}-empty.parquet"
            storage.write_bytes(job.destination.table_dirs[table].child(name),
                                parquet_bytes(schema(table, job.plan.id_type, job.plan.kept).empty_table()))
            names[name] = 0
    return files


def _publish(job: _Run, done: dict[int, list[staging.Piece]], sizing: StageSizing, resumed: staging.Resumed,
             figures: dict[str, Any]) -> RunSummary:
    config, plan = job.config, job.plan
    report = WriteReport.of(p for unit in job.units for p in done[unit.index])
    _check_accounting(job, report)
    _check_error_budget(job, report)
    compacted = job.destination.compact(config.run_id, _staged_files(job, report))
    files = {table: found.files for table, found in compacted.items()}
    rejected = report.rows.get(REJECTS, 0)
    seconds = time.monotonic() - job.started
    job.timings["total_s"] = round(seconds, 3)
    driver_retries = Counter(storage.retries_made())
    driver_retries.subtract(job.retries_before)
    retries = dict(staging.retries_recorded(job.folder) + driver_retries)
    units = {"total": len(job.units), "reused": len(resumed.done), "reused_from_runs": list(resumed.runs),
             "earlier": job.reuse}
    processed = sum(u.rows for u in job.units if u.index not in resumed.done)
    cost = ledger_module.cost(figures, reserved(sizing), processed)
    if retries:
        log.info("storage operations retried: %s", retries)
    shared: dict[str, Any] = {
        "run_id": config.run_id,
        "partition": dict(config.partition),
        "tasks": [t.value for t in config.tasks],
        "input": {"location": plan.location.uri, "files": len(plan.files), "rows": plan.num_rows,
                  "fingerprint": plan.fingerprint(job.units)},
        "counts": {"input_rows": plan.num_rows, "accepted_rows": plan.num_rows - rejected, "rejected_rows": rejected,
                   **{f"{table}_rows": report.rows.get(table, 0) for table in files}},
        "models": {task.value: info.manifest_entry() for task, info in job.models.items()},
        "precision": reuse.precision(config),
        "kept_columns": plan.kept_types,
        "rejects_by_reason": dict(report.rejects),
        "label_counts": dict(report.labels),
        "started_at": job.started_at.isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "timings": job.timings,
        "stages": dataclasses.asdict(sizing),
        "units": units,
        "storage_retries": retries,
        "tokens": {"text": report.quality.tokens_sum},
        "forward": ledger_module.forward_figures(figures),
        "dedupe": ledger_module.dedupe_figures(figures, enabled=not config.no_dedupe),
        "cost": cost,
        "versions": package_versions(),
    }
    manifests = {table: Manifest(table=table, rows=report.rows.get(table, 0), files=names, **shared)
                 for table, names in files.items()}
    run = {"run_id": config.run_id, "output": job.destination.uri, "models": shared["models"],
           "precision": shared["precision"], "started_at": shared["started_at"], "finished_at": shared["finished_at"],
           "seconds": round(seconds, 3), "rows_per_second": round(plan.num_rows / seconds, 1) if seconds else 0.0,
           "units": units, "cost": cost, "dedupe": shared["dedupe"]}
    quality, reports = partition_report(report.quality, output=config.output_uri, partition_path=config.partition_path,
                                        run=run, input_rows=plan.num_rows, rejects_by_reason=dict(report.rejects))
    reports[reuse.WORK_RECORD] = reuse.work_record(config.run_id, job.key, reuse.input_files(plan.files), job.units,
                                                   done, {table: found.placed for table, found in compacted.items()})
    job.destination.publish(config.run_id, manifests, reports,
                            merged={table: found.merged for table, found in compacted.items()})
    return RunSummary.of(shared, output=job.destination.uri, partitions=job.destination.partition_uris(list(files)),
                         sample_entities=report.samples, seconds=seconds, shifted=quality.shifted,
                         report=job.destination.report_uri(tables_for(config.tasks)[0], REPORT))

