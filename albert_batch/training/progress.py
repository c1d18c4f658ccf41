"""A training run's progress as a person reads it: optimizer steps done of those planned, the epoch, steps
per second, the time left and the latest training loss.

Rank 0 of the Ray Train workers reports every step to a `StepCounter` actor; a thread of the driver
(`StepMonitor`) logs a line from it on `albert_batch.pipeline.progress.log`, as a batch run's progress is
logged: at INFO every `progress.interval_s()` seconds, and at DEBUG at every poll for a console that shows
progress live. The rate counts the steps this driver saw done, so a run resumed from a checkpoint does not
count the steps before it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from albert_batch.pipeline import progress

log = logging.getLogger(__name__)
POLL_S = 1.0


@dataclass(frozen=True)
class Step:
    """Where training stands after an optimizer step, as rank 0 reports it."""

    step: int
    steps: int  # planned: the epochs' steps, or --max-steps when it comes first
    epoch: int
    epochs: int
    loss: float


class StepCounter:
    """The last `Step` rank 0 reported (a worker group restarted from a checkpoint reports lower steps again)."""

    def __init__(self) -> None:
        self.last: Step | None = None

    def update(self, step: Step) -> None:
        self.last = step

    def get(self) -> Step | None:
        return self.last


def start_step_counter() -> Any:
    """The training run's `StepCounter` actor: it holds no CPU, on the driver's node; started again elsewhere
    if that node is lost (counting afresh from then)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0, scheduling_strategy=strategy, max_restarts=-1)(StepCounter).remote()


def report_step(counter: Any, step: Step) -> None:
    """Send ``step`` to ``counter`` without waiting (no counter: nothing)."""
    if counter is not None:
        counter.update.remote(step)


def line(step: Step, rate: float | None) -> str:
    """``progress: step 120 of 3,000 (4%), epoch 1 of 10, 3.1 steps/s, about 15m 29s left, loss 6.7230``."""
    share = step.step / step.steps if step.steps else 1.0
    text = f"progress: step {step.step:,} of {step.steps:,} ({share:.0%}), epoch {step.epoch} of {step.epochs}"
    if rate:
        text += f", {rate:.1f} steps/s"
        if step.steps > step.step:
            text += f", about {progress.duration((step.steps - step.step) / rate)} left"
    return f"{text}, loss {step.loss:.4f}"


class StepMonitor(threading.Thread):
    """Logs the progress of the training that reports to ``counter`` while the driver waits for it."""

    def __init__(self, counter: Any) -> None:
        super().__init__(name="albert-batch-training-progress", daemon=True)
        self.counter = counter
        self.interval_s = progress.interval_s()
        self._done = threading.Event()
        self._first: tuple[int, float] | None = None  # the first step seen, and when
        self._shown = -1  # the step of the last line: a line comes only when training has moved on

    def __enter__(self) -> StepMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join(timeout=10)

    def run(self) -> None:
        next_line = time.monotonic() + self.interval_s
        while not self._done.wait(POLL_S):
            now = time.monotonic()
            level = logging.INFO if now >= next_line else logging.DEBUG
            if level == logging.INFO:
                next_line = now + self.interval_s
            elif not progress.log.isEnabledFor(logging.DEBUG):
                continue
            try:
                self._log(level, now)
            except Exception as err:  # watching must never break the training it watches
                log.debug("training progress: %s", err)

    def _log(self, level: int, now: float) -> None:
        import ray

        step = ray.get(self.counter.get.remote(), timeout=10)
        if step is None or step.step == self._shown:
            return
        self._shown = step.step
        if self._first is None or step.step < self._first[0]:  # the first report, or a restart from a checkpoint
            self._first = (step.step, now)
        done, seconds = step.step - self._first[0], now - self._first[1]
        progress.log.log(level, line(step, done / seconds if done > 0 and seconds > 0 else None))
