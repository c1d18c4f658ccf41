"""What a published partition holds, for people and machines: its quality figures (``_quality.json``),
drift against the previous partition of the same output, and a self-contained HTML report
(``_report.html``) beside them.

    sketch   mergeable counts the writer keeps per piece of staged work
    figures  the partition's figures, the drift checks and their thresholds, the Airflow quality gate
    report   the HTML page
    store    where the files live, and which partition is the previous one
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from albert_batch.errors import AlbertBatchError
from albert_batch.quality.figures import QUALITY, REPORT, QualityFigures, QualityGate, figures
from albert_batch.quality.sketch import Sketch

__all__ = ["QUALITY", "REPORT", "QualityFigures", "QualityGate", "Sketch", "partition_report", "stored_report"]

log = logging.getLogger(__name__)


def partition_report(sketch: Sketch, *, output: str, partition_path: str, run: Mapping[str, Any], input_rows: int,
                     rejects_by_reason: Mapping[str, int]) -> tuple[QualityFigures, dict[str, bytes]]:
    """A run's figures, with drift against the previous partition of ``output``, and the files to publish
    beside each of its tables: ``{_quality.json: ..., _report.html: ...}``."""
    from albert_batch.quality import report, store

    found = figures(sketch, partition=partition_path, run=run, input_rows=input_rows,
                    rejects_by_reason=rejects_by_reason)
    against = store.previous_partition(output, partition_path)
    previous = None
    if against:
        try:
            previous = store.read_figures(output, against)
        except (AlbertBatchError, ValueError, TypeError) as err:  # an unreadable old file must not fail today's run
            log.warning("drift not measured: the figures of %s cannot be read: %s", against, err)
    found = found.with_drift(previous)
    if found.shifted:
        log.warning("partition %s shifted against %s: %s", partition_path, against,
                    ", ".join(f"{name} {found.drift['checks'][name]['value']:.3f}" for name in found.shifted))
    return found, {QUALITY: found.to_json(), REPORT: report.render(found, previous).encode()}


def stored_report(output: str, partition_path: str, *, against: str | None = None) -> tuple[QualityFigures, str]:
    """The report of a published partition, from its ``_quality.json``: against the partition its drift was
    measured against, or against ``against`` (any other published partition), whose drift is computed here."""
    from albert_batch.quality import report, store

    found = store.read_figures(output, partition_path)
    if against is None and found.drift:
        against = found.drift["against"]
    previous = store.read_figures(output, against) if against else None
    if previous is not None and (found.drift or {}).get("against") != against:
        found = found.with_drift(previous)
    return found, report.render(found, previous)
