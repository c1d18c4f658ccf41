"""How far ahead a stage may run is set for one run's Ray Data execution and nowhere else.
(The bound itself is checked on a real run in tests/test_pipeline.py.)"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY
from ray.data.context import DataContext

from albert_batch.pipeline.backpressure import LIMITS_KEY, QueueLimits, RowsAhead, bounded_queues


def policies() -> list[type]:
    return DataContext.get_current().get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [])


def test_the_bound_holds_inside_the_block_and_is_gone_after_it():
    before, wait_before = list(policies()), DataContext.get_current().wait_for_min_actors_s
    limits = QueueLimits(rows=8192, bytes=2**25)
    with bounded_queues(limits, batch_rows=4096):
        assert DataContext.get_current().get_config(LIMITS_KEY) == limits
        assert DataContext.get_current().wait_for_min_actors_s > 0, "every actor up before the first task"
        assert RowsAhead in policies() and len(policies()) > 1  # beside Ray Data's own policies
    assert DataContext.get_current().get_config(LIMITS_KEY) is None
    assert policies() == before
    assert DataContext.get_current().wait_for_min_actors_s == wait_before


def test_the_bound_is_gone_after_a_failed_run_too():
    with pytest.raises(RuntimeError), bounded_queues(QueueLimits(100, 2**25), batch_rows=100):
        raise RuntimeError("the run failed")
    assert DataContext.get_current().get_config(LIMITS_KEY) is None
    assert RowsAhead not in policies()


def test_a_bound_below_one_batch_is_refused_it_could_wait_forever():
    with pytest.raises(ValueError, match="at least one batch"), bounded_queues(QueueLimits(100, 2**25), batch_rows=4096):
        pass


def operators(*names: str) -> list[SimpleNamespace]:
    """A chain of stand-ins for Ray Data's operators, each with the metrics the policy reads."""
    ops = [SimpleNamespace(name=name, output_dependencies=[], metrics=SimpleNamespace(
        rows_task_outputs_generated=0, bytes_task_outputs_generated=0,
        rows_inputs_of_submitted_tasks=0, bytes_inputs_of_submitted_tasks=0)) for name in names]
    for op, after in itertools.pairwise(ops):
        op.output_dependencies = [after]
    return ops


def produced(op: SimpleNamespace, rows: int, size: int) -> None:
    op.metrics.rows_task_outputs_generated, op.metrics.bytes_task_outputs_generated = rows, size


@pytest.mark.parametrize(("rows", "size", "may_start"), [
    (399, 10**9, True),   # fewer rows than the limit: the next stage may need them for a batch
    (400, 999, True),     # enough rows, but cheap ones (text): the queue may grow to the byte limit
    (400, 1000, False),   # both limits reached
])
def test_a_stage_waits_once_both_its_rows_and_its_bytes_are_ahead(rows, size, may_start):
    tokenize, model = operators("MapBatches(TokenizeStage)", "MapBatches(ModelStage)")
    policy = RowsAhead(DataContext.get_current(), {}, None)
    produced(tokenize, rows + 300, size + 700)
    model.metrics.rows_inputs_of_submitted_tasks, model.metrics.bytes_inputs_of_submitted_tasks = 300, 700
    with bounded_queues(QueueLimits(rows=400, bytes=1000), batch_rows=200):
        assert policy.can_add_input(tokenize) is may_start
        produced(model, 10**6, 10**12)
        assert policy.can_add_input(model), "the last stage, whose output the driver takes, is never held back"
