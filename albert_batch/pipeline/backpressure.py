"""Keep every stage of a run at most a few batches ahead of the stage after it, so that a run's memory
does not grow with its corpus.

Ray Data 2.60 holds an operator back only when the run's object-store budget fills (a share of the
object store that grows with the machine's memory). Below that budget each stage runs as far ahead as it
can: the read and the tokenizer are far faster than a model stage on CPUs, so most of the corpus, or its
features, would wait in the object store for the model stage (BENCHMARKS.md, "Memory"). Capping that
budget instead stalls the model stage, whose outputs count against it too.

``RowsAhead`` is a Ray Data backpressure policy: an operator may start a new task only while fewer than
``QueueLimits.rows`` of its rows, or less than ``QueueLimits.bytes`` of its output, wait for a task of the
operator after it. The rows keep the next stage fed (a spare batch per model actor) and make the limit
safe: a stage that needs a full batch never waits for an upstream stage that waits for it. The bytes let
cheap queues run a little longer: held to a few batches of short text, the repartition of the next
input file would wait until the tokenizer had almost run dry. Tasks already running finish, and
the last operator (the model stage) is never held back: the driver takes its output as it comes and hands
it to the writer (`albert_batch.pipeline.writer.WriteQueue`), which holds the model stage back itself when
its writes fall behind.

It plugs in through Ray Data's ``backpressure_policies.enabled`` setting, which is internal to Ray Data:
``pyproject.toml`` pins ray to 2.60.x, and the test suite checks the bound on a real run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray.data._internal.execution.backpressure_policy import (
    ENABLED_BACKPRESSURE_POLICIES,
    ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    BackpressurePolicy,
)
from ray.data.context import DataContext

if TYPE_CHECKING:
    from ray.data._internal.execution.interfaces.physical_operator import PhysicalOperator

LIMITS_KEY = "albert_batch.queue_limits"
FOREVER_S = 10**9  # Ray Data's no-progress timeout may be off (-1); a positive wait is needed to wait at all


@dataclass(frozen=True)
class QueueLimits:
    rows: int  # a stage may run ahead of the next by this many rows ...
    bytes: int  # ... or by this much output


class RowsAhead(BackpressurePolicy):
    """Refuse an operator new tasks while its limit of rows, and of bytes, waits for the next operator."""

    @property
    def name(self) -> str:
        return "RowsAhead"

    def can_add_input(self, op: PhysicalOperator) -> bool:
        limits: QueueLimits | None = self._data_context.get_config(LIMITS_KEY, None)
        if limits is None or len(op.output_dependencies) != 1:
            return True
        (after,) = op.output_dependencies
        rows, size = waiting(op, after)
        return rows < limits.rows or size < limits.bytes


def waiting(op: PhysicalOperator, after: PhysicalOperator) -> tuple[int, int]:
    """Rows and bytes that ``op`` has produced and no task of ``after`` has taken yet."""
    return (
        op.metrics.rows_task_outputs_generated - after.metrics.rows_inputs_of_submitted_tasks,
        op.metrics.bytes_task_outputs_generated - after.metrics.bytes_inputs_of_submitted_tasks,
    )


@contextlib.contextmanager
def bounded_queues(limits: QueueLimits, *, batch_rows: int) -> Iterator[None]:
    """Within this block, Ray Data runs started in this process hold each stage to ``limits``.

    They also start with every actor of the run up: while no operator has a task running, Ray Data lets
    one through whatever the policies say, so that a run cannot stall, and while the model actors load,
    the read, the repartition and the tokenizer would run ahead that way. The wait ends in a timeout error
    after Ray Data's no-progress timeout (30 minutes by default), the time it would otherwise wait for a
    stage that cannot start."""
    if limits.rows < batch_rows:
        raise ValueError(f"{limits}: the row limit must be at least one batch ({batch_rows} rows)")
    context = DataContext.get_current()
    saved_wait = context.wait_for_min_actors_s
    saved = {key: context.get_config(key, None) for key in (LIMITS_KEY, ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY)}
    policies = context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES)
    context.set_config(LIMITS_KEY, limits)
    context.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [*policies, RowsAhead])
    no_progress_s = context.execution_no_progress_timeout_s
    context.wait_for_min_actors_s = int(no_progress_s) if no_progress_s > 0 else FOREVER_S
    try:
        yield
    finally:
        context.wait_for_min_actors_s = saved_wait
        for key, value in saved.items():
            if value is None:
                context.remove_config(key)
            else:
                context.set_config(key, value)
