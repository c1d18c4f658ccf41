"""The input corpus: checked before any work (which Parquet files, how many rows, whether the id and
text columns exist with usable types), cut into units of work, and read as a Ray dataset. Every file's
footer is read, so an unreadable file is named up front and the row count that the run must account for
is exact.

The input is read in units of work (`albert_batch.pipeline.units`): whole row groups of one or several
files, one unit per read task, which reads a unit's files concurrently.

The id and text columns may be stored in any string encoding a Parquet writer uses: ``string``,
``large_string``, ``string_view``, dictionary-encoded strings (pandas' categoricals) and ``binary`` (older
Hive and Impala writers), decoded as UTF-8. A row whose text (or binary id) is not UTF-8 is rejected as
``invalid_utf8``, without an error; Parquet readers do not check string columns' bytes, so the read checks
them (one pass over the column; row by row only in a column that holds such a row).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs

from albert_batch import metrics, storage
from albert_batch.contract import RejectReason
from albert_batch.errors import AlbertBatchError, InputError, NotFound
from albert_batch.pipeline import staging
from albert_batch.pipeline.columns import ROW, UNIT, kept_column
from albert_batch.pipeline.isolation import DETAIL, REASON
from albert_batch.pipeline.ledger import RunLedger
from albert_batch.pipeline.units import InputFile, WorkUnit, pack
from albert_batch.storage import Location

if TYPE_CHECKING:
    import ray.data

IGNORED_PREFIXES = ("_", ".")
READ_THREADS = 16  # a unit's files a read task reads at a time
READ_TASK_CPUS = 1.0  # what a read task reserves (Ray Data's default for a task)


@dataclass(frozen=True)
class InputPlan:
    location: Location
    files: tuple[InputFile, ...]
    id_type: pa.DataType
    kept: tuple[pa.Field, ...] = ()  # the input columns the run carries into its tables, as `kept_type`s

    @property
    def num_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def kept_types(self) -> dict[str, str]:
        """The carried columns' Arrow types by name, as the manifest records them."""
        return {f.name: str(f.type) for f in self.kept}

    @property
    def uris(self) -> list[str]:
        return [Location(self.location.scheme, f.path).uri for f in self.files]

    def units(self, max_bytes: int | None = None, max_files: int | None = None,
              keep: Iterable[WorkUnit] = ()) -> tuple[WorkUnit, ...]:
        """The units of work (`albert_batch.pipeline.units.pack`): ``keep``'s units whose files are unchanged,
        and the rest cut in file and row-group order, each at most ``max_bytes`` of row groups of at most
        ``max_files`` files."""
        return pack(self.files, max_bytes=max_bytes, max_files=max_files, keep=keep)

    def fingerprint(self, units: Sequence[WorkUnit]) -> str:
        """A digest of the input files (names, sizes, versions, row groups) and of how ``units`` cut them, as
        manifests record it."""
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(json.dumps([f.path, f.size, f.version, f.row_groups]).encode())
        for u in units:
            digest.update(json.dumps([[s.path, s.start, s.stop] for s in u.segments]).encode())
        return digest.hexdigest()[:32]


def _data_files(loc: Location) -> list[pafs.FileInfo]:
    try:
        found = storage.info(loc)
    except NotFound as err:
        raise InputError(f"input {loc} does not exist") from err
    if found.type == pafs.FileType.NotFound:
        raise InputError(f"input {loc} does not exist")
    if found.type == pafs.FileType.File:
        return [found]
    files = []
    for f in storage.list_files(loc):
        relative = f.path[len(loc.path.rstrip("/")) + 1 :]
        if not any(part.startswith(IGNORED_PREFIXES) for part in relative.split("/")):
            files.append(f)
    if not files:
        raise InputError(f"input {loc} holds no Parquet files")
    return files


def input_state(loc: Location, *, marker: str | None = None) -> tuple[bool, str]:
    """Whether an input partition is ready to read — it holds data files and, if a producer's ``marker``
    file (e.g. ``_SUCCESS``) is asked for, that too — and, in words, why not."""
    if marker and not storage.exists(loc.child(marker)):
        return False, f"{loc} has no {marker} yet"
    try:
        files = _data_files(loc)
    except InputError as err:
        return False, str(err)
    return True, f"{loc} holds {len(files)} data file(s)"


def _read_footer(loc: Location, found: pafs.FileInfo) -> tuple[pa.Schema, InputFile]:
    file = Location(loc.scheme, found.path)
    try:
        metadata, etag = storage.parquet_footer(file)
    except (pa.ArrowInvalid, AlbertBatchError) as err:
        raise InputError(f"cannot read Parquet file {file.uri}: {err}") from err
    groups = tuple((metadata.row_group(i).num_rows, metadata.row_group(i).total_byte_size)
                   for i in range(metadata.num_row_groups))
    version = etag or str(found.mtime_ns)
    return metadata.schema.to_arrow_schema(), InputFile(found.path, found.size, version, groups)


