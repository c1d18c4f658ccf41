"""Storage locations — local paths, ``file://`` and ``s3://`` URIs — and the pyarrow filesystems they live
on (the standard AWS credential chain, ``AWS_ENDPOINT_URL``). Locations pickle as plain strings and build
their filesystem lazily in each process, so no credential ever travels inside a pickled object.

Code that holds explicit S3 settings (Airflow's ``aws_default`` connection) scopes them with
``with s3_settings(S3Settings(...)):``; everything else uses the environment.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from albert_batch.errors import ConfigError

log = logging.getLogger(__name__)

SUPPORTED_SCHEMES = ("file", "s3")


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
