"""The input corpus: checked before any work (which Parquet files, how many rows, whether the id and
text columns exist with usable types), then read as a Ray dataset. Every file's footer is read, so an
unreadable file is named up front and the row count that the run must account for is exact."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from albert_batch import storage
from albert_batch.errors import AlbertBatchError, InputError, NotFound
from albert_batch.storage import Location

if TYPE_CHECKING:
    import ray.data

    from albert_batch.config import RunConfig

IGNORED_PREFIXES = ("_", ".")
READ_TASK_BYTES = 16 * 2**20  # uncompressed row groups per read task (read_input)


@dataclass(frozen=True)
class InputPlan:
    location: Location
    files: tuple[str, ...]
    num_rows: int
    id_type: pa.DataType

    @property
    def uris(self) -> list[str]:
        return [Location(self.location.scheme, f).uri for f in self.files]


def _data_files(loc: Location) -> list[str]:
    try:
        found = storage.info(loc)
    except NotFound as err:
        raise InputError(f"input {loc} does not exist") from err
    if found.type == pafs.FileType.NotFound:
        raise InputError(f"input {loc} does not exist")
    if found.type == pafs.FileType.File:
        return [loc.path]
    files = []
    for f in storage.list_files(loc):
        relative = f.path[len(loc.path.rstrip("/")) + 1 :]
        if not any(part.startswith(IGNORED_PREFIXES) for part in relative.split("/")):
            files.append(f.path)
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


def _read_footer(loc: Location, path: str) -> tuple[pa.Schema, int]:
    uri = Location(loc.scheme, path).uri
    try:
        with loc.filesystem.open_input_file(path) as fh:
            metadata = pq.read_metadata(fh)
        return metadata.schema.to_arrow_schema(), metadata.num_rows
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
        raise InputError(f"cannot read Parquet file {uri}: {err}") from err


def plan_input(loc: Location, *, id_column: str, text_column: str) -> InputPlan:
    """List and check the input; raise InputError naming the file or column at fault."""
    try:
        files = _data_files(loc)
    except InputError:
        raise
    except AlbertBatchError as err:
        raise InputError(f"cannot list input {loc}: {err}") from err
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        footers = list(pool.map(lambda p: _read_footer(loc, p), files))
    id_types: dict[pa.DataType, str] = {}
    for path, (schema, _) in zip(files, footers, strict=True):
        uri = Location(loc.scheme, path).uri
        for role, column in (("id", id_column), ("text", text_column)):
            if column not in schema.names:
                raise InputError(
                    f"input file {uri} has no {role} column {column!r}; available columns: {', '.join(schema.names)}"
                )
        text_type = schema.field(text_column).type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type) or pa.types.is_string_view(text_type)):
            raise InputError(f"text column {column_desc(text_column, text_type)} in {uri} is not a string column")
        id_type = schema.field(id_column).type
        if not (pa.types.is_integer(id_type) or pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
            raise InputError(
                f"id column {column_desc(id_column, id_type)} in {uri} must be an integer or string column"
            )
        id_types.setdefault(id_type, uri)
    if len(id_types) > 1:
        found = "; ".join(f"{t} in {u}" for t, u in id_types.items())
        raise InputError(f"id column {id_column!r} has different types across files: {found}")
    return InputPlan(location=loc, files=tuple(files), num_rows=sum(n for _, n in footers), id_type=next(iter(id_types)))


def column_desc(name: str, arrow_type: pa.DataType) -> str:
    return f"{name!r} ({arrow_type})"


def read_input(config: RunConfig, plan: InputPlan, *, rows_per_block: int) -> ray.data.Dataset:
    """The input's ``id`` and ``text`` columns as a Ray dataset, in blocks of at most ``rows_per_block`` rows.

    A map stage writes its output into blocks of up to 128 MiB, so one input file would reach the model
    stage as one block: one task, on one actor, however many actors there are. Blocks of one batch each
    spread the work over every tokenizer and model actor.

    The read runs one task at a time, each over at most ``READ_TASK_BYTES`` of row groups (a row group is
    never split). A read task runs to its end once started, whatever the stages after it can take, and
    Ray Data's default packs 128 MiB of row groups into each and starts them all at once, so a large
    corpus's text would wait in memory (BENCHMARKS.md, "Memory"). One task decodes Parquet text far
    faster than any model stage consumes it."""
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
