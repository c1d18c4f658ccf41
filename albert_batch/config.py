"""Typed, validated settings for a batch run. YAML files, command-line flags and Airflow all build the
same frozen `RunConfig`; every check happens at construction, with a message that names the setting. Each
setting is declared once, here, with its flag's help text and its checks: the CLI, the YAML loader and the
Airflow DAG factory derive everything else from these fields."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from albert_batch import iceberg
from albert_batch.contract import Task, parse_kept_columns, parse_partition, partition_path
from albert_batch.errors import ConfigError
from albert_batch.settings import build, load_yaml, setting
from albert_batch.storage import Location


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    # Opt-in, CPUs only: the linear layers' weights in int8, activations quantised per pass (torch's dynamic
    # quantisation); faster than fp32 on CPUs without AMX, at a measured cost in agreement (BENCHMARKS.md).
    INT8 = "int8"


RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
COLUMN = re.compile(r"^[^\x00-\x1f\x7f]+$")


def cache_home() -> Path:
    """Where albert-batch keeps downloaded models and run logs: ``$ALBERT_BATCH_CACHE``, or
    ``~/.cache/albert-batch``."""
    return Path(os.environ.get("ALBERT_BATCH_CACHE") or Path.home() / ".cache" / "albert-batch")


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def today_partition() -> tuple[tuple[str, str], ...]:
    return (("dt", dt.datetime.now(dt.UTC).date().isoformat()),)


def _parse_tasks(value: Any) -> tuple[Task, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    tasks = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        try:
            task = Task(name)
        except ValueError:
            raise ConfigError(f"unknown task {name!r}; choose from {', '.join(t.value for t in Task)}") from None
        if task not in tasks:
            tasks.append(task)
    if not tasks:
        raise ConfigError("tasks is empty; choose classify, ner or both")
    return tuple(tasks)


def _parse_resources(value: Any) -> tuple[tuple[str, float], ...]:
    """Custom Ray resources: a mapping, ``["name=amount", ...]`` or pairs."""
    items = value.items() if isinstance(value, Mapping) else [
        tuple(item.split("=", 1)) if isinstance(item, str) else tuple(item) for item in value]
    pairs = []
    for item in items:
        if len(item) != 2 or not str(item[0]).strip():
            raise ConfigError(f"resources.model_actor_resources: {'='.join(map(str, item))!r} must look like NAME=AMOUNT")
        name, amount = str(item[0]).strip(), item[1]
        if name in ("CPU", "GPU", "memory"):
            raise ConfigError(f"resources.model_actor_resources: {name} is set by num_cpus_per_actor, "
                              "num_gpus_per_actor or Ray itself, not here")
        try:
            amount = float(amount)
        except (TypeError, ValueError):
            raise ConfigError(f"resources.model_actor_resources: the amount of {name} must be a number, "
                              f"not {amount!r}") from None
        if amount <= 0:
            raise ConfigError(f"resources.model_actor_resources: the amount of {name} must be positive")
        pairs.append((name, amount))
    return tuple(sorted(pairs))


@dataclass(frozen=True)
class ActorRange:
    """How many model actors: exactly ``min`` (``N``), or from ``min`` to ``max`` (``MIN..MAX``), a pool that
    grows while work waits and the cluster (or its autoscaler) has room, and shrinks when work runs out."""

    min: int
    max: int

    @classmethod
    def parse(cls, value: Any) -> ActorRange:
        """``3``, ``"3"``, ``"1..4"``, ``[1, 4]`` or ``{min: 1, max: 4}``."""
        if isinstance(value, ActorRange):
            return value
        bounds = ((value.get("min"), value.get("max")) if isinstance(value, Mapping) else tuple(value)
                  if isinstance(value, (list, tuple)) else str(value).split("..", 1) if ".." in str(value) else (value,) * 2)
        numbers = [int(b) for b in bounds if not isinstance(b, bool) and str(b).strip().isdigit()]
        if len(bounds) != 2 or len(numbers) != 2 or numbers[0] < 1 or numbers[1] < numbers[0]:
            raise ConfigError(f"resources.model_actors must be a number N or a range MIN..MAX (at least 1, MIN no "
                              f"larger than MAX), not {value!r}")
        return cls(*numbers)

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def __str__(self) -> str:
        return str(self.min) if self.fixed else f"{self.min}..{self.max}"


@dataclass(frozen=True, kw_only=True)
class ResourceConfig:
    """How the model stage is laid out on the cluster. ``None`` means: derive from the cluster's resources."""

    model_actors: ActorRange | None = setting(
        None, metavar="N|MIN..MAX",
        help="model actors: N, or MIN..MAX for a pool that grows while work waits and the cluster (or its "
             "autoscaler) has room, and shrinks when work runs out (default: from cluster resources)")
    num_gpus_per_actor: float = setting(0.0, metavar="X", type=float,
                                        help="GPUs per model actor, fractions allowed (default: 0)")
    num_cpus_per_actor: float | None = setting(None, metavar="X", type=float,
                                               help="CPUs per model actor (default: from cluster resources)")
    tokenizer_actors: int | None = setting(None, metavar="N", type=int,
                                           help="tokenizer actors; 0: the model actors tokenize their own batches "
                                                "(default: 0 on CPUs, up to six per GPU)")
    batch_size: int | None = setting(None, metavar="ROWS", type=int, help="rows per model batch (default: 4096)")
    max_tokens_per_forward: int | None = setting(
        None, metavar="TOKENS", type=int, help="tokens per forward pass, padding included (default: 2048 on CPUs)")
    ner_window_overlap: int = setting(128, metavar="TOKENS", type=int,
                                      help="overlap of the windows a long NER text is cut into (default: 128)")
    rows_per_file: int | None = setting(
        None, metavar="ROWS", type=int,
        help="the most rows a write gathers into a staged file (default: 100000); a write also starts once a unit "
             "of work has all its rows, and after --flush-seconds")
    flush_seconds: float = setting(
        60.0, metavar="SECONDS", type=float,
        help="the longest a processed row waits to be staged (default: 60): a stopped run loses at most this much "
             "of the model's work, besides what is in flight")
    file_size_mib: int | None = setting(
        None, metavar="MIB", type=int,
        help="the size a table's staged files are merged up to when they are published (default: 256, or an Iceberg "
             "table's write.target-file-size-bytes where the table sets it)")
    unit_mib: float | None = setting(
        None, metavar="MIB", type=float,
        help="the most uncompressed input a unit of work holds (default: 16): what a read task reads, and what "
             "the next run redoes whole when the run stops or one of the unit's files changes")
    model_actor_resources: tuple[tuple[str, float], ...] = setting(
        (), metavar="NAME=AMOUNT", action="append",
        help="a custom Ray resource each model actor needs, e.g. model_node=1 to keep model actors on the nodes "
             "that offer it; repeat for several")

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_actor_resources", _parse_resources(self.model_actor_resources))
        if self.model_actors is not None:
            object.__setattr__(self, "model_actors", ActorRange.parse(self.model_actors))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            number_type = f.metadata.get("type")  # int, or float for CPU and GPU shares
            if number_type is None or value is None or (isinstance(value, number_type) and not isinstance(value, bool)):
                continue
            try:
                object.__setattr__(self, f.name, number_type(value))
            except (TypeError, ValueError):
                raise ConfigError(f"resources.{f.name} must be a number, not {value!r}") from None
        if self.tokenizer_actors is not None and self.tokenizer_actors < 0:
            raise ConfigError("resources.tokenizer_actors must be 0 (the model actors tokenize) or more")
        if self.num_gpus_per_actor < 0 or (self.num_gpus_per_actor > 1 and self.num_gpus_per_actor % 1):
            raise ConfigError("resources.num_gpus_per_actor must be a fraction of one GPU (0 < x <= 1) or whole GPUs")
        if self.num_cpus_per_actor is not None and self.num_cpus_per_actor <= 0:
            raise ConfigError("resources.num_cpus_per_actor must be positive")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("resources.batch_size must be at least 1")
        if self.max_tokens_per_forward is not None and self.max_tokens_per_forward < 512:
            raise ConfigError("resources.max_tokens_per_forward must be at least 512 (one full-length sequence)")
        if self.rows_per_file is not None and self.rows_per_file < 1:
            raise ConfigError("resources.rows_per_file must be at least 1")
        if self.file_size_mib is not None and self.file_size_mib < 1:
            raise ConfigError("resources.file_size_mib must be at least 1")
        if self.unit_mib is not None and not self.unit_mib > 0:
            raise ConfigError("resources.unit_mib must be a positive number of MiB")
        if not self.flush_seconds > 0:
            raise ConfigError("resources.flush_seconds must be a positive number of seconds")
        if not 0 <= self.ner_window_overlap <= 256:
            raise ConfigError("resources.ner_window_overlap must be between 0 and 256 tokens")


