"""Hooks: how Airflow reaches the Ray cluster (``ray_default``) and object storage (``aws_default``).

``ray_default`` holds the Ray dashboard address (``host``, optionally ``schema`` and ``port``, or a whole
URL in ``host``) and, for clusters with token authentication, the token as ``password``. The token is
sent as a bearer header and never logged, put in trigger arguments or in XCom.

``aws_default`` holds the S3 access key as ``login``, the secret as ``password`` and, in ``extra``,
``endpoint_url`` and ``region_name``; empty fields fall back to the AWS credential chain.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException

from albert_batch.errors import ConfigError, JobFailed, RayUnavailable
from albert_batch.storage import S3Settings

DEFAULT_DASHBOARD_PORT = 8265
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
ACTIVE_STATUSES = frozenset({"PENDING", "RUNNING"})
REQUEST_TIMEOUT_S = 30
SUBMIT_RETRY_S = 600.0  # how long a submission (or listing, stopping) is asked again while the head cannot answer
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RayJob:
    """What Airflow needs to know about one Ray job."""

    submission_id: str
    status: str
    metadata: dict[str, str]
    message: str | None = None
    start_time_ms: int | None = None
    driver_exit_code: int | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> RayJob:
        return cls(submission_id=data.get("submission_id") or data.get("job_id") or "",
                   status=str(data.get("status", "")).removeprefix("JobStatus."),
                   metadata=dict(data.get("metadata") or {}), message=data.get("message"),
                   start_time_ms=data.get("start_time"), driver_exit_code=data.get("driver_exit_code"))

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


def dashboard_endpoint(conn: Connection) -> tuple[str, dict[str, str]]:
    """The dashboard's base URL and the request headers (with the bearer token, when there is one)."""
    host = (conn.host or "").strip()
    if not host:
        raise ConfigError(f"Airflow connection {conn.conn_id!r} has no host; set it to the Ray dashboard address, "
                          f"e.g. http://ray-head:{DEFAULT_DASHBOARD_PORT}")
    if "://" in host:
        parts = urlsplit(host)
        address = f"{parts.scheme}://{parts.netloc}"
    else:
        scheme = conn.schema if conn.schema in ("http", "https") else "http"
        address = f"{scheme}://{host}:{conn.port or DEFAULT_DASHBOARD_PORT}"
    token = conn.password or conn.extra_dejson.get("token")
    return address, ({"Authorization": f"Bearer {token}"} if token else {})


def s3_settings_from(conn: Connection) -> S3Settings:
    extra = conn.extra_dejson
    return S3Settings(access_key_id=conn.login or None, secret_access_key=conn.password or None,
                      session_token=extra.get("aws_session_token"),
                      endpoint_url=extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url"),
                      region=extra.get("region_name"))


class AwsS3Hook(BaseHook):
    """S3 settings from an Airflow connection, for use with ``albert_batch.storage.s3_settings``.
    A connection id that does not exist means "use the AWS credential chain of this worker"."""

    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    conn_type = "aws"
    hook_name = "Amazon Web Services (albert-batch)"

    def __init__(self, aws_conn_id: str | None = default_conn_name) -> None:
        super().__init__()
        self.aws_conn_id = aws_conn_id

    def settings(self) -> S3Settings:
        if not self.aws_conn_id:
            return S3Settings()
        try:
            return s3_settings_from(self.get_connection(self.aws_conn_id))
        except AirflowNotFoundException:
            self.log.info("connection %s is not defined; using the AWS credential chain", self.aws_conn_id)
            return S3Settings()

    async def asettings(self) -> S3Settings:
        if not self.aws_conn_id:
            return S3Settings()
        try:
            return s3_settings_from(await self.aget_connection(self.aws_conn_id))
        except AirflowNotFoundException:
            return S3Settings()


