"""The one retry policy of every storage operation (`translated`), and the translation of backend errors
into `albert_batch.errors`."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from albert_batch import metrics
from albert_batch.errors import NotFound, PermissionDenied, StorageError, Transient
from albert_batch.storage.locations import Location

log = logging.getLogger(__name__)

T = TypeVar("T")

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
            kind = _failure_kind(str(err))
            with _RETRIES_LOCK:
                _RETRIES[kind] += 1
            metrics.count("albert_batch_storage_retries", kind=kind)
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
