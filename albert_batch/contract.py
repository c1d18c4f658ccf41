"""The output contract, in one place: the tasks, the tables they write, their Arrow schemas, the reject
reasons, what a partition's keys and values may be, the marker files of a published partition and the
fields of its manifest.

    OUTPUT/classifications/<partition>/part-*.parquet  id, label, score, scores, truncated, model, run_id, processed_at
    OUTPUT/entities/<partition>/part-*.parquet         id, entities, model, run_id, processed_at
    OUTPUT/rejects/<partition>/part-*.parquet          id, reason, run_id, detail
                                                       (each then the input columns the run carries, if any)
    OUTPUT/<table>/<partition>/_manifest.json          `Manifest`
    OUTPUT/<table>/<partition>/_SUCCESS                written last

Each task is one `TaskOutput`: the model stage produces its result columns, the writer turns them into
its table, and validation checks the table against its schema. Importing this module needs only pyarrow,
so consumers and Airflow's validation can use it without Ray or torch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa

from albert_batch.errors import ConfigError


class Task(StrEnum):
    CLASSIFY = "classify"
    NER = "ner"


class RejectReason(StrEnum):
    """Why an input row has no results; the ``reason`` column of the rejects table."""

    NULL_ID = "null_id"
    NULL_TEXT = "null_text"
    BLANK_TEXT = "blank_text"
    INVALID_UTF8 = "invalid_utf8"  # the text's (or a binary id's) bytes are not UTF-8
    TOO_LONG = "too_long"  # longer than the run's max_text_chars
    # A stage raised an error for this row's data (``detail`` says which); the rest of its batch went on.
    PROCESSING_ERROR = "processing_error"


# Marker and bookkeeping files. Consumers skip names that start with "_" (Spark, Hive, DuckDB globs).
STAGING_DIR = "_staging"  # OUTPUT/_staging/<run_id>/<table>/part-*.parquet until the run publishes
COMMIT = "_COMMIT.json"  # in a run's staging folder: the point of no return of its publication
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"

CLASSIFICATIONS = "classifications"
ENTITIES = "entities"
REJECTS = "rejects"

SCORES_TYPE = pa.map_(pa.string(), pa.float64())
ENTITY_TYPE = pa.struct(
    [("label", pa.string()), ("text", pa.string()), ("start", pa.int32()), ("end", pa.int32()), ("score", pa.float64())]
)
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
# Columns every result row carries after its task's own: which model, which run, and when.
PROVENANCE_FIELDS = (
    pa.field("model", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("processed_at", TIMESTAMP_TYPE, nullable=False),
)
# ``detail``: for processing_error, the error's type and the first line of its message; null otherwise. Last,
# so that partitions written before it existed read alongside (a table's schema evolves by adding it).
REJECT_FIELDS = (pa.field("reason", pa.string(), nullable=False), pa.field("run_id", pa.string(), nullable=False),
                 pa.field("detail", pa.string()))


@dataclass(frozen=True)
class TaskOutput:
    """What one task writes: its table and the result columns its predictor gives for every accepted row
    (a predictor's result is a dict with exactly these keys). ``sampled`` is a list column of which the run
    summary shows a few non-empty rows."""

    task: Task
    table: str
    results: tuple[pa.Field, ...]
    sampled: str | None = None

    def schema(self, id_type: pa.DataType) -> pa.Schema:
        return pa.schema([pa.field("id", id_type, nullable=False), *self.results, *PROVENANCE_FIELDS])


TASK_OUTPUTS: dict[Task, TaskOutput] = {
    Task.CLASSIFY: TaskOutput(
        task=Task.CLASSIFY,
        table=CLASSIFICATIONS,
        results=(
            pa.field("label", pa.string(), nullable=False),
            pa.field("score", pa.float64(), nullable=False),
            pa.field("scores", SCORES_TYPE, nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
        ),
    ),
    Task.NER: TaskOutput(
        task=Task.NER,
        table=ENTITIES,
        results=(pa.field("entities", pa.list_(ENTITY_TYPE), nullable=False),),
        sampled="entities",
    ),
}

# Names a partition key may not take: they are columns of the output tables.
RESERVED_COLUMNS = frozenset(
    {"id"}
    | {f.name for output in TASK_OUTPUTS.values() for f in output.results}
    | {f.name for f in PROVENANCE_FIELDS + REJECT_FIELDS}
)


def partition_path(partition: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> str:
    """A partition's folder path below a table, e.g. ``dt=2026-11-28/hour=05``."""
    items = partition.items() if isinstance(partition, Mapping) else partition
    return "/".join(f"{key}={value}" for key, value in items)


PARTITION_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_partition(value: Any) -> tuple[tuple[str, str], ...]:
    """A partition's keys and values from ``["k=v", ...]``, ``"k=v"``, a mapping or pairs; ConfigError names
    a key or value that cannot be a Hive folder name or an output column."""
    if isinstance(value, Mapping):
        pairs = [(str(k), _scalar_text(v)) for k, v in value.items()]
    else:
        items = [value] if isinstance(value, str) else list(value)
        pairs = []
        for item in items:
            if isinstance(item, str):
                key, sep, val = item.partition("=")
                if not sep:
                    raise ConfigError(f"partition {item!r} must look like KEY=VALUE, e.g. dt=2026-11-28")
                pairs.append((key.strip(), val))
            else:
                key, val = item
                pairs.append((str(key), _scalar_text(val)))
    if not pairs:
        raise ConfigError("partition must name at least one KEY=VALUE")
    seen = set()
    for key, val in pairs:
        if not PARTITION_KEY.match(key):
            raise ConfigError(f"partition key {key!r} must be letters, digits and underscores, not starting with a digit")
        if key.lower() in RESERVED_COLUMNS:
            raise ConfigError(f"partition key {key!r} is an output column name; choose another key")
        if key in seen:
            raise ConfigError(f"partition key {key!r} is given twice")
        seen.add(key)
        if not val:
            raise ConfigError(f"partition {key}= has an empty value")
        bad = [c for c in val if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
        if "/" in val or "\\" in val or ".." in val or "=" in val or bad:
            raise ConfigError(
                f"partition value for {key!r} must not contain '/', '\\', '..', '=' or control characters"
            )
        if val != val.strip():
            raise ConfigError(f"partition value for {key!r} must not start or end with spaces")
    return tuple(pairs)


def _scalar_text(value: Any) -> str:
    # YAML turns 2026-11-28 into a date; partition values are always text.
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def tables_for(tasks: Iterable[Task | str]) -> list[str]:
    """The tables a run of ``tasks`` writes: one per task, then the rejects."""
    return [TASK_OUTPUTS[Task(t)].table for t in tasks] + [REJECTS]


def schema(table: str, id_type: pa.DataType, kept: Iterable[pa.Field] = ()) -> pa.Schema:
    """The Arrow schema of ``table`` for an input whose ids are of ``id_type``, then the input columns the run
    carries (``kept``: `parse_kept_columns`, with the input's types), after the contract's."""
    if table == REJECTS:
        return pa.schema([pa.field("id", id_type), *REJECT_FIELDS, *kept])
    for output in TASK_OUTPUTS.values():
        if output.table == table:
            return pa.schema([*output.schema(id_type), *kept])
    raise KeyError(f"no output table {table!r}; the tables are {', '.join(tables_for(Task))}")


def parse_kept_columns(value: Any, id_column: str, text_column: str,
                       partition: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The input columns a run copies into every output table (``keep_columns``), from ``"a,b"`` or a list.
    ConfigError names one that clashes with a column of an output table (`RESERVED_COLUMNS`), the id or text
    column, a partition key or another kept column; names are compared without case, as Hive, Athena and
    Iceberg readers compare them."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    names = tuple(str(item).strip() for item in items if str(item).strip())
    keys = {key.lower() for key, _ in partition}
    seen: set[str] = set()
    for name in names:
        folded = name.lower()
        if "," in name or any(unicodedata.category(c) == "Cc" for c in name):
            raise ConfigError(f"keep_columns: {name!r} holds a comma or control characters")
        for role, column in (("id", id_column), ("text", text_column)):
            if folded == column.lower():
                raise ConfigError(f"keep_columns: {name!r} is the {role} column, which the run reads itself")
        if folded in RESERVED_COLUMNS:
            raise ConfigError(f"keep_columns: {name!r} is a column of the output tables "
                              f"({', '.join(sorted(RESERVED_COLUMNS))}); it cannot be carried into them")
        if folded in keys:
            raise ConfigError(f"keep_columns: {name!r} is a partition key of this run; it cannot be a column too")
        if folded in seen:
            raise ConfigError(f"keep_columns: {name!r} is given twice")
        seen.add(folded)
    return names


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """``_manifest.json`` of one table's published partition: which run wrote it, from what, with which
    models and settings, and the row accounting that validation checks."""

    table: str
    run_id: str
    partition: dict[str, str]
    tasks: list[str]
    rows: int  # rows of this table in the partition
    files: list[str]  # the partition's data files, exactly
    input: dict[str, Any]  # location, files, rows
    counts: dict[str, int]  # input_rows, accepted_rows, rejected_rows, <table>_rows for every table
    models: dict[str, dict[str, Any]]  # per task: location, revision, labels, max_length, weights_sha256
    precision: str
    kept_columns: dict[str, str] = field(default_factory=dict)  # input columns carried into it: name -> Arrow type
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)  # the stage sizes the run used
    units: dict[str, Any] = field(default_factory=dict)  # units of work: total, reused, reused_from_runs
    storage_retries: dict[str, int] = field(default_factory=dict)  # storage operations retried, by kind
    tokens: dict[str, int] = field(default_factory=dict)  # text: the accepted rows' text tokens
    forward: dict[str, dict[str, float]] = field(default_factory=dict)  # per task: passes, tokens, seconds
    dedupe: dict[str, Any] = field(default_factory=dict)  # rows whose text repeated another's, not run again
    cost: dict[str, Any] = field(default_factory=dict)  # what the run held: actor- and task-seconds, per resource
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=2, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Read a manifest; fields this version does not know are ignored, so older readers keep working
        when the manifest grows."""
        raw = json.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
