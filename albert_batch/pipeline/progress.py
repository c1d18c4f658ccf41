"""A run's progress as a person reads it: rows done of the total, rows per second and the time left.

It is counted from the pipeline's own counters, not from Ray's metrics, so it reads the same on any
cluster: the rows the model stage has finished (the run's `albert_batch.pipeline.ledger.RunLedger`, which every
model actor reports each batch to) or, when further, the rows the writer has staged (the staging folder's piece records, which also
count a resumed run's reused rows as done, though not in its rate). It advances a batch at a time.

`albert_batch.pipeline.monitor` logs a line here at INFO every `interval_s` seconds, the plain lines that
logs, Ray jobs and Airflow show. A console that shows progress live (a terminal, `albert_batch.console`)
enables DEBUG on this module's logger and gets a line at every poll of the monitor as well.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from albert_batch.errors import ConfigError
from albert_batch.pipeline.staging import Piece

log = logging.getLogger(__name__)

INTERVAL_ENV = "ALBERT_BATCH_PROGRESS_S"
INTERVAL_S = 30.0


def interval_s() -> float:
    """Seconds between plain progress lines: ``$ALBERT_BATCH_PROGRESS_S``, or 30."""
    value = os.environ.get(INTERVAL_ENV)
    if value is None:
        return INTERVAL_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError(f"{INTERVAL_ENV} must be a positive number of seconds, not {value!r}")
    return seconds


def staged_by_unit(pieces: Iterable[Piece], unit_rows: Mapping[int, int]) -> dict[int, int]:
    """Each unit's rows (of the units in ``unit_rows``, unit -> rows) that ``pieces`` hold, each row counted
    once (a retried write task's pieces repeat rows); a unit is all staged when they are its ``unit_rows``."""
    ranges: dict[int, list[list[int]]] = {}
    for piece in pieces:
        if piece.unit in unit_rows:
            ranges.setdefault(piece.unit, []).extend(piece.ranges)
    rows: dict[int, int] = {}
    for unit, spans in ranges.items():
        reach = 0
        for start, stop in sorted(spans):
            start, stop = max(start, reach), min(stop, unit_rows[unit])
            if stop > start:
                rows[unit], reach = rows.get(unit, 0) + stop - start, stop
    return rows


@dataclass(frozen=True)
class Progress:
    """Where a run stands: ``total_rows`` of its input, ``reused_rows`` of them done by earlier runs, and
    ``started``, the `time.monotonic` at which its processing started."""

    total_rows: int
    reused_rows: int
    started: float

    def line(self, done_rows: int, now: float, staged_rows: int | None = None) -> str:
        """``progress: 1,200 of 10,000 rows (12%), 45.6 rows/s, about 3m 13s left``; ``done_rows`` include
        the reused ones, the rate does not. ``staged_rows`` (reused ones included), where fewer than the
        rows done: ``(12%, 800 staged)``, the rows a stop would not cost."""
        share = done_rows / self.total_rows if self.total_rows else 1.0
        reused = f", {self.reused_rows:,} reused" if self.reused_rows else ""
        staged = f", {staged_rows:,} staged" if staged_rows is not None and staged_rows < done_rows else ""
        text = f"progress: {done_rows:,} of {self.total_rows:,} rows ({share:.0%}{reused}{staged})"
        new_rows, seconds = done_rows - self.reused_rows, now - self.started
        if new_rows <= 0 or seconds <= 0:
            return f"{text}, none done yet"
        rate = new_rows / seconds
        left = self.total_rows - done_rows
        return f"{text}, {rate:,.1f} rows/s" + (f", about {duration(left / rate)} left" if left > 0 else "")


def duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