def check_precision(value: Precision | str, *, gpu: bool, gpu_setting: str) -> Precision:
    """``value`` as a Precision, refused with a ConfigError where the models' device cannot run it. The
    batch job's settings and `albert_batch.load_predictor` both ask here, so one precision means the same
    everywhere; ``gpu_setting`` names the caller's setting that asks for a GPU."""
    try:
        precision = Precision(str(value).lower())
    except ValueError:
        raise ConfigError(f"precision {value!r} is not one of {', '.join(p.value for p in Precision)}") from None
    if precision is Precision.FP16 and not gpu:
        raise ConfigError(f"precision fp16 needs {gpu_setting}; on CPUs use bf16 or fp32")
    if precision is Precision.INT8 and gpu:
        raise ConfigError(f"precision int8 runs on CPUs only (its int8 kernels are CPU kernels), not with {gpu_setting}; "
                          "on GPUs use auto, bf16 or fp16")
    return precision


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one batch run needs. Build it directly, or with `RunConfig.from_sources`."""

    input: str = setting(metavar="URI", help="Parquet file or folder: local path, file:// or s3://")
    output: str = setting(metavar="URI", help="output root: local path, file:// or s3:// for Hive-partitioned Parquet "
                          "folders, or iceberg://CATALOG/NAMESPACE for Iceberg tables")
    tasks: tuple[Task, ...] = setting((Task.CLASSIFY, Task.NER), metavar="classify,ner",
                                      help="comma-separated tasks (default: classify,ner)")
    classifier_model: str | None = setting(None, metavar="URI", help="model folder, s3:// prefix or hub id[@revision]")
    ner_model: str | None = setting(None, metavar="URI", help="model folder, s3:// prefix or hub id[@revision]")
    text_column: str = setting("text", metavar="NAME", help="text column (default: text)")
    id_column: str = setting("id", metavar="NAME", help="id column (default: id)")
    keep_columns: tuple[str, ...] = setting((), metavar="NAME,...", help="comma-separated input columns copied, with "
                                            "their types, into every output table, rejects included (default: none)")
    partition: tuple[tuple[str, str], ...] = setting(
        default_factory=today_partition, metavar="KEY=VALUE", action="append",
        help="output partition; repeat for several keys (default: dt=<today, UTC>)")
    precision: Precision = setting(Precision.AUTO, choices=[p.value for p in Precision],
                                   help="model precision: auto, fp32, bf16, fp16 (GPU actors) or int8 (CPU actors, "
                                        "opt-in) (default: auto)")
    run_id: str = setting(default_factory=new_run_id, metavar="ID",
                          help="run id recorded in every row (default: generated)")
    ray_address: str | None = setting(
        None, metavar="ADDRESS", help="'auto' or host:port to join a cluster (default: embedded local Ray, or RAY_ADDRESS)")
    allow_pickle_weights: bool = setting(False, action="store_true",
                                         help="accept pytorch_model.bin weights (runs pickle: only for models you trust)")
    fresh: bool = setting(False, action="store_true",
                          help="start afresh: reuse no earlier work on the partition (staged by a stopped run, or published)")
    no_dedupe: bool = setting(False, action="store_true", help="run every row's text through the model, repeats "
                              "too (default: identical texts are tokenized and run once, their results copied)")
    wait_for_nodes_s: float = setting(
        600.0, metavar="SECONDS", type=float,
        help="how long to wait for a node that can host a model actor, before failing: at the start, for the first "
             "one an autoscaler adds; later, for one to replace lost nodes (default: 600)")
    max_error_rate: float = setting(
        0.01, metavar="SHARE", type=float,
        help="the largest share of input rows, rounded up to whole rows, that may be rejected as processing errors "
             "(a stage raised an error for them) before the run fails without publishing (default: 0.01); 0 fails "
             "on the first one")
    max_text_chars: int | None = setting(
        None, metavar="CHARS", type=int,
        help="reject texts longer than this many characters as too_long (default: off: long texts are processed "
             "whole, NER in windows)")
    resources: ResourceConfig = field(default_factory=ResourceConfig)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "tasks", _parse_tasks(self.tasks))
        set_(self, "partition", parse_partition(self.partition))
        if isinstance(self.resources, Mapping):
            set_(self, "resources", build(ResourceConfig, self.resources, "resources"))
        input_loc = Location.parse(self.input, what="input")
        if iceberg.is_iceberg(self.output):
            iceberg.IcebergTarget.parse(self.output)
        elif input_loc.contains(output_loc := Location.parse(self.output, what="output")):
            raise ConfigError(f"output {output_loc} is the input location or inside it; choose a separate output")
        for name in ("text_column", "id_column"):
            value = getattr(self, name)
            if not isinstance(value, str) or not COLUMN.match(value):
                raise ConfigError(f"{name} must be a non-empty column name")
        if self.text_column == self.id_column:
            raise ConfigError("text_column and id_column must be different columns")
        set_(self, "keep_columns", parse_kept_columns(self.keep_columns, self.id_column, self.text_column, self.partition))
        if Task.CLASSIFY in self.tasks and not self.classifier_model:
            raise ConfigError("tasks include classify but no classifier_model (--classifier-model) is set")
        if Task.NER in self.tasks and not self.ner_model:
            raise ConfigError("tasks include ner but no ner_model (--ner-model) is set")
        if not RUN_ID.match(str(self.run_id)):
            raise ConfigError("run_id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        set_(self, "precision", check_precision(self.precision, gpu=self.resources.num_gpus_per_actor > 0,
                                                gpu_setting="GPU actors (resources.num_gpus_per_actor > 0)"))
        try:
            set_(self, "wait_for_nodes_s", float(self.wait_for_nodes_s))
        except (TypeError, ValueError):
            raise ConfigError(f"wait_for_nodes_s must be a number of seconds, not {self.wait_for_nodes_s!r}") from None
        if self.wait_for_nodes_s <= 0:
            raise ConfigError("wait_for_nodes_s must be positive")
        for name, kind in (("max_error_rate", float), ("max_text_chars", int)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                try:
                    set_(self, name, kind(value))
                except (TypeError, ValueError):
                    raise ConfigError(f"{name} must be a number, not {value!r}") from None
        if not 0 <= self.max_error_rate <= 1:
            raise ConfigError("max_error_rate must be a share of the input rows, from 0 to 1")
        if self.max_text_chars is not None and self.max_text_chars < 1:
            raise ConfigError("max_text_chars must be at least 1")
        if self.ray_address is not None and not str(self.ray_address).strip():
            raise ConfigError("ray_address is empty; leave it out for an embedded local Ray")

    @property
    def input_location(self) -> Location:
        return Location.parse(self.input, what="input")

    @property
    def output_uri(self) -> str:
        """The output in its normal form: iceberg://CATALOG/NAMESPACE, or the Hive output root's URI."""
        if iceberg.is_iceberg(self.output):
            return iceberg.IcebergTarget.parse(self.output).uri
        return self.output_location.uri

    @property
    def output_location(self) -> Location:
        """The output root of Hive folders (an ``iceberg://`` output has none)."""
        return Location.parse(self.output, what="output")

    @property
    def partition_path(self) -> str:
        """The Hive partition folder, e.g. ``dt=2026-11-28``."""
        return partition_path(self.partition)

    def model_for(self, task: Task) -> str:
        uri = self.classifier_model if task is Task.CLASSIFY else self.ner_model
        assert uri is not None  # guaranteed by __post_init__
        return uri

    @classmethod
    def from_sources(cls, config_file: str | Path | None = None, **overrides: Any) -> RunConfig:
        """Settings from a YAML file (if any), then ``overrides`` (e.g. command-line flags) on top.

        Overrides that are ``None`` are ignored, so unset flags never hide the file's values."""
        settings: dict[str, Any] = {}
        if config_file is not None:
            settings = load_yaml(config_file)
        resources = dict(settings.pop("resources", None) or {})
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "resources":
                resources.update(value)
            else:
                settings[key] = value
        if resources:
            settings["resources"] = resources
        return build(cls, settings, "config")
