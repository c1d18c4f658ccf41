"""What watches a run while its stages work, from a thread of the driver: its progress (rows staged, see
`albert_batch.pipeline.progress`), the gauges of its metrics (`albert_batch.metrics`: rows waiting between
stages and actors alive at every poll, from the run's ledger; units staged with each progress line, from the
staging folder), and the cluster's capacity for model actors.

Ray restarts a model actor whose node is lost on another node that can host it, and Ray Data waits for
it meanwhile, however long that takes. When no node of the cluster can host a model actor any more (it
had one before) and the writer stages nothing more, the run waits ``wait_for_nodes_s`` for a node to join
(an autoscaler replacing a spot node), then fails with `NodeLost`; its staged work is kept for the next
run. (While the writer still stages pieces, the run is not stuck: the model stage may be done.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from albert_batch import metrics
from albert_batch.errors import NodeLost
from albert_batch.pipeline import ledger as ledger_module
from albert_batch.pipeline import progress, staging
from albert_batch.pipeline.interrupts import Interrupts
from albert_batch.storage import Location

log = logging.getLogger(__name__)

POLL_S = 2.0


class Monitor(threading.Thread):
    def __init__(self, *, folder: Location, unit_rows: Mapping[int, int], total_rows: int,
                 actor_needs: Mapping[str, float], wait_for_nodes_s: float, interrupts: Interrupts,
                 ledger: ledger_module.RunLedger | None = None, units: int | None = None,
                 run_id: str | None = None) -> None:
        """``unit_rows`` (unit -> rows) are the units this run (``run_id``) processes, of ``units`` units and
        ``total_rows`` input rows (the others are reused, with pieces of earlier runs that may name other units
        by the same numbers); built as the processing starts, which the rate counts from.
        ``ledger`` is the run's `albert_batch.pipeline.ledger.RunLedger`."""
        super().__init__(name="albert-batch-monitor", daemon=True)
        self.folder = folder
        self.run_id = run_id
        self.ledger = ledger
        self.units = len(unit_rows) if units is None else units
        self.unit_rows = dict(unit_rows)
        self.actor_needs = {name: amount for name, amount in actor_needs.items() if amount > 0}
        self.wait_for_nodes_s = wait_for_nodes_s
        self.interrupts = interrupts
        self.progress_s = progress.interval_s()
        self.progress = progress.Progress(total_rows=total_rows, reused_rows=total_rows - sum(self.unit_rows.values()),
                                          started=time.monotonic())
        self._done = threading.Event()
        self._pieces: dict[str, staging.Piece] = {}

    def __enter__(self) -> Monitor:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._done.set()
        self.join(timeout=10)
        if exc_type is None:  # the stages are done: the last line and gauges say where they ended
            try:
                self._log_progress(logging.INFO, self._set_gauges())
            except Exception as err:  # a failed look at the staging folder is the runner's to report
                log.debug("monitor: %s", err)

    def run(self) -> None:
        had_capacity, lacking_since, pieces, stalled_since = False, None, -1, 0.0
        next_progress = time.monotonic() + self.progress_s
        while not self._done.wait(POLL_S):
            now = time.monotonic()
            try:
                if self._capacity():
                    if lacking_since is not None:
                        log.info("a node that can host a model actor is back")
                    had_capacity, lacking_since = True, None
                elif had_capacity:
                    staged = len(staging.read_pieces(self.folder, self._pieces))
                    if staged != pieces:
                        pieces, stalled_since = staged, now
                    if lacking_since is None:
                        lacking_since = now
                        log.warning("no node of the cluster can host a model actor (it needs %s): waiting up to "
                                    "%.0fs for one to join", self.actor_needs, self.wait_for_nodes_s)
                    elif now - max(lacking_since, stalled_since) >= self.wait_for_nodes_s:
                        self.interrupts.fail(NodeLost(
                            f"no node of the cluster could host a model actor (it needs {self.actor_needs}) for "
                            f"{self.wait_for_nodes_s:.0f}s after the last one was lost; the staged work is kept, "
                            "and the next run of the partition resumes it"))
                        return
                figures = self._set_gauges()
                if now >= next_progress:
                    next_progress = now + self.progress_s
                    self._log_progress(logging.INFO, figures)
                elif progress.log.isEnabledFor(logging.DEBUG):  # someone shows progress live
                    self._log_progress(logging.DEBUG, figures)
            except Exception as err:  # watching must never break the run it watches
                log.debug("monitor: %s", err)

    def _capacity(self) -> bool:
        import ray

        total = ray.cluster_resources()  # the alive nodes' resources
        return all(total.get(name, 0.0) >= amount - 1e-9 for name, amount in self.actor_needs.items())

    def _figures(self) -> dict[str, Any]:
        return self.ledger.snapshot() if self.ledger is not None else {"rows": {}}

    def _set_gauges(self) -> dict[str, Any]:
        """The gauges, from one look at the ledger's figures, which it returns for the progress line."""
        rows = (figures := self._figures())["rows"]
        modelled, staged = min(rows.get("modelled", 0), rows.get("read", 0)), rows.get("staged", 0)
        metrics.set_gauge("albert_batch_rows_waiting", rows.get("read", 0) - modelled, stage="model")
        metrics.set_gauge("albert_batch_rows_waiting", max(0, modelled - staged), stage="write")
        for stage in (ledger_module.MODEL, ledger_module.TOKENIZE):
            metrics.set_gauge("albert_batch_actors", figures.get("alive", {}).get(stage, 0), stage=stage)
        for state, units in (("planned", self.units), ("reused", self.units - len(self.unit_rows))):
            metrics.set_gauge("albert_batch_units", units, state=state)
        return figures

    def _log_progress(self, level: int, figures: Mapping[str, Any]) -> None:
        """The progress line, with the rows through the model from ``figures`` (the ledger's); and the units
        staged gauge, from the same look at the staging folder (a listing, so not at every poll)."""
        pieces = [p for p in staging.read_pieces(self.folder, self._pieces) if self.run_id in (None, p.run_id)]
        by_unit = progress.staged_by_unit(pieces, self.unit_rows)
        units = sum(1 for unit, rows in by_unit.items() if rows == self.unit_rows[unit])
        metrics.set_gauge("albert_batch_units", self.units - len(self.unit_rows) + units, state="staged")
        staged = done = sum(by_unit.values())
        if self.ledger is not None:
            scored = figures["rows"].get("modelled", 0)
            done = max(done, min(scored, sum(self.unit_rows.values())))
        reused = self.progress.reused_rows
        progress.log.log(level, self.progress.line(reused + done, time.monotonic(), staged_rows=reused + staged))
