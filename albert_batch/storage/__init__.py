"""Storage — local paths, ``file://`` and ``s3://`` URIs on pyarrow filesystems: every operation on a store.

Everything that touches storage goes through this package: locations and their filesystems
(`albert_batch.storage.locations`), the one retry policy and the translation of backend errors
(`albert_batch.storage.retry`), and the operations here, each of which goes through `translated`, so none
escapes the error translation or the retry policy. Where a caller has many operations (footers of many
files, a unit's files, publishing's moves and deletes), it runs them a bounded number at a time
(`concurrently`).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from albert_batch.errors import NotFound, StorageError
from albert_batch.storage.locations import SUPPORTED_SCHEMES, Location, S3Settings, s3_settings
from albert_batch.storage.retry import retries_made, translate, translated

__all__ = ["CONCURRENCY", "SUPPORTED_SCHEMES", "Location", "S3Settings", "check_writable", "concurrently",
           "delete_dir", "delete_file", "each_concurrently", "etag", "exists", "info", "list_dirs", "list_files",
           "move", "parquet_footer", "read_bytes", "read_row_groups", "retries_made", "s3_settings", "translate",
           "translated", "write_bytes", "write_with"]

T = TypeVar("T")
A = TypeVar("A")

# Storage operations one caller runs at once where it has many (footers of many files, a unit's files,
# publishing's moves, copies and deletes): each is mostly waiting for the store, and S3 serves thousands of
# requests a second per prefix.
CONCURRENCY = 16


def each_concurrently(op: Callable[[A], T], items: Iterable[A], *, limit: int | None = None) -> Iterator[T]:
    """``op(item)`` for each of ``items``, in order, with at most ``limit`` (`CONCURRENCY`) started and not yet
    taken at once, so that memory stays bounded however many items there are. Each runs in a copy of the
    caller's context (its `s3_settings`). The first failure, in order, is raised, and the operations not yet
    started are dropped."""
    limit = limit or CONCURRENCY
    remaining = iter(items)
    with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="storage") as pool:
        pending: deque[Future[T]] = deque()

        def start(count: int) -> None:
            for item in itertools.islice(remaining, count):
                pending.append(pool.submit(contextvars.copy_context().run, op, item))

        try:
            start(limit)
            while pending:
                result = pending.popleft().result()
                start(1)
                yield result
        finally:
            for future in pending:
                future.cancel()


def concurrently(op: Callable[[A], T], items: Iterable[A], *, limit: int | None = None) -> list[T]:
    """``op(item)`` for each of ``items``, at most ``limit`` at once; the results in order (see
    `each_concurrently`)."""
    return list(each_concurrently(op, items, limit=limit))


def info(loc: Location) -> pafs.FileInfo:
    return translated(lambda: loc.filesystem.get_file_info(loc.path), doing="inspecting", loc=loc)


def exists(loc: Location) -> bool:
    return info(loc).type != pafs.FileType.NotFound


def list_files(loc: Location, *, recursive: bool = True) -> list[pafs.FileInfo]:
    """Files (not folders) under ``loc``; an absent folder lists as empty."""
    selector = pafs.FileSelector(loc.path, recursive=recursive, allow_not_found=True)
    infos = translated(lambda: loc.filesystem.get_file_info(selector), doing="listing", loc=loc)
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def list_dirs(loc: Location) -> list[Location]:
    selector = pafs.FileSelector(loc.path, recursive=False, allow_not_found=True)
    infos = translated(lambda: loc.filesystem.get_file_info(selector), doing="listing", loc=loc)
    return sorted(Location(loc.scheme, i.path) for i in infos if i.type == pafs.FileType.Directory)


def etag(loc: Location) -> str:
    """The object's ETag (S3) — a version stamp that changes whenever the content does."""

    def op() -> str:
        with loc.filesystem.open_input_file(loc.path) as fh:
            value = _etag(fh)
        if not value:
            raise StorageError(f"{loc} has no ETag")
        return value

    return translated(op, doing="inspecting", loc=loc)


