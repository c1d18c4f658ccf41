"""The pipeline's metrics, recorded through Ray's metrics API (`ray.util.metrics`): every Ray node exports
them beside Ray's own on its metrics export port (``ray start --metrics-export-port``), in Prometheus text
format, each series tagged with the process that recorded it (Ray adds ``WorkerId``, ``NodeAddress`` and
``SessionName``). Prometheus sees each name with Ray's ``ray_`` prefix, and a counter with ``_total`` after
it: `albert_batch_rows_read` is scraped as ``ray_albert_batch_rows_read_total``.

Tags are bounded: the run id and partition (bound once per process with `bind`), and where a metric has
them a task, a reject reason, a token kind, a stage or a state; never a row id or a file name.

Counters are counted where the work happens, so a batch that Ray runs again (its actor died) counts again;
the run's summary counts each row once, from what its writer staged. Outside a Ray worker or driver (a
stage called on a table in a test, the CLI's checks before Ray starts) recording does nothing, and so it
does where ``ALBERT_BATCH_METRICS=0`` is set (in the environment of the run and its cluster's workers).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Literal

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
RUN_TAGS = ("run_id", "partition")
# Seconds of one forward pass: from a short batch on a GPU to a long one on a busy CPU.
FORWARD_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    tags: tuple[str, ...] = ()  # beside RUN_TAGS
    boundaries: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The name Prometheus sees (a histogram's series add ``_bucket``, ``_sum`` and ``_count``)."""
        return f"ray_{self.name}" + ("_total" if self.kind == COUNTER else "")


METRICS = {m.name: m for m in (
    Metric("albert_batch_rows_read", COUNTER, "Input rows read from the corpus."),
    Metric("albert_batch_rows_processed", COUNTER, "Accepted rows a task's model has run on.", ("task",)),
    Metric("albert_batch_rows_rejected", COUNTER, "Rows staged as rejects, by reason.", ("reason",)),
    Metric("albert_batch_rows_staged", COUNTER, "Input rows whose results the writer has staged."),
    Metric("albert_batch_text_tokens", COUNTER, "Tokens of the accepted rows' texts (special tokens excluded), "
           "as staged."),
    Metric("albert_batch_forward_tokens", COUNTER, "Tokens a task's forward passes computed: real (special tokens "
           "included) or padding.", ("task", "kind")),
    Metric("albert_batch_forward_seconds", HISTOGRAM, "Seconds of one forward pass.", ("task",), FORWARD_SECONDS),
    Metric("albert_batch_model_busy_seconds", COUNTER, "Seconds a model actor spent in forward passes; its rate "
           "per actor (WorkerId) is the share of its time the actor computes."),
    Metric("albert_batch_rows_waiting", GAUGE, "Rows read but not yet through the model (stage=model), or "
           "through the model but not yet staged (stage=write).", ("stage",)),
    Metric("albert_batch_units", GAUGE, "The run's units of work: planned, reused from earlier runs, staged.",
           ("state",)),
    Metric("albert_batch_actors", GAUGE, "Stage actors alive (stage=model or tokenize).", ("stage",)),
    Metric("albert_batch_storage_retries", COUNTER, "Storage operations retried, by kind of failure.", ("kind",)),
)}

ENABLED_ENV = "ALBERT_BATCH_METRICS"
_bound: dict[str, str] = dict.fromkeys(RUN_TAGS, "")
_made: dict[str, Any] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class RunTags:
    """The tags every metric of a run carries; handed to each stage, which `bind`s them in its process."""

    run_id: str
    partition: str


def bind(tags: RunTags) -> None:
    """Tag what this process records from now on with ``tags``' run and partition."""
    _bound.update(run_id=tags.run_id, partition=tags.partition)


def count(name: str, value: float = 1, **tags: str) -> None:
    if value:
        _record(name, "inc", value, tags)


def observe(name: str, value: float, **tags: str) -> None:
    _record(name, "observe", value, tags)


def set_gauge(name: str, value: float, **tags: str) -> None:
    _record(name, "set", value, tags)


def _record(name: str, method: str, value: float, tags: dict[str, str]) -> None:
    ray = sys.modules.get("ray")  # a process that never imported Ray records nothing, and never imports it here
    if ray is None or not ray.is_initialized() or os.environ.get(ENABLED_ENV) == "0":
        return
    metric = _made.get(name) or _make(METRICS[name])
    getattr(metric, method)(value, tags={**_bound, **tags})


def _make(spec: Metric) -> Any:
    from ray.util import metrics

    with _lock:
        if spec.name not in _made:
            keys = (*RUN_TAGS, *spec.tags)
            if spec.kind == COUNTER:
                _made[spec.name] = metrics.Counter(spec.name, spec.help, tag_keys=keys)
            elif spec.kind == GAUGE:
                _made[spec.name] = metrics.Gauge(spec.name, spec.help, tag_keys=keys)
            else:
                _made[spec.name] = metrics.Histogram(spec.name, spec.help, boundaries=list(spec.boundaries),
                                                     tag_keys=keys)
        return _made[spec.name]