def plan_input(loc: Location, *, id_column: str, text_column: str, keep_columns: Sequence[str] = ()) -> InputPlan:
    """List and check the input, and the types of the columns it carries (``keep_columns``); raise InputError
    naming the file or column at fault."""
    try:
        found = _data_files(loc)
    except InputError:
        raise
    except AlbertBatchError as err:
        raise InputError(f"cannot list input {loc}: {err}") from err
    footers = storage.concurrently(lambda f: _read_footer(loc, f), found)
    id_types: dict[pa.DataType, str] = {}
    kept: dict[str, dict[pa.DataType, str]] = {name: {} for name in keep_columns}
    for schema, file in footers:
        uri = Location(loc.scheme, file.path).uri
        for role, column in (("id", id_column), ("text", text_column), *(("kept", name) for name in keep_columns)):
            if column not in schema.names:
                raise InputError(
                    f"input file {uri} has no {role} column {column!r}; available columns: {', '.join(schema.names)}"
                )
        for name in keep_columns:
            kept[name].setdefault(kept_type(schema.field(name).type), uri)
        text_type = schema.field(text_column).type
        if not is_text_type(text_type):
            raise InputError(f"text column {column_desc(text_column, text_type)} in {uri} is not a string column "
                             "(string, large_string, string_view, dictionary-encoded strings or binary)")
        id_type = read_type(schema.field(id_column).type)
        if not (pa.types.is_integer(id_type) or pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
            raise InputError(
                f"id column {column_desc(id_column, schema.field(id_column).type)} in {uri} must be an integer or "
                "string column"
            )
        id_types.setdefault(id_type, uri)
    for role, column, types in (("id", id_column, id_types), *(("kept", n, t) for n, t in kept.items())):
        if len(types) > 1:
            found_types = "; ".join(f"{t} in {u}" for t, u in types.items())
            raise InputError(f"{role} column {column!r} has different types across files: {found_types}")
    return InputPlan(location=loc, files=tuple(file for _, file in footers), id_type=next(iter(id_types)),
                     kept=tuple(pa.field(name, next(iter(types))) for name, types in kept.items()))


def column_desc(name: str, arrow_type: pa.DataType) -> str:
    return f"{name!r} ({arrow_type})"


def read_type(arrow_type: pa.DataType) -> pa.DataType:
    """The type a column of ``arrow_type`` is read as: dictionaries decoded, views and binary as strings."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_string_view(arrow_type) or pa.types.is_binary(arrow_type) or pa.types.is_binary_view(arrow_type):
        return pa.string()
    if pa.types.is_large_binary(arrow_type):
        return pa.large_string()
    return arrow_type


def kept_type(arrow_type: pa.DataType) -> pa.DataType:
    """The type a carried column has in the output tables: the input's, dictionaries decoded and views as
    their plain types (which every reader, Iceberg included, knows)."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_string_view(arrow_type):
        return pa.string()
    return pa.binary() if pa.types.is_binary_view(arrow_type) else arrow_type


def is_text_type(arrow_type: pa.DataType) -> bool:
    text = read_type(arrow_type)
    return pa.types.is_string(text) or pa.types.is_large_string(text)


class InputColumns(Protocol):
    """The settings reading needs: a run's, or pretraining's (`albert_batch.training.config.PretrainConfig`)."""

    @property
    def id_column(self) -> str: ...

    @property
    def text_column(self) -> str: ...


def read_input(config: InputColumns, plan: InputPlan, units: list[WorkUnit], *, rows_per_block: int,
               retries_to: Location | None = None, ledger: RunLedger | None = None,
               run: metrics.RunTags | None = None) -> ray.data.Dataset:
    """The ``id`` and ``text`` columns of ``units``, with each row's unit and its row number in the unit and
    the columns the run carries (``plan.kept``), as a Ray dataset in blocks of at most ``rows_per_block`` rows.

    A map stage writes its output into blocks of up to 128 MiB, so one unit would reach the model stage as
    one block: one task, on one actor, however many actors there are. Blocks of one batch each spread the
    work over every tokenizer and model actor.

    The read runs one task at a time, a unit per task. A read task runs to its end once started, whatever
    the stages after it can take, so reading more at once would let a large corpus's text wait in memory
    (BENCHMARKS.md, "Memory"); one task decodes Parquet text far faster than any model stage consumes it.
    Each unit read is told to ``ledger`` (the run's `albert_batch.pipeline.ledger.RunLedger`) and the metrics,
    tagged with ``run``."""
    import ray.data

    items = [{"unit": u.index, "segments": [{"path": s.path, "start": s.start, "stop": s.stop} for s in u.segments]}
             for u in units]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        _read_units,
        fn_kwargs={"scheme": plan.location.scheme, "id_column": config.id_column, "text_column": config.text_column,
                   "id_type": plan.id_type, "retries_to": retries_to, "ledger": ledger, "run": run, "kept": plan.kept},
        batch_format="pyarrow",
        batch_size=None,
        compute=ray.data.TaskPoolStrategy(size=1),
        num_cpus=READ_TASK_CPUS,
    )
    return ds.repartition(target_num_rows_per_block=rows_per_block)


