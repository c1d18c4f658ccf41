"""Operators: run one partition as a Ray job, validate what it published, publish it as Assets.

Each does one thing by calling the library or a hook; the waiting happens in `albert_batch.airflow.triggers`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from albert_batch.airflow.hooks import AwsS3Hook, RayJob, RayJobHook
from albert_batch.airflow.triggers import RayJobTrigger
from albert_batch.errors import ExitCode, JobFailed

# Ray job metadata keys: the partition a job writes is its identity, whoever submitted it.
META_OUTPUT = "albert_batch.output"
META_PARTITION = "albert_batch.partition"
META_FINGERPRINT = "albert_batch.fingerprint"
META_RUN_ID = "albert_batch.run_id"
META_AIRFLOW = "albert_batch.airflow"
ENTRYPOINT_DEFAULTS = {"entrypoint_num_cpus": 0}  # the driver only coordinates; its CPU belongs to the stages


def submission_id(dag_id: str, partition_path: str, try_number: int, taken: set[str]) -> str:
    """``albert-batch.<dag>.<partition>.try<N>``: readable, derived from the DAG, the date and the try, and
    made unique against ``taken`` (ids left by an earlier Airflow database, say)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dag_id}.{partition_path}".replace("/", ".")).strip("_.")
    base = f"albert-batch.{slug}"[:110] + f".try{try_number}"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}.{n}"
    return candidate


def choose_job(jobs: Sequence[RayJob], output: str, partition_path: str, fingerprint: str,
               *, force: bool) -> tuple[str, RayJob | None]:
    """What to do for one partition, given the cluster's jobs: ``("attach", job)`` to a job for it that is
    still going, ``("reuse", job)`` the partition's latest succeeded job if it ran on the same input and
    settings (unless ``force``; an older one's output was published over since), else ``("submit", None)``.
    So a retry or a cleared task never runs two jobs for one partition."""
    mine = sorted((j for j in jobs if j.metadata.get(META_OUTPUT) == output
                   and j.metadata.get(META_PARTITION) == partition_path),
                  key=lambda j: j.start_time_ms or 0, reverse=True)
    for job in mine:
        if job.active:
            return "attach", job
    latest = next((job for job in mine if job.status == "SUCCEEDED"), None)
    if not force and latest is not None and latest.metadata.get(META_FINGERPRINT) == fingerprint:
        return "reuse", latest
    return "submit", None


def _truthy(value: object) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


