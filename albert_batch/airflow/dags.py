"""DAGs generated from YAML: one file per corpus, one DAG per file.

Each DAG run handles the partition of its logical date::

    wait_for_input >> run_batch_job >> validate_output >> publish

``validate_output`` also applies the config's ``quality:`` gate to the partition's published figures
(`albert_batch.quality.QualityGate`): a breach fails the task with ``on_breach: fail`` and is a warning
otherwise, the default.

Every key of a config file is listed in `DagSpec` (unknown keys are refused, naming the file), and
the run settings are checked with `albert_batch.RunConfig` when the DAG is parsed. A config that cannot
be used does not take the other configs' DAGs down with it: it becomes a DAG of one task,
``invalid_config``, that fails with the mistake (see `invalid_config_dag`), instead of a job that
fails at night or DAGs that silently vanish.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from albert_batch import iceberg
from albert_batch.config import ResourceConfig, RunConfig
from albert_batch.contract import tables_for
from albert_batch.errors import ConfigError
from albert_batch.quality.figures import QualityGate
from albert_batch.settings import load_yaml
from albert_batch.storage import Location

log = logging.getLogger(__name__)

TEMPLATE = re.compile(r"{{.*?}}")
DAG_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")
RESOURCE_KEYS = tuple(f.name for f in dataclasses.fields(ResourceConfig))
RUN_KEYS = ("precision", "text_column", "id_column", "keep_columns", "allow_pickle_weights", "wait_for_nodes_s",
            "max_error_rate", "max_text_chars", *RESOURCE_KEYS)
JOB_KEYS = ("timeout_hours", "poll_seconds", "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory",
            "entrypoint_resources", "runtime_env")
WAIT_KEYS = ("timeout_hours", "poke_seconds", "marker", "deferrable")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DagSpec:
    """One corpus's DAG. ``input`` and ``partition`` values are Jinja templates (``{{ ds }}``...)."""

    dag_id: str
    input: str
    output: str  # a folder for Hive-partitioned Parquet, or iceberg://CATALOG/NAMESPACE
    start_date: dt.datetime
    output_format: str | None = None  # "hive" or "iceberg"; with "iceberg", output may be just CATALOG/NAMESPACE
    schedule: str | None = "@daily"
    catchup: bool = False
    description: str = ""
    tags: tuple[str, ...] = ()
    max_active_runs: int = 1
    partition: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"dt": "{{ ds }}"})
    tasks: tuple[str, ...] = ("classify", "ner")
    classifier_model: str | None = None
    ner_model: str | None = None
    run: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    ray_conn_id: str = "ray_default"
    aws_conn_id: str = "aws_default"
    job: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    wait_for_input: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    quality: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # `albert_batch.quality.QualityGate`
    retries: int = 2
    retry_delay_minutes: float = 10.0
    source: str = "<code>"

    def __post_init__(self) -> None:
        where = f"DAG config {self.source}"
        if not DAG_ID.fullmatch(str(self.dag_id)):
            raise ConfigError(f"{where}: dag_id {self.dag_id!r} must be letters, digits, '_', '.' or '-'")
        for name, allowed in (("run", RUN_KEYS), ("job", JOB_KEYS), ("wait_for_input", WAIT_KEYS)):
            unknown = sorted(set(getattr(self, name)) - set(allowed))
            if unknown:
                raise ConfigError(f"{where}: unknown {name} setting(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
        try:
            QualityGate.from_mapping(self.quality)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        object.__setattr__(self, "start_date", aware_start_date(self.start_date, where))
        object.__setattr__(self, "output", output_uri(self.output, self.output_format, where))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "tags", tuple(self.tags))
        try:
            self.run_settings(render=lambda text: TEMPLATE.sub("2000-01-01", text))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> DagSpec:
        settings = load_yaml(path)
        connections = settings.pop("connections", None) or {}
        if set(connections) - {"ray", "aws"}:
            raise ConfigError(f"DAG config {path}: connections takes the keys ray and aws")
        if "ray" in connections:
            settings["ray_conn_id"] = connections["ray"]
        if "aws" in connections:
            settings["aws_conn_id"] = connections["aws"]
        known = {f.name for f in dataclasses.fields(cls)} - {"source", "ray_conn_id", "aws_conn_id"} | {"connections"}
        unknown = sorted(set(settings) - known - {"ray_conn_id", "aws_conn_id"})
        if unknown:
            raise ConfigError(f"DAG config {path}: unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(known))}")
        missing = [n for n in ("dag_id", "input", "output", "start_date") if not settings.get(n)]
        if missing:
            raise ConfigError(f"DAG config {path}: missing required setting(s) {', '.join(missing)}")
        return cls(**settings, source=str(path))

    def run_settings(self, render: Any = None) -> dict[str, Any]:
        """The `RunConfig` settings of one run; templates are left for Airflow unless ``render`` is given.
        With ``render`` they are validated too."""
        settings = {"input": self.input, "output": self.output, "tasks": list(self.tasks),
                    "classifier_model": self.classifier_model, "ner_model": self.ner_model,
                    "partition": {str(k): str(v) for k, v in self.partition.items()}, **self.run}
        resources = {k: settings.pop(k) for k in RESOURCE_KEYS if k in settings}
        if resources:
            settings["resources"] = resources
        settings = {k: v for k, v in settings.items() if v is not None}
        if render is not None:
            rendered = {**settings, "input": render(self.input),
                        "partition": {k: render(v) for k, v in settings["partition"].items()}}
            RunConfig(**rendered, run_id="validation")
        return settings

    def table_uris(self) -> dict[str, str]:
        """Each output table as an Asset URI: its folder (file:// or s3://), or iceberg://CATALOG/NAMESPACE/TABLE
        (no Airflow provider registers an Iceberg scheme; this is the form of albert-batch's --output)."""
        if iceberg.is_iceberg(self.output):
            target = iceberg.IcebergTarget.parse(self.output)
            return {t: target.table_uri(t) for t in tables_for(self.tasks)}
        root = Location.parse(self.output, what="output")
        return {t: (f"file://{root.child(t).path}" if root.scheme == "file" else root.child(t).uri)
                for t in tables_for(self.tasks)}


