"""What watches a run while its stages work, from a thread of the driver: its progress (rows staged, see
`albert_batch.pipeline.progress`), and the cluster's capacity for model actors.

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

from albert_batch.errors import NodeLost
from albert_batch.pipeline import progress, staging
from albert_batch.pipeline.interrupts import Interrupts
from albert_batch.storage import Location

log = logging.getLogger(__name__)

POLL_S = 2.0


class Monitor(threading.Thread):
    def __init__(self, *, folder: Location, unit_rows: Mapping[int, int], total_rows: int,
                 actor_needs: Mapping[str, float], wait_for_nodes_s: float, interrupts: Interrupts,
                 counter: Any = None) -> None:
        """``unit_rows`` (unit -> rows) are the units this run processes, of ``total_rows`` input rows (the
        others are reused); built as the processing starts, which the rate counts from. ``counter`` is the
        model stage's `progress.RowCounter` actor."""
        super().__init__(name="albert-batch-monitor", daemon=True)
        self.folder = folder
        self.counter = counter
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
        if exc_type is None:  # the stages are done: the last line says where they ended
            try:
                self._log_progress(logging.INFO)
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
                if now >= next_progress:
                    next_progress = now + self.progress_s
                    self._log_progress(logging.INFO)
                elif progress.log.isEnabledFor(logging.DEBUG):  # someone shows progress live
                    self._log_progress(logging.DEBUG)
            except Exception as err:  # watching must never break the run it watches
                log.debug("monitor: %s", err)

    def _capacity(self) -> bool:
        import ray

        total = ray.cluster_resources()  # the alive nodes' resources
        return all(total.get(name, 0.0) >= amount - 1e-9 for name, amount in self.actor_needs.items())

    def _log_progress(self, level: int) -> None:
        staged = progress.rows_staged(staging.read_pieces(self.folder, self._pieces), self.unit_rows)
        done = staged
        if self.counter is not None:
            import ray

            scored = ray.get(self.counter.total.remote(), timeout=10)
            done = max(done, min(scored, sum(self.unit_rows.values())))
        reused = self.progress.reused_rows
        progress.log.log(level, self.progress.line(reused + done, time.monotonic(), staged_rows=reused + staged))