def _etag(fh: pa.NativeFile) -> str | None:
    value = fh.metadata().get(b"ETag") or fh.metadata().get("ETag")
    return value.decode() if isinstance(value, bytes) else value


def parquet_footer(loc: Location) -> tuple[pq.FileMetaData, str | None]:
    """A Parquet file's footer, and its ETag where the store has one (S3). Raises ``pa.ArrowInvalid`` for a
    file that is not Parquet."""

    def op() -> tuple[pq.FileMetaData, str | None]:
        with loc.filesystem.open_input_file(loc.path) as fh:
            return pq.read_metadata(fh), _etag(fh)

    return translated(op, doing="reading the footer of", loc=loc)


def read_row_groups(loc: Location, row_groups: range, columns: list[str]) -> pa.Table:
    """``columns`` of a range of a Parquet file's row groups."""

    def op() -> pa.Table:
        with loc.filesystem.open_input_file(loc.path) as fh:
            return pq.ParquetFile(fh).read_row_groups(list(row_groups), columns=columns)

    return translated(op, doing=f"reading row groups {row_groups.start}-{row_groups.stop - 1} of", loc=loc)


def read_bytes(loc: Location) -> bytes:
    def op() -> bytes:
        with loc.filesystem.open_input_stream(loc.path) as stream:
            return stream.read()

    return translated(op, doing="reading", loc=loc)


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole object (see `write_with`)."""
    write_with(loc, lambda out: out.write(data))


def write_with(loc: Location, fill: Callable[[pa.NativeFile], T]) -> T:
    """Write an object by streaming into it: ``fill`` writes it to the stream it is given, and is run again
    from the start on a transient failure. Returns what ``fill`` returns. Local files are written beside the
    target and renamed, so readers never see a partial file. pyarrow completes an S3 upload when its stream
    closes, even after ``fill`` failed, so a failed streamed write may leave a partial object: stream only
    to names that nothing reads before the write has returned (a whole object written at once is atomic)."""
    fs = loc.filesystem

    def op() -> T:
        if loc.scheme != "file":
            with fs.open_output_stream(loc.path) as out:
                return fill(out)
        fs.create_dir(loc.parent.path, recursive=True)
        tmp = loc.parent.child(f".{loc.name}.{uuid.uuid4().hex}.tmp")
        try:
            with fs.open_output_stream(tmp.path) as out:
                result = fill(out)
            fs.move(tmp.path, loc.path)
            return result
        except BaseException:
            with contextlib.suppress(OSError):
                fs.delete_file(tmp.path)
            raise

    return translated(op, doing="writing", loc=loc)


def move(src: Location, dst: Location) -> None:
    """Move a file (a rename on local disks; copy then delete on S3). A move found done already (an earlier
    attempt's answer was lost) is fine."""
    fs = src.filesystem

    def op() -> None:
        if src.scheme == "file":
            fs.create_dir(dst.parent.path, recursive=True)
        try:
            fs.move(src.path, dst.path)
        except OSError as err:
            gone = isinstance(translate(err, "moving", src), NotFound)
            if not (gone and fs.get_file_info(dst.path).type == pafs.FileType.File):
                raise

    translated(op, doing=f"moving {src} to", loc=dst)


def check_writable(folder: Location) -> None:
    """Write a small object into ``folder`` and delete it: the bucket exists, and the credentials in use may
    write and delete there. Raises the StorageError of the step that failed."""
    probe = folder.child(f"_probe-{uuid.uuid4().hex}")
    write_bytes(probe, b"albert-batch checks that it may write here\n")
    delete_file(probe)


def delete_file(loc: Location, *, missing_ok: bool = True) -> None:
    def op() -> None:
        try:
            loc.filesystem.delete_file(loc.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    translated(op, doing="deleting", loc=loc)


def delete_dir(loc: Location) -> None:
    """Delete a folder and everything in it; an absent folder is fine."""

    def op() -> None:
        fs = loc.filesystem
        if fs.get_file_info(loc.path).type == pafs.FileType.NotFound:
            return
        fs.delete_dir(loc.path)

    translated(op, doing="deleting folder", loc=loc)