def output_uri(output: str, output_format: str | None, where: str) -> str:
    """A config's output as ``albert-batch run --output`` takes it, checked against ``output_format``."""
    if output_format not in (None, "hive", "iceberg"):
        raise ConfigError(f"{where}: output_format {output_format!r} must be hive or iceberg")
    if output_format == "iceberg" and "://" not in str(output):
        return f"{iceberg.SCHEME}://{str(output).strip('/')}"
    if output_format is not None and iceberg.is_iceberg(output) != (output_format == "iceberg"):
        raise ConfigError(f"{where}: output_format is {output_format} but output {output} is "
                          f"{'an Iceberg' if iceberg.is_iceberg(output) else 'a Hive folder'} location")
    return output


def aware_start_date(value: Any, where: str) -> dt.datetime:
    """A config's ``start_date``: a date (midnight UTC) or a datetime with a time zone."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if not isinstance(value, dt.datetime):
        raise ConfigError(f"{where}: start_date must be a date (2026-11-01) or a datetime with a time zone")
    if value.tzinfo is None:
        raise ConfigError(f"{where}: start_date {value} has no time zone; write e.g. 2026-11-01T00:00:00+00:00")
    return value


def build_dag(spec: DagSpec) -> Any:
    from airflow.sdk import DAG, Asset, Param

    from albert_batch.airflow.operators import PublishPartitionOperator, RayBatchJobOperator, ValidatePartitionOperator
    from albert_batch.airflow.sensors import InputPartitionSensor

    job, wait = dict(spec.job), dict(spec.wait_for_input)
    entrypoint = {k: job[k] for k in JOB_KEYS if k.startswith("entrypoint_") and job.get(k) is not None}
    with DAG(
        auto_register=False,  # dags_from_folder hands the module only the DAGs that passed its checks
        dag_id=spec.dag_id,
        description=spec.description or f"albert-batch: {', '.join(spec.tasks)} for {spec.input} -> {spec.output}",
        schedule=spec.schedule,
        start_date=spec.start_date,
        catchup=spec.catchup,
        max_active_runs=spec.max_active_runs,
        tags=["albert-batch", *spec.tags],
        default_args={"retries": spec.retries, "retry_delay": dt.timedelta(minutes=spec.retry_delay_minutes)},
        params={"force_rerun": Param(False, type="boolean",
                                     description="run the job again even if one already published this partition "
                                                 "from the same input and settings, starting the partition afresh "
                                                 "instead of resuming work a stopped job staged")},
        doc_md=__doc__ + f"\n\nGenerated from `{spec.source}`.",
    ) as dag:
        sensor = InputPartitionSensor(
            task_id="wait_for_input", input_uri=spec.input, aws_conn_id=spec.aws_conn_id,
            marker=wait.get("marker"), deferrable=bool(wait.get("deferrable", True)),
            poke_interval=float(wait.get("poke_seconds", 300)),
            timeout=float(wait.get("timeout_hours", 24)) * 3600, retries=0,
        )
        run = RayBatchJobOperator(
            task_id="run_batch_job", run_settings=spec.run_settings(), ray_conn_id=spec.ray_conn_id,
            aws_conn_id=spec.aws_conn_id, job_timeout=dt.timedelta(hours=float(job.get("timeout_hours", 6))),
            poll_interval=float(job.get("poll_seconds", 30)), entrypoint_resources=entrypoint,
            runtime_env=job.get("runtime_env"), force_rerun="{{ params.force_rerun }}",
        )
        validate = ValidatePartitionOperator(task_id="validate_output", output_uri=spec.output, tasks=spec.tasks,
                                             job=run.output, aws_conn_id=spec.aws_conn_id, quality=dict(spec.quality))
        assets = {table: Asset(uri=uri, name=f"{spec.dag_id}.{table}") for table, uri in spec.table_uris().items()}
        publish = PublishPartitionOperator(task_id="publish", summary=validate.output, table_assets=assets)
        sensor >> run >> validate >> publish
    return dag


def invalid_config_dag(path: Path, error: Exception, taken: Mapping[str, Any]) -> Any:
    """The DAG that stands in for a config that cannot be used: one task, ``invalid_config``, that fails
    with ``error`` (never retried), tagged ``invalid-config``, the mistake in its description.

    It keeps the config's ``dag_id``, ``schedule`` and ``start_date`` where they can be read, so a DAG
    that was running keeps its place in the UI and its scheduled runs fail (and alert) until the file
    is mended; otherwise it is ``invalid_config.<file name>``, run by hand only."""
    from airflow.sdk import DAG

    from albert_batch.airflow.operators import InvalidConfigOperator

    try:
        raw = load_yaml(path)
    except ConfigError:
        raw = {}
    dag_id, schedule, start_date = raw.get("dag_id"), None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    if isinstance(dag_id, str) and DAG_ID.fullmatch(dag_id) and dag_id not in taken:
        try:
            schedule, start_date = raw.get("schedule", "@daily"), aware_start_date(raw.get("start_date"), str(path))
        except ConfigError:
            pass
    else:
        dag_id = "invalid_config." + re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:180]
    message = str(error) if str(path) in str(error) else f"DAG config {path}: {error}"

    def build(schedule: Any) -> Any:
        with DAG(auto_register=False, dag_id=dag_id, schedule=schedule, start_date=start_date, catchup=False,
                 max_active_runs=1, description=message[:500], tags=["albert-batch", "invalid-config"],
                 doc_md=f"**{message}**") as dag:
            InvalidConfigOperator(task_id="invalid_config", message=message, retries=0)
        dag.validate()
        return dag

    try:
        return build(schedule)
    except Exception:  # Airflow refused the schedule: it may be the very mistake
        return build(None)


def config_files(folder: str | Path) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` DAG config in ``folder``, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"DAG config folder {folder} does not exist")
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def dags_from_folder(folder: str | Path) -> dict[str, Any]:
    """A DAG for every config in ``folder``. A config that cannot be used (bad YAML, an unknown or invalid
    setting, a ``dag_id`` another file already uses) is logged and becomes an `invalid_config_dag`; the
    other configs' DAGs are built as usual."""
    dags: dict[str, Any] = {}
    for path in config_files(folder):
        try:
            spec = DagSpec.from_yaml(path)
            if spec.dag_id in dags:
                raise ConfigError(f"DAG config {path}: dag_id {spec.dag_id!r} is already used by another file")
            dag = build_dag(spec)
            try:
                dag.validate()  # what the DAG processor checks after the import, the schedule among it
            except Exception as err:
                raise ConfigError(f"DAG config {path}: Airflow refused the DAG (schedule {spec.schedule!r}): {err}") from err
            dags[spec.dag_id] = dag
        except Exception as err:  # one bad file must not take the other DAGs down
            log.error("DAG config %s cannot be used: %s", path, err)
            dag = invalid_config_dag(path, err, dags)
            dags[dag.dag_id] = dag
    return dags
