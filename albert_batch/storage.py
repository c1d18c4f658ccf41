"""Storage locations — local paths, ``file://`` and ``s3://`` URIs — on pyarrow filesystems.

Everything that touches storage goes through this module: URI parsing, filesystem construction (the
standard AWS credential chain, ``AWS_ENDPOINT_URL``), the one retry policy (`translated`) and translation
of backend errors into `albert_batch.errors`. Locations pickle as plain strings and build their
filesystem lazily in each process, so no credential ever travels inside a pickled object.

Code that holds explicit S3 settings (Airflow's ``aws_default`` connection) scopes them with
``with s3_settings(S3Settings(...)):``; everything else uses the environment.

Over 300 lines because it is the one place that touches a storage backend: every operation goes
through `translated`, so none escapes the error translation or the retry policy.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from albert_batch.errors import ConfigError, NotFound, PermissionDenied, StorageError, Transient

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")

# Backend messages that mark a failure that may pass if tried later (AWS SDK error names, socket failures).
RETRYABLE_MARKERS = (
    "SLOW_DOWN",
    "SlowDown",
    "THROTTL",
    "Throttl",
    "SERVICE_UNAVAILABLE",
    "INTERNAL_FAILURE",
    "NETWORK_CONNECTION",
    "REQUEST_TIMEOUT",
    "timed out",
    "Connection reset",
    "Connection refused",
    "(HTTP status 5",  # a 5xx answer without an error body (HEAD requests)
)
NOT_FOUND_MARKERS = ("NO_SUCH_KEY", "NoSuchKey", "NO_SUCH_BUCKET", "NoSuchBucket", "does not exist")
DENIED_MARKERS = ("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY", "SIGNATURE_DOES_NOT_MATCH", "Forbidden")
# The retry policy of every storage operation: up to RETRY_ATTEMPTS tries, waiting a random time up to
# RETRY_BASE_S, 2 x RETRY_BASE_S, ... (at most RETRY_CAP_S) before each retry: about 10 s of waiting in all
# at worst. The AWS SDK's own retries are off (one attempt per request), so every retry happens here, is
# logged, and is counted (`retries_made`).
RETRY_ATTEMPTS = 6
RETRY_BASE_S = 0.25
RETRY_CAP_S = 4.0
_RETRIES: Counter[str] = Counter()  # this process's retries, by kind of failure
_RETRIES_LOCK = threading.Lock()

SUPPORTED_SCHEMES = ("file", "s3")
# Storage operations one caller runs at once where it has many (footers of many files, a unit's files,
# publishing's moves, copies and deletes): each is mostly waiting for the store, and S3 serves thousands of
# requests a second per prefix.
CONCURRENCY = 16


@dataclass(frozen=True, order=True)
class Location:
    """A file or folder: ``scheme`` is ``file`` or ``s3``; ``path`` is absolute (file) or ``bucket/key`` (s3)."""

    scheme: str
    path: str

    @classmethod
    def parse(cls, uri: str, *, what: str = "location") -> Location:
        """Parse a local path, ``file://`` URI or ``s3://bucket/prefix`` URI."""
        if not isinstance(uri, str) or not uri.strip():
            raise ConfigError(f"{what} is empty; give a local path, file:// or s3:// URI")
        uri = uri.strip()
        if "://" not in uri:
            return cls("file", os.path.abspath(os.path.expanduser(uri)))
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme == "s3a":
            scheme = "s3"
        if scheme not in SUPPORTED_SCHEMES:
            raise ConfigError(
                f"{what} uses the unsupported scheme {parts.scheme!r}; use a local path, file:// or s3://"
            )
        if "@" in parts.netloc:
            # Never echo the URI: its user part may be a key pair.
            raise ConfigError(
                f"{what} has credentials embedded in it; remove them and use the AWS credential chain"
            )
        if parts.query or parts.fragment:
            raise ConfigError(f"{what} {scheme}://{parts.netloc}{parts.path} must not have a query or fragment")
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ConfigError(f"{what} file://{parts.netloc}{parts.path} must be an absolute path (file:///...)")
            return cls("file", os.path.abspath(parts.path or "/"))
        bucket = parts.netloc
        if not bucket:
            raise ConfigError(f"{what} {uri!r} has no bucket name")
        key = parts.path.strip("/")
        return cls("s3", f"{bucket}/{key}" if key else bucket)

    @property
    def uri(self) -> str:
        return f"s3://{self.path}" if self.scheme == "s3" else self.path

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.scheme, self.path.rstrip("/").rsplit("/", 1)[0] or "/")

    def child(self, *parts: str) -> Location:
        path = self.path.rstrip("/")
        for part in parts:
            path = f"{path}/{part.strip('/')}"
        return Location(self.scheme, path)

    def contains(self, other: Location) -> bool:
        """True when ``other`` is this location or lies inside it."""
        if self.scheme != other.scheme:
            return False
        mine, theirs = self.path.rstrip("/"), other.path.rstrip("/")
        return theirs == mine or theirs.startswith(mine + "/")

    @property
    def filesystem(self) -> pafs.FileSystem:
        if self.scheme == "file":
            return _local_filesystem()
        return _s3_filesystem(self.path.split("/", 1)[0])