class RayJobHook(BaseHook):
    """Ray's Job Submission API: blocking calls for operators, ``a``-prefixed non-blocking ones for triggers."""

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray (albert-batch)"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id

    # -- blocking (operators) -------------------------------------------------------------------------------
    def _client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        address, headers = dashboard_endpoint(self.get_connection(self.ray_conn_id))
        try:
            return JobSubmissionClient(address, headers=headers)
        except Exception as err:
            raise RayUnavailable(f"cannot reach the Ray dashboard at {address} (connection {self.ray_conn_id!r}): "
                            f"{_without_secrets(err, headers)}") from err

    def _asking_again(self, what: str, call: Callable[[], T]) -> T:
        """``call``, asked again while the cluster answers that it cannot now (a 5xx answer such as "No
        available agent to submit job" while a head's agent starts, a refused connection), with backoff, for
        up to `SUBMIT_RETRY_S`; then RayUnavailable."""
        _, headers = dashboard_endpoint(self.get_connection(self.ray_conn_id))
        deadline = time.monotonic() + SUBMIT_RETRY_S
        delay = 1.0
        while True:
            try:
                return call()
            except Exception as err:  # the job client raises RuntimeError, ConnectionError or requests' errors
                if not _temporary(err) or time.monotonic() + delay > deadline:
                    raise (RayUnavailable if _temporary(err) else JobFailed)(
                        f"{what} on connection {self.ray_conn_id!r} failed: {_without_secrets(err, headers)}") from err
                self.log.warning("%s: the Ray cluster cannot answer now (%s); asking again in %.0fs", what,
                                 _without_secrets(err, headers), delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def list_jobs(self) -> list[RayJob]:
        jobs = self._asking_again("listing the Ray jobs", lambda: self._client().list_jobs())
        return [RayJob.from_api(dataclasses.asdict(j) if dataclasses.is_dataclass(j) else j.model_dump()) for j in jobs]

    def submit(self, *, entrypoint: str, submission_id: str, metadata: dict[str, str],
               runtime_env: dict[str, Any] | None, entrypoint_resources: dict[str, Any]) -> str:
        attempts = 0

        def submit_once() -> str:
            nonlocal attempts
            attempts += 1
            try:
                return self._client().submit_job(entrypoint=entrypoint, submission_id=submission_id, metadata=metadata,
                                                 runtime_env=runtime_env or None, **entrypoint_resources)
            except RuntimeError as err:
                if attempts > 1 and "already exists" in str(err):  # an earlier attempt got through unanswered
                    return submission_id
                raise

        return self._asking_again(f"submitting Ray job {submission_id}", submit_once)

    def stop(self, submission_id: str) -> bool:
        return bool(self._asking_again(f"stopping Ray job {submission_id}",
                                       lambda: self._client().stop_job(submission_id)))

    # -- non-blocking (triggers) ------------------------------------------------------------------------------
    async def _arequest(self, method: str, path: str) -> Any:
        import aiohttp

        address, headers = dashboard_endpoint(await self.aget_connection(self.ray_conn_id))
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        try:
            async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
                async with session.request(method, f"{address}{path}") as response:
                    if response.status >= 400:
                        body = (await response.text())[:500]
                        error = RayUnavailable if response.status >= 500 else JobFailed
                        raise error(f"{method} {address}{path} answered {response.status}: "
                                    f"{_without_secrets(body, headers)}")
                    return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise RayUnavailable(f"{method} {address}{path} failed: {type(err).__name__}: "
                                 f"{_without_secrets(err, headers)}") from err

    async def ajob(self, submission_id: str) -> RayJob:
        return RayJob.from_api(await self._arequest("GET", f"/api/jobs/{submission_id}"))

    async def alogs(self, submission_id: str) -> str:
        """The job's whole log so far."""
        return (await self._arequest("GET", f"/api/jobs/{submission_id}/logs")).get("logs", "")

    async def afollow_logs(self, submission_id: str) -> AsyncIterator[str]:
        """The job's log from its start, chunk by chunk as the driver writes it, until the job ends (Ray
        closes the stream then): each byte is sent once, however long the job runs."""
        import aiohttp

        address, headers = dashboard_endpoint(await self.aget_connection(self.ray_conn_id))
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.ws_connect(f"{address}/api/jobs/{submission_id}/logs/tail") as stream:
                async for message in stream:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        yield message.data
                    elif message.type == aiohttp.WSMsgType.ERROR:
                        raise JobFailed(f"the log stream of Ray job {submission_id} broke: "
                                        f"{_without_secrets(stream.exception(), headers)}")

    async def astop(self, submission_id: str) -> bool:
        return bool((await self._arequest("POST", f"/api/jobs/{submission_id}/stop")).get("stopped"))


def _temporary(err: BaseException) -> bool:
    """Whether the Job API's error says to ask again later: an answer of 5xx, or no answer at all."""
    if isinstance(err, RayUnavailable | ConnectionError | TimeoutError):
        return True
    if type(err).__module__.startswith(("requests", "urllib3")):  # a refused or reset connection, a timeout
        return True
    return isinstance(err, RuntimeError) and re.search(r"status code 5\d\d", str(err)) is not None


def _without_secrets(text: object, headers: dict[str, str]) -> str:
    text = str(text)
    for value in headers.values():
        text = text.replace(value, "***").replace(value.removeprefix("Bearer "), "***")
    return text
