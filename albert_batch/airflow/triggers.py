"""Async triggers: the long waits of a DAG run happen here, in the triggerer, holding no worker slot.

Their arguments are serialised into Airflow's database, so they carry ids and locations only — the
connections (and their secrets) are looked up when the trigger runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from albert_batch.airflow.hooks import TERMINAL_STATUSES, AwsS3Hook, RayJobHook

LOG_TAIL_LINES = 40
TIMEOUT = "TIMEOUT"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RayJobTrigger(BaseTrigger):
    """Polls a Ray job until it ends or ``deadline`` passes (then stops it), copying new log lines into the
    task log as they appear. Fires one event: ``{"status", "submission_id", "message", "exit_code", "log_tail"}``."""

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
        shown = 0
        while True:
            job = await hook.ajob(self.submission_id)
            logs = await hook.alogs(self.submission_id)
            shown = self._show_new_lines(logs, shown)
            if job.status in TERMINAL_STATUSES:
                yield TriggerEvent(self._event(job.status, job.message, job.driver_exit_code, logs))
                return
            if _now() >= deadline:
                self.log.error("Ray job %s is still %s at its deadline %s; stopping it",
                               self.submission_id, job.status, self.deadline)
                await hook.astop(self.submission_id)
                yield TriggerEvent(self._event(TIMEOUT, f"stopped at its deadline {self.deadline}", None, logs))
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """The user killed the deferred task (marked it failed, cleared it): stop the Ray job too."""
        self.log.warning("task killed; stopping Ray job %s", self.submission_id)
        await RayJobHook(self.ray_conn_id).astop(self.submission_id)

    def _show_new_lines(self, logs: str, shown: int) -> int:
        if len(logs) < shown:  # the log was rotated or truncated: start over
            shown = 0
        for line in logs[shown:].splitlines():
            self.log.info("[ray job %s] %s", self.submission_id, line)
        return len(logs)

    def _event(self, status: str, message: str | None, exit_code: int | None, logs: str) -> dict[str, Any]:
        return {"status": status, "submission_id": self.submission_id, "message": message or "",
                "exit_code": exit_code, "log_tail": "\n".join(logs.splitlines()[-LOG_TAIL_LINES:])}


class InputPartitionTrigger(BaseTrigger):
    """Checks an input location every ``poke_interval`` seconds until it is ready (see
    `albert_batch.inputs.input_state`) or ``deadline`` passes. Storage calls run in a thread, so the
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
        from albert_batch.inputs import input_state
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
