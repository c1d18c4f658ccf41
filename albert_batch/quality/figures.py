"""A published partition's quality figures (``_quality.json``), and drift against an earlier partition.

Drift is measured per check with one documented statistic and threshold (`DRIFT_CHECKS`):

- ``label_shift`` and ``entity_type_shift``: the **total-variation distance** between the two partitions'
  shares, ``0.5 * sum(|p_i - q_i|)``, the share of rows (entities) whose label would have to change to
  turn one mix into the other. Chosen over the population-stability index because it is bounded (0..1),
  reads as a share, and needs no smoothing when a label is missing from one side (PSI is infinite there).
  Its sampling noise between two partitions of n rows from one distribution is about ``sqrt(k / n)`` for
  k labels, under 0.03 for a thousand rows and two labels; the threshold, 0.1, sits well above that.
- ``mean_score_change``: the absolute change of the mean classification score (threshold 0.1).
- ``reject_rate_change``: the absolute change of the share of input rows rejected (threshold 0.02).

Each check says ``shifted`` when its value exceeds the threshold; the figures say ``shifted`` when any does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from albert_batch.contract import RejectReason
from albert_batch.errors import ConfigError
from albert_batch.quality.sketch import LOW_CONFIDENCE, SCORE_BINS, TOKEN_EDGES, Sketch

QUALITY = "_quality.json"
REPORT = "_report.html"
TOP_TEXTS = 10
THROUGHPUT_BUCKETS = 60


@dataclass(frozen=True)
class DriftCheck:
    name: str
    statistic: str
    threshold: float
    about: str


DRIFT_CHECKS = (
    DriftCheck("label_shift", "total-variation distance of label shares", 0.1, "classification labels"),
    DriftCheck("entity_type_shift", "total-variation distance of entity-type shares", 0.1, "entity types"),
    DriftCheck("mean_score_change", "absolute change of the mean score", 0.1, "classification confidence"),
    DriftCheck("reject_rate_change", "absolute change of the reject rate", 0.02, "rejected input rows"),
)


@dataclass(frozen=True, kw_only=True)
class QualityFigures:
    """What a partition holds, for people (the report) and machines (gates): ``_quality.json``.

    ``classification`` and ``entities`` are None when the run had no such task; ``drift`` is None when no
    earlier partition of the output has figures to compare with."""

    partition: str  # its path, e.g. dt=2026-11-28
    run: dict[str, Any]  # run_id, output, models {task: {location, weights_sha256}}, precision, seconds, ...
    rows: dict[str, Any]  # input, processed, rejected, rejected_by_reason
    reject_rate: float
    tokens: dict[str, Any]  # edges (bin starts), counts, mean
    throughput: dict[str, Any]  # start (ISO), bucket_s, rows per bucket
    classification: dict[str, Any] | None = None  # labels, label_shares, mean_score, low_confidence_share, ...
    entities: dict[str, Any] | None = None  # types, type_shares, per_document, mean_per_document, top_texts
    drift: dict[str, Any] | None = None  # against, against_run_id, checks {name: {value, threshold, ...}}, shifted
    error_rate: float = 0.0  # the share of input rows rejected as processing errors (a stage raised for them)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=2, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> QualityFigures:
        raw = json.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @property
    def shifted(self) -> list[str]:
        """The drift checks that fired."""
        if not self.drift:
            return []
        return [name for name, check in self.drift["checks"].items() if check["shifted"]]

    def with_drift(self, previous: QualityFigures | None) -> QualityFigures:
        return dataclasses.replace(self, drift=drift(self, previous) if previous else None)


def figures(sketch: Sketch, *, partition: str, run: Mapping[str, Any], input_rows: int,
            rejects_by_reason: Mapping[str, int]) -> QualityFigures:
    """The figures of a partition from the merged sketch of its pieces and the run's counts."""
    rejected = sum(rejects_by_reason.values())
    classification = entities = None
    if sketch.labels:
        rows = sum(sketch.labels.values())
        classification = {
            "labels": dict(sorted(sketch.labels.items())),
            "label_shares": _shares(sketch.labels),
            "mean_score": sketch.score_sum / rows,
            "low_confidence_below": LOW_CONFIDENCE,
            "low_confidence_share": sketch.low_confidence / rows,
            "truncated_share": sketch.truncated / rows,
            "score_bins": SCORE_BINS,
            "score_histograms": dict(sorted(sketch.scores.items())),
        }
    if sketch.entity_docs:
        found = sum(sketch.entity_types.values())
        per_doc = sketch.entities_per_doc
        entities = {
            "entities": found,
            "types": dict(sorted(sketch.entity_types.items())),
            "type_shares": _shares(sketch.entity_types),
            "per_document": per_doc,  # documents with 0, 1, ... entities; the last bin is "or more"
            "mean_per_document": found / sketch.entity_docs,
            "documents_without_entities_share": per_doc[0] / sketch.entity_docs,
            "top_texts": {label: sorted(texts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TEXTS]
                          for label, texts in sorted(sketch.entity_texts.items())},
        }
    return QualityFigures(
        partition=partition,
        run=dict(run),
        rows={"input": input_rows, "processed": input_rows - rejected, "rejected": rejected,
              "rejected_by_reason": dict(sorted(rejects_by_reason.items()))},
        reject_rate=rejected / input_rows if input_rows else 0.0,
        error_rate=rejects_by_reason.get(RejectReason.PROCESSING_ERROR.value, 0) / input_rows if input_rows else 0.0,
        tokens={"edges": list(TOKEN_EDGES), "counts": sketch.tokens,
                "mean": sketch.tokens_sum / sketch.rows if sketch.rows else 0.0},
        throughput=_throughput(sketch.processed),
        classification=classification,
        entities=entities,
    )