def _read_units(batch: pa.Table, *, scheme: str, id_column: str, text_column: str, id_type: pa.DataType,
                retries_to: Location | None, ledger: RunLedger | None = None, run: metrics.RunTags | None = None,
                kept: Sequence[pa.Field] = ()) -> Iterator[pa.Table]:
    """Each unit of ``batch`` (one row per unit) as ``id``, ``text``, its unit and each row's number in it,
    and the ``kept`` columns; a unit's files are read `READ_THREADS` at a time."""
    columns = [id_column, text_column, *(f.name for f in kept)]
    if run is not None:
        metrics.bind(run)
    with staging.retries_reported(retries_to):
        since = time.perf_counter()
        for unit in batch.to_pylist():
            tables = storage.concurrently(
                lambda s: storage.read_row_groups(Location(scheme, s["path"]), range(s["start"], s["stop"]), columns),
                unit["segments"], limit=READ_THREADS)
            rows = _with_positions(tables, unit["unit"], id_column, text_column, id_type, kept)
            metrics.count("albert_batch_rows_read", rows.num_rows)
            yield rows
            if ledger is not None:  # the task's time for this unit, its output handed on
                now = time.perf_counter()
                ledger.read(rows.num_rows, now - since)
                since = now


def _with_positions(tables: list[pa.Table], unit: int, id_column: str, text_column: str,
                    id_type: pa.DataType, kept: Sequence[pa.Field] = ()) -> pa.Table:
    """A unit's rows (``tables``, one per segment, each in its file's string encoding) as ``id``, ``text``
    (UTF-8 strings), its position columns, a reject reason where the row's bytes are not UTF-8 (its
    text, or its id, then null), and the ``kept`` columns as `columns.kept_column` (a carried string whose
    bytes are not UTF-8 is null, and leaves its row alone)."""
    ids, texts, invalid, rows = [], [], set(), 0
    for table in tables:
        segment_ids, bad_ids = decode_strings(table.column(id_column))
        segment_texts, bad_texts = decode_strings(table.column(text_column))
        ids.extend(segment_ids.cast(id_type).chunks)
        texts.extend(segment_texts.cast(pa.large_string()).chunks)
        invalid.update(rows + i for i in bad_ids | bad_texts)
        rows += table.num_rows
    reasons = pa.array([RejectReason.INVALID_UTF8.value if i in invalid else None for i in range(rows)], pa.string()) \
        if invalid else pa.nulls(rows, pa.string())
    columns: dict[str, Any] = {
        "id": pa.chunked_array(ids, id_type),
        "text": pa.chunked_array(texts, pa.large_string()),
        UNIT: pa.array([unit] * rows, pa.int32()),
        ROW: pa.array(range(rows), pa.int64()),
        REASON: reasons,
        DETAIL: pa.nulls(rows, pa.string()),
    }
    for f in kept:
        values = [_carried(table.column(f.name), f.type) for table in tables]
        columns[kept_column(f.name)] = pa.chunked_array([c for v in values for c in v.chunks], f.type)
    return pa.table(columns).combine_chunks()


def _carried(column: pa.ChunkedArray, arrow_type: pa.DataType) -> pa.ChunkedArray:
    """A carried column as its `kept_type`: dictionaries decoded, strings checked as the text is."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        column, _ = decode_strings(column)
    return column.cast(arrow_type)


def decode_strings(column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, set[int]]:
    """``column`` as its `read_type` (strings where it holds text), and the positions of values whose bytes
    are not UTF-8, which become null. Other columns (integers) are returned as they are."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    target = read_type(column.type)
    if not (pa.types.is_string(target) or pa.types.is_large_string(target)):
        return column, set()
    try:
        decoded = column.cast(target)  # from binary, the cast checks the bytes
        for chunk in decoded.chunks:
            chunk.validate(full=True)  # from strings, nothing has: Parquet readers leave their bytes unchecked
        return decoded, set()
    except pa.ArrowInvalid:
        pass
    values: list[str | None] = []
    invalid = set()
    for chunk in column.chunks:
        for value in chunk.view(_BYTES.get(chunk.type, chunk.type)).to_pylist():
            try:
                values.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                invalid.add(len(values))
                values.append(None)
    return pa.chunked_array([pa.array(values, target)], target), invalid


# The bytes under each string type (a view, without a copy), for reading values that are not UTF-8.
_BYTES = {pa.string(): pa.binary(), pa.large_string(): pa.large_binary(), pa.string_view(): pa.binary_view()}
