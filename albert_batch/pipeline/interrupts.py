"""Stopping a run cleanly. SIGTERM (a pod evicted, Airflow marking a task failed) and SIGINT (Ctrl-C) stop
it within seconds: the stages stop taking work, nothing is published, and the staged work stays for the
next run of the partition. Once a run has committed its publication, a signal waits until that
publication is done (seconds), so that no partition is left half-swapped.

Another thread of the run (`albert_batch.pipeline.monitor`) stops it the same way with an error of its
own (`Interrupts.fail`). Handlers can only be installed from the main thread; elsewhere the run cannot be
stopped by a signal and this does nothing.

While the main thread waits inside Ray (``ray.get``: Ray Data waiting for its actors to start, for
instance), Ray runs the signal's handler itself and turns any error it raises into a KeyboardInterrupt,
printing and dropping an error of another type: so the handler raises `Interrupted`, a KeyboardInterrupt,
and `Interrupts.raised` turns whatever KeyboardInterrupt reaches it back into the run's error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from albert_batch.errors import Stopped

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """What the handler raises; `Interrupts.raised` turns it into the run's error."""


class Interrupts:
    """Within the block, SIGTERM and SIGINT raise `Stopped` in the main thread (and `fail` raises its error)."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._failure: BaseException | None = None
        self._error: BaseException | None = None  # what the last interruption stops the run with
        self._deferring = False

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def take_back(self) -> None:
        """Handle the signals again after something replaced the handlers: ``ray.init`` installs a SIGTERM
        handler of its own (one that exits with status 15)."""
        if self._previous:
            for signum in SIGNALS:
                signal.signal(signum, self._handle)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @property
    def active(self) -> bool:
        """Whether signals (and `fail`) reach the run."""
        return bool(self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        failure, self._failure = self._failure, None
        if failure is None:
            name = signal.Signals(signum).name
            if self._deferring:
                log.warning("%s received while publishing: stopping once the publication is complete", name)
                return
            failure = Stopped(f"stopped by {name}", signum)
        self._error = failure
        raise Interrupted(str(failure))

    @contextlib.contextmanager
    def raised(self) -> Iterator[None]:
        """Within the block, an interruption is raised as the run's error (`Stopped`, or what `fail` was
        given), however it reached the block; a KeyboardInterrupt without one is raised as it is."""
        try:
            yield
        except KeyboardInterrupt:
            error, self._error = self._error, None
            if error is None:
                raise
            raise error from None

    def fail(self, error: BaseException) -> None:
        """Stop the run with ``error``, from any thread."""
        if self.active:
            self._failure = error
            os.kill(os.getpid(), signal.SIGINT)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block, a signal is noted and the block runs to its end."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