def drift(current: QualityFigures, previous: QualityFigures) -> dict[str, Any]:
    """The `DRIFT_CHECKS` of ``current`` against ``previous``; a check whose figures one side lacks is left out."""
    values: dict[str, float] = {"reject_rate_change": abs(current.reject_rate - previous.reject_rate)}
    if current.classification and previous.classification:
        values["label_shift"] = total_variation(current.classification["label_shares"],
                                                previous.classification["label_shares"])
        values["mean_score_change"] = abs(current.classification["mean_score"] - previous.classification["mean_score"])
    if current.entities and previous.entities:
        values["entity_type_shift"] = total_variation(current.entities["type_shares"],
                                                      previous.entities["type_shares"])
    checks = {
        check.name: {"value": round(values[check.name], 6), "threshold": check.threshold,
                     "statistic": check.statistic, "shifted": values[check.name] > check.threshold}
        for check in DRIFT_CHECKS if check.name in values
    }
    return {"against": previous.partition, "against_run_id": previous.run.get("run_id"), "checks": checks,
            "shifted": any(c["shifted"] for c in checks.values())}


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """0.5 * sum |p_i - q_i| over the union of the categories (a missing one has share 0)."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def _shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}


def _throughput(processed: Mapping[str, int]) -> dict[str, Any]:
    """Rows processed per time bucket over the span of the rows' ``processed_at`` (at most
    `THROUGHPUT_BUCKETS` buckets of whole seconds)."""
    if not processed:
        return {"start": None, "bucket_s": 1, "rows": []}
    seconds = {int(k): v for k, v in processed.items()}
    first, last = min(seconds), max(seconds)
    bucket = max(1, -(-(last - first + 1) // THROUGHPUT_BUCKETS))
    rows = [0] * ((last - first) // bucket + 1)
    for second, count in seconds.items():
        rows[(second - first) // bucket] += count
    return {"start": dt.datetime.fromtimestamp(first, dt.UTC).isoformat(), "bucket_s": bucket, "rows": rows}


@dataclass(frozen=True, kw_only=True)
class QualityGate:
    """Thresholds a scheduled run's published figures must keep (the DAG config's ``quality:``).

    A threshold left unset falls back to the drift flag of its check (``max_label_shift`` to
    ``label_shift``'s, and so on); ``max_reject_rate`` and ``max_error_rate`` (rows rejected as processing
    errors; a run fails before publishing past its own ``max_error_rate``, so a gate's is a stricter one)
    have no such flag and are off unless set. A breach
    fails the Airflow task when ``on_breach`` is ``fail`` and is logged as a warning when it is ``warn``
    (the default)."""

    max_label_shift: float | None = None
    max_entity_type_shift: float | None = None
    max_mean_score_change: float | None = None
    max_reject_rate_change: float | None = None
    max_reject_rate: float | None = None
    max_error_rate: float | None = None
    on_breach: str = "warn"

    def __post_init__(self) -> None:
        if self.on_breach not in ("warn", "fail"):
            raise ConfigError(f"quality.on_breach must be 'warn' or 'fail', not {self.on_breach!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("max_") and value is not None and not (
                    isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
                raise ConfigError(f"quality.{f.name} must be a number >= 0, not {value!r}")

    @property
    def limits(self) -> dict[str, float]:
        """The thresholds set, by the figure they bound (``max_label_shift`` -> ``label_shift``)."""
        return {f.name[len("max_"):]: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name.startswith("max_") and getattr(self, f.name) is not None}

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> QualityGate:
        raw = dict(raw or {})
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(raw) - known):
            raise ConfigError(f"quality has unknown keys {unknown}; it takes {sorted(known)}")
        return cls(**raw)

    def breaches(self, figures: QualityFigures) -> list[str]:
        """Each threshold the figures exceed, in words."""
        found = []
        if "reject_rate" in self.limits and figures.reject_rate > self.limits["reject_rate"]:
            found.append(f"reject rate {figures.reject_rate:.4f} > max_reject_rate {self.limits['reject_rate']}")
        if "error_rate" in self.limits and figures.error_rate > self.limits["error_rate"]:
            found.append(f"processing error rate {figures.error_rate:.4f} > max_error_rate {self.limits['error_rate']}")
        checks = (figures.drift or {}).get("checks", {})
        against = (figures.drift or {}).get("against")
        for name, check in sorted(checks.items()):
            limit = self.limits.get(name)
            if limit is None and check["shifted"]:
                found.append(f"{name} {check['value']:.4f} against {against} > its drift threshold {check['threshold']}")
            elif limit is not None and check["value"] > limit:
                found.append(f"{name} {check['value']:.4f} against {against} > max_{name} {limit}")
        return found
