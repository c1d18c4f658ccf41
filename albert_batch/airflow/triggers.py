"""Async triggers: the long waits of a DAG run happen here, in the triggerer, holding no worker slot.

Their arguments are serialised into Airflow's database, so they carry ids and locations only — the
connections (and their secrets) are looked up when the trigger runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from albert_batch.airflow.hooks import TERMINAL_STATUSES, AwsS3Hook, RayJobHook
from albert_batch.errors import RayUnavailable

LOG_TAIL_LINES = 40
LOG_DRAIN_S = 10.0  # how long an ended job's log stream may take to deliver its last lines
DASHBOARD_OUTAGE_S = 600.0  # how long the dashboard may not answer (a head restarting) before the task fails
TIMEOUT = "TIMEOUT"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class JobLog:
    """The part of a job's log copied into the task log so far: whole lines only, each once, and the last
    `LOG_TAIL_LINES` kept for the trigger's event."""

    def __init__(self, submission_id: str, log: Any) -> None:
        self.submission_id = submission_id
        self.log = log
        self.chars = 0  # characters of the job's log received so far
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._partial = ""

    def add(self, chunk: str) -> None:
        self.chars += len(chunk)
        *lines, self._partial = (self._partial + chunk).split("\n")
        for line in lines:
            self._show(line)

    def add_rest(self, whole_log: str) -> None:
        """Catch up from the whole log, fetched once when the job ends: only what the stream did not deliver
        is shown (all of it if the stream never worked; all again if the log was truncated meanwhile)."""
        self.add(whole_log[self.chars:] if len(whole_log) >= self.chars else whole_log)

    def close(self) -> None:
        if self._partial:
            self._show(self._partial)
            self._partial = ""

    def _show(self, line: str) -> None:
        line = line.rstrip("\r")
        self.log.info("[ray job %s] %s", self.submission_id, line)
        self.tail.append(line)


class RayJobTrigger(BaseTrigger):
    """Polls a Ray job until it ends or ``deadline`` passes (then stops it), copying its log into the task
    log line by line as the job writes it. Fires one event: ``{"status", "submission_id", "message",
    "exit_code", "log_tail"}``.

    The log comes from Ray's streaming endpoint, so a long job's log is not sent again on every poll.
    When the job ends, the whole log is fetched once to copy anything the stream did not deliver (all of
    it behind a proxy without WebSockets). A dashboard that does not answer is asked again at every poll,
    for up to `DASHBOARD_OUTAGE_S`; then `RayUnavailable` fails the task, whose retry attaches to the job."""

    def __init__(self, *, submission_id: str, ray_conn_id: str, deadline: str, poll_interval: float = 30.0) -> None:
        super().__init__()
        self.submission_id = submission_id
        self.ray_conn_id = ray_conn_id
        self.deadline = deadline
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"submission_id": self.submission_id, "ray_conn_id": self.ray_conn_id, "deadline": self.deadline,
                 "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = RayJobHook(self.ray_conn_id)
        deadline = dt.datetime.fromisoformat(self.deadline)
        log = JobLog(self.submission_id, self.log)
        follower = asyncio.create_task(self._follow(hook, log))
        unanswered_since: dt.datetime | None = None
        try:
            while True:
                try:
                    job = await hook.ajob(self.submission_id)
                except RayUnavailable as err:
                    unanswered_since = unanswered_since or _now()
                    if (_now() - unanswered_since).total_seconds() >= DASHBOARD_OUTAGE_S:
                        raise
                    self.log.warning("no answer about Ray job %s (%s); asking again in %gs",
                                     self.submission_id, err, self.poll_interval)
                    await asyncio.sleep(self.poll_interval)
                    continue
                unanswered_since = None
                if job.status in TERMINAL_STATUSES:
                    await self._finish(hook, log, follower)
                    yield TriggerEvent(self._event(job.status, job.message, job.driver_exit_code, log))
                    return
                if _now() >= deadline:
                    self.log.error("Ray job %s is still %s at its deadline %s; stopping it",
                                   self.submission_id, job.status, self.deadline)
                    await hook.astop(self.submission_id)
                    await self._finish(hook, log, follower)
                    yield TriggerEvent(self._event(TIMEOUT, f"stopped at its deadline {self.deadline}", None, log))
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            follower.cancel()

    async def on_kill(self) -> None:
        """The user killed the deferred task (marked it failed, cleared it): stop the Ray job too."""
        self.log.warning("task killed; stopping Ray job %s", self.submission_id)
        await RayJobHook(self.ray_conn_id).astop(self.submission_id)

    async def _follow(self, hook: RayJobHook, log: JobLog) -> None:
        """Copy the log stream into ``log`` until the job ends."""
        try:
            async for chunk in hook.afollow_logs(self.submission_id):
                log.add(chunk)
        except Exception as err:  # the job's outcome does not depend on its log: carry on polling
            self.log.warning("cannot follow the log of Ray job %s (%s); it is copied when the job ends",
                             self.submission_id, err)

    async def _finish(self, hook: RayJobHook, log: JobLog, follower: asyncio.Task) -> None:
        """Let the stream deliver the log's last lines (Ray closes it once the job ends), then copy whatever
        it did not deliver from the whole log, fetched this once."""
        try:
            await asyncio.wait_for(asyncio.shield(follower), LOG_DRAIN_S)
        except TimeoutError:
            follower.cancel()
        log.add_rest(await hook.alogs(self.submission_id))
        log.close()

    def _event(self, status: str, message: str | None, exit_code: int | None, log: JobLog) -> dict[str, Any]:
        return {"status": status, "submission_id": self.submission_id, "message": message or "",
                "exit_code": exit_code, "log_tail": "\n".join(log.tail)}


class InputPartitionTrigger(BaseTrigger):
    """Checks an input location every ``poke_interval`` seconds until it is ready (see
    `albert_batch.pipeline.inputs.input_state`) or ``deadline`` passes. Storage calls run in a thread, so the
    triggerer's event loop never blocks on them."""

    def __init__(self, *, input_uri: str, aws_conn_id: str | None, marker: str | None, deadline: str,
                 poke_interval: float = 300.0) -> None:
        super().__init__()
        self.input_uri = input_uri
        self.aws_conn_id = aws_conn_id
        self.marker = marker
        self.deadline = deadline
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"input_uri": self.input_uri, "aws_conn_id": self.aws_conn_id, "marker": self.marker,
                 "deadline": self.deadline, "poke_interval": self.poke_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from albert_batch import storage
        from albert_batch.pipeline.inputs import input_state
        from albert_batch.storage import Location

        settings = await AwsS3Hook(self.aws_conn_id).asettings()
        location = Location.parse(self.input_uri, what="input")
        deadline = dt.datetime.fromisoformat(self.deadline)

        def check() -> tuple[bool, str]:
            with storage.s3_settings(settings):
                return input_state(location, marker=self.marker)

        while True:
            ready, why = await asyncio.to_thread(check)
            if ready:
                yield TriggerEvent({"status": "ready", "message": why})
                return
            if _now() >= deadline:
                yield TriggerEvent({"status": TIMEOUT, "message": f"{why}; gave up at {self.deadline}"})
                return
            self.log.info("waiting for input: %s", why)
            await asyncio.sleep(self.poke_interval)