@functools.cache
def _local_filesystem() -> pafs.FileSystem:
    return pafs.LocalFileSystem()


@dataclass(frozen=True)
class S3Settings:
    """Explicit S3 settings; any field left ``None`` falls back to the environment / AWS credential chain.
    The secret parts never show in ``repr``."""

    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    region: str | None = None


_S3_SETTINGS: contextvars.ContextVar[S3Settings | None] = contextvars.ContextVar("albert_batch_s3", default=None)


@contextlib.contextmanager
def s3_settings(settings: S3Settings | None) -> Iterator[None]:
    """Use ``settings`` for every S3 location touched inside the block (in this thread or task, and in
    threads started with ``asyncio.to_thread``, which copy the context)."""
    token = _S3_SETTINGS.set(settings)
    try:
        yield
    finally:
        _S3_SETTINGS.reset(token)


def _s3_filesystem(bucket: str) -> pafs.FileSystem:
    return _s3_filesystem_for(bucket, _S3_SETTINGS.get() or S3Settings())


@functools.cache
def _s3_filesystem_for(bucket: str, settings: S3Settings) -> pafs.FileSystem:
    kwargs: dict = {
        "allow_bucket_creation": True,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1),  # retries happen in `translated`
    }
    if settings.access_key_id and settings.secret_access_key:
        kwargs.update(access_key=settings.access_key_id, secret_key=settings.secret_access_key,
                      session_token=settings.session_token)
    endpoint = settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme
    region = settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    elif endpoint:
        kwargs["region"] = "us-east-1"
    else:
        try:
            kwargs["region"] = pafs.resolve_s3_region(bucket)
        except OSError:
            log.debug("could not resolve the region of bucket %s; using the SDK default", bucket)
    return pafs.S3FileSystem(**kwargs)


def translate(err: BaseException, doing: str, loc: Location | str) -> StorageError:
    """Map a backend error to our hierarchy, naming the operation and the location."""
    message = str(err)
    text = f"{doing} {loc} failed: {message}"
    if isinstance(err, FileNotFoundError) or any(m in message for m in NOT_FOUND_MARKERS):
        return NotFound(text)
    if isinstance(err, PermissionError) or any(m in message for m in DENIED_MARKERS):
        return PermissionDenied(text)
    if isinstance(err, (TimeoutError, ConnectionError)) or any(m in message for m in RETRYABLE_MARKERS):
        return Transient(text)
    return StorageError(text)


def translated(op: Callable[[], T], *, doing: str, loc: Location | str) -> T:
    """Run ``op``, translating backend errors into our hierarchy; a Transient failure (throttling, a 5xx
    answer, a timeout, a reset connection) is retried with jittered, bounded exponential backoff, each retry
    logged once and counted. ``op`` must be safe to run again: every storage operation here is."""
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return op()
        except OSError as err:
            error = translate(err, doing, loc)
            if not isinstance(error, Transient):
                raise error from err
            if attempt == RETRY_ATTEMPTS:
                raise Transient(f"{error} (gave up after {RETRY_ATTEMPTS} attempts)") from err
            delay = random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempt - 1)))
            with _RETRIES_LOCK:
                _RETRIES[_failure_kind(str(err))] += 1
            log.warning("%s; retry %d of %d in %.1fs", error, attempt, RETRY_ATTEMPTS - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _failure_kind(message: str) -> str:
    for kind, markers in (("throttled", ("SLOW_DOWN", "SlowDown", "THROTTL", "Throttl")),
                          ("server error", ("INTERNAL_FAILURE", "SERVICE_UNAVAILABLE", "(HTTP status 5")),
                          ("timeout", ("REQUEST_TIMEOUT", "timed out"))):
        if any(m in message for m in markers):
            return kind
    return "connection"


def retries_made() -> dict[str, int]:
    """How many storage operations this process has retried so far, by kind of failure."""
    with _RETRIES_LOCK:
        return dict(_RETRIES)


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