class RayBatchJobOperator(BaseOperator):
    """Run ``albert-batch run`` for one partition as a Ray job, through the Job Submission API.

    Before submitting it lists the cluster's jobs: it attaches to one still running for the same output
    partition, and reuses one that succeeded with the same fingerprint (the command line plus the input
    files' names, sizes and modification times) unless ``force_rerun``. A job it submits resumes the work
    an earlier job of the partition staged (a try that timed out, a job stopped), unless ``force_rerun``
    asks for a fresh start. It then defers to `RayJobTrigger` until the job ends or ``job_timeout`` passes
    (the job is then stopped). Returns ``{"submission_id", "run_id", "partition", "reused"}``; the run id
    is the published manifests' (rows of reused work carry the id of the run that computed them).
    """

    template_fields = ("run_settings", "force_rerun")
    template_fields_renderers: ClassVar[dict[str, str]] = {"run_settings": "json"}
    ui_color = "#e8f0fe"

    def __init__(self, *, run_settings: Mapping[str, Any], ray_conn_id: str = RayJobHook.default_conn_name,
                 aws_conn_id: str | None = AwsS3Hook.default_conn_name, job_timeout: dt.timedelta = dt.timedelta(hours=6),
                 poll_interval: float = 30.0, entrypoint_resources: Mapping[str, Any] | None = None,
                 runtime_env: Mapping[str, Any] | None = None, force_rerun: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_settings = dict(run_settings)
        self.ray_conn_id = ray_conn_id
        self.aws_conn_id = aws_conn_id
        self.job_timeout = job_timeout
        self.poll_interval = poll_interval
        self.entrypoint_resources = {**ENTRYPOINT_DEFAULTS, **(entrypoint_resources or {})}
        self.runtime_env = dict(runtime_env or {})
        self.force_rerun = force_rerun
        self._submitted: str | None = None
        self._published: dict[str, Any] | None = None  # the result, for OpenLineage

    def execute(self, context: Any) -> dict[str, Any]:
        from albert_batch.cli import run_argv
        from albert_batch.config import RunConfig

        config = RunConfig(**{**self.run_settings, "run_id": "pending"})  # validates before anything runs
        output, partition_path = config.output_uri, config.partition_path
        command = run_argv(config)
        fingerprint = self._fingerprint(config, command)
        hook = RayJobHook(self.ray_conn_id)
        jobs = hook.list_jobs()
        action, job = choose_job(jobs, output, partition_path, fingerprint, force=_truthy(self.force_rerun))
        if action == "reuse":
            assert job is not None
            self.log.info("Ray job %s already published %s of %s from the same input and settings; reusing it "
                          "(set the DAG param force_rerun to run again)", job.submission_id, partition_path, output)
            return self._result(job.submission_id, job.metadata.get(META_RUN_ID, job.submission_id), partition_path,
                                reused=True)
        if action == "attach":
            assert job is not None
            self.log.info("Ray job %s is already %s for %s of %s; attaching to it instead of starting another",
                          job.submission_id, job.status, partition_path, output)
            started = dt.datetime.fromtimestamp((job.start_time_ms or 0) / 1000, dt.UTC)
            self._defer(job.submission_id, started)
        ti = context["ti"]
        sid = submission_id(ti.dag_id, partition_path, ti.try_number, {j.submission_id for j in jobs})
        # A retry's job resumes the work an earlier try staged; force_rerun starts the partition afresh on the
        # task's first try (its retries then resume that work).
        fresh = _truthy(self.force_rerun) and ti.try_number == 1
        entrypoint = shlex.join(run_argv(dataclasses.replace(config, run_id=sid, fresh=fresh)))
        metadata = {META_OUTPUT: output, META_PARTITION: partition_path, META_FINGERPRINT: fingerprint,
                    META_RUN_ID: sid, META_AIRFLOW: f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/try{ti.try_number}"}
        self.log.info("submitting Ray job %s: %s", sid, entrypoint)
        self._submitted = hook.submit(entrypoint=entrypoint, submission_id=sid, metadata=metadata,
                                      runtime_env=self.runtime_env, entrypoint_resources=self.entrypoint_resources)
        self._defer(sid, dt.datetime.now(dt.UTC))

    def _defer(self, sid: str, started: dt.datetime) -> NoReturn:
        deadline = (started + self.job_timeout).isoformat()
        self.defer(trigger=RayJobTrigger(submission_id=sid, ray_conn_id=self.ray_conn_id, deadline=deadline,
                                         poll_interval=self.poll_interval),
                   method_name="execute_complete",
                   timeout=self.job_timeout + dt.timedelta(minutes=10))  # a backstop; the trigger stops the job itself

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        sid, status = event["submission_id"], event["status"]
        if status == "SUCCEEDED":
            self.log.info("Ray job %s succeeded; last lines of its log:\n%s", sid, event.get("log_tail", ""))
            from albert_batch.config import RunConfig

            # A resumed task is a new process: the settings are read again, with the job's run id.
            partition_path = RunConfig(**{**self.run_settings, "run_id": sid}).partition_path
            return self._result(sid, sid, partition_path, reused=False)
        err = JobFailed(f"Ray job {sid} ended {status}: {event.get('message') or 'no message'}\n"
                        f"--- last lines of its log ---\n{event.get('log_tail', '')}")
        if event.get("exit_code") == ExitCode.UNUSABLE:
            raise AirflowFailException(f"{err} (exit code {ExitCode.UNUSABLE.value}: unusable input or settings; "
                                       "not retried)") from err
        raise err

    def on_kill(self) -> None:
        """Killed before deferring, right after submitting: stop the job it started (a deferred task is
        stopped by `RayJobTrigger.on_kill`)."""
        if self._submitted:
            self.log.warning("task killed; stopping Ray job %s", self._submitted)
            RayJobHook(self.ray_conn_id).stop(self._submitted)

    def _fingerprint(self, config: Any, command: list[str]) -> str:
        from albert_batch import storage

        loc = config.input_location
        with storage.s3_settings(AwsS3Hook(self.aws_conn_id).settings()):
            files = [(f.path, f.size, f.mtime_ns) for f in storage.list_files(loc)] if storage.exists(loc) else []
        # ``command`` carries the placeholder run id, the same for every job, so it needs no stripping.
        return hashlib.sha256(json.dumps([command, files], default=str).encode()).hexdigest()[:16]

    def _result(self, sid: str, run_id: str, partition_path: str, *, reused: bool) -> dict[str, Any]:
        self._published = {"submission_id": sid, "run_id": run_id, "partition": partition_path, "reused": reused}
        return self._published

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage's view of the job (apache-airflow-providers-openlineage calls this when it is installed
        and a transport is configured): the input, the output tables with their rows, the run id."""
        from albert_batch.airflow.lineage import operator_lineage, published_rows
        from albert_batch.config import RunConfig

        run_id = (self._published or {}).get("run_id")
        config = RunConfig(**{**self.run_settings, "run_id": run_id or "pending"})
        rows = published_rows(config, run_id, AwsS3Hook(self.aws_conn_id).settings()) if run_id else {}
        return operator_lineage(config, run_id, rows)


class ValidatePartitionOperator(BaseOperator):
    """Check the partition a job published (see `albert_batch.pipeline.validate.validate_partition`), then its
    quality figures against ``quality`` (`albert_batch.quality.QualityGate`'s fields; a breach fails the
    task, not retried, when ``on_breach`` is ``fail``, and is logged as a warning otherwise). ``job`` is
    `RayBatchJobOperator`'s result. Returns the compact, secret-free run summary, with the report's location
    and the gate's breaches."""

    template_fields = ("output_uri", "job")

    def __init__(self, *, output_uri: str, tasks: Sequence[str], job: Any,
                 aws_conn_id: str | None = AwsS3Hook.default_conn_name, quality: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from albert_batch.quality.figures import QualityGate

        self.output_uri = output_uri
        self.tasks = list(tasks)
        self.job = job
        self.aws_conn_id = aws_conn_id
        self.gate = QualityGate.from_mapping(quality)

    def execute(self, context: Any) -> dict[str, Any]:
        from albert_batch import storage
        from albert_batch.contract import tables_for
        from albert_batch.pipeline.validate import validate_partition
        from albert_batch.quality import REPORT
        from albert_batch.quality import store as quality_store

        partition = self.job["partition"]
        with storage.s3_settings(AwsS3Hook(self.aws_conn_id).settings()):
            summary = validate_partition(self.output_uri, partition, self.tasks, run_id=self.job["run_id"]).as_dict()
            figures = quality_store.read_figures(self.output_uri, partition)
            report = quality_store.report_folder(self.output_uri, tables_for(self.tasks)[0], partition).child(REPORT)
        self.log.info("%s of %s is complete and keeps the contract: %s", summary["partition"], self.output_uri,
                      json.dumps({k: summary[k] for k in ("run_id", "input_rows", "rejected_rows", "tables")}))
        self.log.info("quality report of %s: %s", partition, report.uri)
        breaches = self.gate.breaches(figures)
        if breaches and self.gate.on_breach == "fail":
            raise AirflowFailException(f"{partition} of {self.output_uri} breaches its quality gate: "
                                       f"{'; '.join(breaches)} (report: {report.uri})")
        for breach in breaches:
            self.log.warning("quality gate (on_breach: warn): %s", breach)
        return {**summary, "submission_id": self.job["submission_id"], "reused_job": self.job["reused"],
                "report": report.uri, "quality_breaches": breaches, "drift": figures.drift}


class PublishPartitionOperator(BaseOperator):
    """Announce a validated partition: an Asset event for each output table (``table_assets``, which are
    also its ``outlets``) carrying the partition, run id and row count, so DAGs scheduled on those Assets
    run next. Returns the run summary for XCom."""

    template_fields = ("summary",)

    def __init__(self, *, summary: Any, table_assets: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(outlets=list(table_assets.values()), **kwargs)
        self.summary = summary
        self.table_assets = dict(table_assets)

    def execute(self, context: Any) -> dict[str, Any]:
        summary = self.summary
        for name, asset in self.table_assets.items():
            table = summary["tables"][name]
            context["outlet_events"][asset].extra = {"partition": summary["partition"], "run_id": summary["run_id"],
                                                     "rows": table["rows"], "uri": table["uri"]}
        self.log.info("published %s (run %s): %s", summary["partition"], summary["run_id"],
                      ", ".join(f"{n} {t['rows']} rows" for n, t in summary["tables"].items()))
        return summary


class InvalidConfigOperator(BaseOperator):
    """The one task of a DAG whose config cannot be used (`albert_batch.airflow.dags.invalid_config_dag`):
    it fails, never retried, with the config's mistake."""

    ui_color = "#f4a6a6"

    def __init__(self, *, message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message

    def execute(self, context: Any) -> NoReturn:
        raise AirflowFailException(self.message)
