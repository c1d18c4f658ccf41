"""Keep every stage of a run at most a few batches ahead of the stage after it, so that a run's memory
does not grow with its corpus.

Ray Data 2.60 holds an operator back only when the run's object-store budget fills (a share of the
object store that grows with the machine's memory). Below that budget each stage runs as far ahead as it
can: on a CPU cluster the tokenizer is ~20x faster than the model, so its features for most of the corpus
would wait in the object store for the model stage (0.75 GiB of a million short rows' peak; see
BENCHMARKS.md). Capping that budget instead stalls the model stage, whose outputs count against it too.

``RowsAhead`` is a Ray Data backpressure policy: an operator may start a new task only while fewer than
``max_rows`` of the rows it produced wait for a task of the operator after it. Tasks already running
finish; the last operator (the write) is never held back; and rows the next operator is still gathering
into one task's input do not count, so the model stage does not wait while the write gathers an output
file. ``max_rows`` must be at least one batch, or a stage that needs a full batch could wait forever for
an upstream stage that waits for it; ``rows_ahead_at_most`` checks that.

It plugs in through Ray Data's ``backpressure_policies.enabled`` setting, which is internal to Ray Data:
``pyproject.toml`` pins ray to 2.60.x, and tests/test_pipeline.py checks the bound on a real run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ray.data._internal.execution.backpressure_policy import (
    ENABLED_BACKPRESSURE_POLICIES,
    ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    BackpressurePolicy,
)
from ray.data.context import DataContext

if TYPE_CHECKING:
    from ray.data._internal.execution.interfaces.physical_operator import PhysicalOperator

MAX_ROWS_KEY = "albert_batch.max_rows_ahead"
FOREVER_S = 10**9  # Ray Data's no-progress timeout may be off (-1); a positive wait is needed to wait at all


class RowsAhead(BackpressurePolicy):
    """Refuse an operator new tasks while ``max_rows`` of its output rows wait for the next operator."""

    @property
    def name(self) -> str:
        return "RowsAhead"

    def can_add_input(self, op: PhysicalOperator) -> bool:
        max_rows = self._data_context.get_config(MAX_ROWS_KEY, None)
        return max_rows is None or rows_waiting(op) < max_rows


def rows_waiting(op: PhysicalOperator) -> int:
    """Rows ``op`` has produced, or is producing in tasks already started, that no task of the operator
    after it has taken yet (0 for the last operator).

    Rows of started tasks count from the start: Ray Data starts tasks faster than they produce output,
    and counting only output let the repartition start a task for every input file at once. (The stages
    after the read keep their rows: one row out per row in.) Rows the next operator is gathering into
    its next task's input do not count: the write gathers a whole output file's rows
    (``runner.ROWS_PER_FILE``) before it starts a task, and the model stage must not wait for that."""
    if len(op.output_dependencies) != 1:
        return 0
    (after,) = op.output_dependencies
    started = max(op.metrics.rows_task_outputs_generated, op.metrics.rows_inputs_of_submitted_tasks)
    return started - after.metrics.rows_inputs_of_submitted_tasks - _rows_gathering(after)


def _rows_gathering(op: PhysicalOperator) -> int:
    """Rows in ``op``'s partial next task input (a Ray Data map operator's bundler, until it is full)."""
    bundler = getattr(op, "_block_ref_bundler", None)
    if bundler is None or bundler.has_next():
        return 0
    return bundler.num_rows()


@contextlib.contextmanager
def bounded_queues(max_rows: int, *, batch_rows: int) -> Iterator[None]:
    """Within this block, Ray Data runs started in this process hold each stage to ``max_rows`` rows ahead
    of the next.

    They also start with every actor of the run up: while no operator has a task running, Ray Data lets
    one through whatever the policies say, so that a run cannot stall. Without the wait, the read and the
    repartition ran through a million rows, one task at a time, while the model actor loaded. The wait
    ends in a timeout error after Ray Data's no-progress timeout (30 minutes by default), the time it would
    otherwise wait for a stage that cannot start."""
    if max_rows < batch_rows:
        raise ValueError(f"max_rows ({max_rows}) must be at least one batch ({batch_rows} rows)")
    context = DataContext.get_current()
    saved_wait = context.wait_for_min_actors_s
    saved = {key: context.get_config(key, None) for key in (MAX_ROWS_KEY, ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY)}
    policies = context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES)
    context.set_config(MAX_ROWS_KEY, max_rows)
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
