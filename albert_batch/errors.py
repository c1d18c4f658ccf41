"""The one error hierarchy of albert-batch.

    AlbertBatchError                 base of everything this library raises on purpose
    ├── ConfigError                  settings are missing, malformed or contradict each other
    ├── InputError                   the input corpus cannot be used (columns, types, unreadable files)
    ├── OutputError                  the output location cannot be written (no such bucket, access denied)
    ├── ModelLoadError               a model cannot be found, is incomplete or is not the expected ALBERT head
    ├── StorageError                 reading or writing a location failed
    │   ├── NotFound
    │   ├── PermissionDenied
    │   └── Transient                worth retrying (throttling, timeouts, connection resets)
    ├── PublishError                 results could not be published atomically; nothing half-written is visible
    ├── ValidationError              a published partition does not keep the output contract (counts, schema)
    ├── RayUnavailable               the Ray cluster (its GCS or its dashboard) did not answer; worth retrying
    ├── NodeLost                     no node can host a model actor any more, for longer than the run waits
    ├── ErrorBudgetExceeded          more rows failed in processing than max_error_rate allows; nothing published
    ├── Stopped                      a signal (SIGTERM, SIGINT) stopped the run; its staged work is kept
    └── JobFailed                    a Ray job ran by the Airflow operator failed, was stopped or timed out

Every message names the thing that is wrong (the column, the file, the setting) and never contains a
secret. Backend errors are translated in `albert_batch.storage` and re-raised with ``raise ... from err``.
`exit_code` maps them to the command line's `ExitCode`: ConfigError, InputError, OutputError and
ModelLoadError to 2 (nothing was done; retrying cannot help), Stopped to 128 + the signal's number (130
for SIGINT, 143 for SIGTERM, as shells report), any other error to 1 (worth retrying).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``albert-batch``; Airflow's operator reads them from the Ray job."""

    OK = 0  # every partition was published
    FAILED = 1  # the run failed; nothing half-written is visible; worth retrying
    UNUSABLE = 2  # settings, input, output or models are unusable; nothing was done; retrying cannot help
    INTERRUPTED = 130  # SIGINT (Ctrl-C) stopped the run; its staged work is kept for the next run
    TERMINATED = 143  # SIGTERM stopped the run; its staged work is kept for the next run


class AlbertBatchError(Exception):
    """Base class of all errors raised by albert-batch."""


class ConfigError(AlbertBatchError, ValueError):
    """A setting is missing, malformed or contradicts another."""


class InputError(AlbertBatchError):
    """The input corpus cannot be processed as asked."""


class OutputError(AlbertBatchError):
    """The output location cannot be written: its bucket does not exist, the credentials may not write or
    delete there, or it is not a folder."""


class ModelLoadError(AlbertBatchError):
    """A model location does not hold a usable ALBERT model for the task."""


class StorageError(AlbertBatchError):
    """An operation on a storage location failed."""


class NotFound(StorageError):
    """The location does not exist."""


class PermissionDenied(StorageError):
    """The credentials in use may not access the location."""


class Transient(StorageError):
    """A failure that may succeed when retried."""


class PublishError(AlbertBatchError):
    """Results could not be published; the partitions keep their previous contents."""


class ValidationError(AlbertBatchError):
    """A published partition is missing, incomplete or does not match the output contract."""


class RayUnavailable(AlbertBatchError):
    """The Ray cluster could not be reached: connection refused, a timeout, or its dashboard answered 5xx
    (a head restarting behind a proxy). Nothing is known about the job's state."""


class NodeLost(AlbertBatchError):
    """The cluster lost every node that could host a model actor, and none joined in time; the staged work
    is kept, and the next run resumes it."""


class ErrorBudgetExceeded(AlbertBatchError):
    """More input rows were rejected as processing errors than the run's ``max_error_rate`` allows: the run
    publishes nothing, and its message names the most frequent error. The staged work is kept."""


class Stopped(AlbertBatchError):
    """A signal stopped the run before it published anything; the staged work is kept for the next run."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class JobFailed(AlbertBatchError):
    """A submitted Ray job did not succeed; the message carries its status, error and log tail."""


def exit_code(err: AlbertBatchError) -> int:
    """The exit code of a command that failed with ``err``."""
    if isinstance(err, Stopped):
        return 128 + err.signum
    return ExitCode.UNUSABLE if isinstance(err, (ConfigError, InputError, OutputError, ModelLoadError)) else ExitCode.FAILED
