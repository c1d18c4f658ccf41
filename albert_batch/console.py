"""What a person sees of a command (`albert-batch run`, ``finetune``, ``pretrain``, the demo): albert-batch's
own lines with a progress line, the outcome, and a details log for everything else the process writes."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from albert_batch.config import cache_home
from albert_batch.pipeline import progress

log = logging.getLogger("albert_batch")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the driver of a submitted job


class RunConsole:
    """What a person sees of a run: albert-batch's own log lines with its progress, the summary, and a
    failure in one line.

    Everything else the process writes — Ray's and Ray Data's logs, its workers' output, tracebacks — goes
    to a details log, ``<cache>/logs/<command>-<run id>.log`` (`albert_batch.config.cache_home`; ``finetune``
    and ``pretrain`` name theirs by the time they started), which the error
    line names. In a terminal the progress line (`albert_batch.pipeline.progress`) is one line, updated in
    place; elsewhere it is a log line every ``progress.interval_s()``.

    Inside a Ray job the job's log is the details log, so nothing is redirected; nor when the process's
    output is not its own file descriptors (a test capturing it). There Ray Data's progress tables and
    execution plans are kept to Ray Data's own log (``logs/ray-data/ray-data.log`` in the Ray session's
    folder). ``quiet`` prints only warnings, errors and the summary; ``verbose`` adds albert-batch's debug
    lines and keeps nothing back: no details log, Ray's output as Ray prints it."""

    def __init__(self, run_id: str, *, command: str = "run", quiet: bool = False, verbose: bool = False) -> None:
        self.quiet, self.verbose = quiet, verbose
        self.log_path: Path | None = None
        self._saved: list[int] = []
        self._handlers: list[tuple[logging.Logger, logging.Handler]] = []
        self._levels: list[tuple[logging.Logger | logging.Handler, int]] = []
        self._live: TerminalLine | None = None
        self._out, self._err = sys.stdout, sys.stderr
        if not verbose and os.environ.get(RAY_JOB_ENV) is None and _own_descriptors():
            self.log_path = cache_home() / "logs" / f"{command}-{run_id}.log"

    def __enter__(self) -> RunConsole:
        level = logging.WARNING if self.quiet else logging.INFO
        root = logging.getLogger()
        root.setLevel(logging.INFO)
        if self.verbose:
            self._set_level(log, logging.DEBUG)
            self._set_level(progress.log, logging.INFO)  # its debug lines are for a live display
        if self.log_path is None:
            logging.basicConfig(level=level, format=LOG_FORMAT)
            if not self.verbose:
                self._keep_ray_data_tables_to_its_log()
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        self._err = os.fdopen(os.dup(2), "w", buffering=1)
        with open(self.log_path, "ab") as details:  # the descriptors below keep it open
            os.dup2(details.fileno(), 1)
            os.dup2(details.fileno(), 2)
        details_handler = logging.StreamHandler(sys.stderr)
        details_handler.setLevel(logging.INFO)
        details_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        if not self.quiet and self._err.isatty():
            self._live = TerminalLine(self._err)  # of every level: it takes the progress logger's debug lines
            self._set_level(progress.log, logging.DEBUG)
        console = self._live or logging.StreamHandler(self._err)
        console.setLevel(logging.NOTSET if self._live else level)
        console.setFormatter(logging.Formatter(LOG_FORMAT))
        self._handlers = [(root, details_handler), (log, console)]
        for logger, handler in self._handlers:
            logger.addHandler(handler)
        log.info("details of this run are logged to %s", self.log_path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._live.clear()
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
        for thing, level in reversed(self._levels):
            thing.setLevel(level)
        if not self._saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self._out.close()
        self._err.close()

    def say(self, text: str, *, error: bool = False) -> None:
        """A line for the person running the command (and the details log)."""
        if self._live:
            self._live.clear()
        stream = self._err if error else self._out
        print(text, file=stream, flush=True)
        if self._saved:
            print(text, file=sys.stderr, flush=True)

    def _set_level(self, thing: logging.Logger | logging.Handler, level: int) -> None:
        """Set a level that `__exit__` puts back."""
        self._levels.append((thing, thing.level))
        thing.setLevel(level)

    def _keep_ray_data_tables_to_its_log(self) -> None:
        """Ray Data logs its progress tables every few seconds where stdout is not a terminal, to its log
        file and to a console handler; the console handler keeps only warnings and errors here."""
        import ray.data  # noqa: F401  (configures the "ray.data" logger)

        for handler in logging.getLogger("ray.data").handlers:
            if handler.name == "console":  # as Ray Data's logging configuration names it; "file" is the other
                self._set_level(handler, logging.WARNING)


class TerminalLine(logging.StreamHandler):
    """The console's log handler in a terminal: progress records keep one line at its bottom up to date,
    in place; other records print above it."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.status = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.name == progress.log.name:
                self.status, text = record.getMessage(), ""
            else:
                text = self.format(record) + "\n"
            try:
                width = os.get_terminal_size(self.stream.fileno()).columns or 80  # 0: a terminal that does not say
            except OSError:
                width = 80
            self.stream.write(f"\r\x1b[K{text}{self.status[:width - 1]}")  # a wrapped status is not rewritten
            self.flush()
        except Exception:
            self.handleError(record)

    def clear(self) -> None:
        """Take the progress line away (before the summary)."""
        with self.lock:
            if self.status:
                self.stream.write("\r\x1b[K")
                self.flush()
                self.status = ""


def _own_descriptors() -> bool:
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False
