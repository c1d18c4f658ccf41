"""DAGs generated from YAML: one file per corpus, one DAG per file.

Each DAG run handles the partition of its logical date::

    wait_for_input >> run_batch_job >> validate_output >> publish

Every key of a config file is listed in `DagSpec` (unknown keys are refused, naming the file), and
the run settings are checked with `albert_batch.RunConfig` when the DAG is parsed, so a mistake shows
as an import error in the Airflow UI instead of a failed run at night.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from albert_batch.config import RunConfig, load_yaml
from albert_batch.errors import ConfigError
from albert_batch.storage import Location

TEMPLATE = re.compile(r"{{.*?}}")
RUN_KEYS = ("precision", "text_column", "id_column", "model_actors", "num_gpus_per_actor", "allow_pickle_weights")
JOB_KEYS = ("timeout_hours", "poll_seconds", "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory",
            "entrypoint_resources", "runtime_env")
WAIT_KEYS = ("timeout_hours", "poke_seconds", "marker", "deferrable")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DagSpec:
    """One corpus's DAG. ``input`` and ``partition`` values are Jinja templates (``{{ ds }}``...)."""

    dag_id: str
    input: str
    output: str
    start_date: dt.datetime
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
    retries: int = 2
    retry_delay_minutes: float = 10.0
    source: str = "<code>"

    def __post_init__(self) -> None:
        where = f"DAG config {self.source}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", str(self.dag_id)):
            raise ConfigError(f"{where}: dag_id {self.dag_id!r} must be letters, digits, '_', '.' or '-'")
        for name, allowed in (("run", RUN_KEYS), ("job", JOB_KEYS), ("wait_for_input", WAIT_KEYS)):
            unknown = sorted(set(getattr(self, name)) - set(allowed))
            if unknown:
                raise ConfigError(f"{where}: unknown {name} setting(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
        start = self.start_date
        if isinstance(start, dt.date) and not isinstance(start, dt.datetime):
            start = dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC)
        if not isinstance(start, dt.datetime):
            raise ConfigError(f"{where}: start_date must be a date (2026-11-01) or a datetime with a time zone")
        if start.tzinfo is None:
            raise ConfigError(f"{where}: start_date {start} has no time zone; write e.g. 2026-11-01T00:00:00+00:00")
        object.__setattr__(self, "start_date", start)
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
        resources = {k: settings.pop(k) for k in ("model_actors", "num_gpus_per_actor") if k in settings}
        if resources:
            settings["resources"] = resources
        settings = {k: v for k, v in settings.items() if v is not None}
        if render is not None:
            rendered = {**settings, "input": render(self.input),
                        "partition": {k: render(v) for k, v in settings["partition"].items()}}
            RunConfig(**rendered, run_id="validation")
        return settings

    def table_uris(self) -> dict[str, str]:
        """Each output table's root as an Asset URI."""
        root = Location.parse(self.output, what="output")
        tables = [{"classify": "classifications", "ner": "entities"}[t] for t in self.tasks] + ["rejects"]
        return {t: (f"file://{root.child(t).path}" if root.scheme == "file" else root.child(t).uri) for t in tables}


def build_dag(spec: DagSpec) -> Any:
    from airflow.sdk import DAG, Asset, Param

    from albert_batch.airflow.operators import PublishPartitionOperator, RayBatchJobOperator, ValidatePartitionOperator
    from albert_batch.airflow.sensors import InputPartitionSensor

    job, wait = dict(spec.job), dict(spec.wait_for_input)
    entrypoint = {k: job[k] for k in JOB_KEYS if k.startswith("entrypoint_") and job.get(k) is not None}
    with DAG(
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
                                                 "from the same input and settings")},
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
                                             job=run.output, aws_conn_id=spec.aws_conn_id)
        assets = {table: Asset(uri=uri, name=f"{spec.dag_id}.{table}") for table, uri in spec.table_uris().items()}
        publish = PublishPartitionOperator(task_id="publish", summary=validate.output, table_assets=assets)
        sensor >> run >> validate >> publish
    return dag


def specs_in(folder: str | Path) -> Iterator[DagSpec]:
    """Every ``*.yaml``/``*.yml`` DAG config in ``folder``, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"DAG config folder {folder} does not exist")
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        yield DagSpec.from_yaml(path)


def dags_from_folder(folder: str | Path) -> dict[str, Any]:
    """Build a DAG for every config in ``folder``; two configs with one dag_id are refused."""
    dags: dict[str, Any] = {}
    for spec in specs_in(folder):
        if spec.dag_id in dags:
            raise ConfigError(f"DAG config {spec.source}: dag_id {spec.dag_id!r} is already used by another file")
        dags[spec.dag_id] = build_dag(spec)
    return dags
