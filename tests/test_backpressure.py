"""How far ahead a stage may run is set for one run's Ray Data execution and nowhere else.
(The bound itself is checked on a real run in tests/test_pipeline.py.)"""

from __future__ import annotations

import pytest
from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY
from ray.data.context import DataContext

from albert_batch.backpressure import LIMITS_KEY, RowLimits, RowsAhead, bounded_queues


def policies() -> list[type]:
    return DataContext.get_current().get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [])


def test_the_bound_holds_inside_the_block_and_is_gone_after_it():
    before, wait_before = list(policies()), DataContext.get_current().wait_for_min_actors_s
    limits = RowLimits(between_stages=8192, into_write=108_192)
    with bounded_queues(limits, batch_rows=4096):
        assert DataContext.get_current().get_config(LIMITS_KEY) == limits
        assert DataContext.get_current().wait_for_min_actors_s > 0, "every actor up before the first task"
        assert RowsAhead in policies() and len(policies()) > 1  # beside Ray Data's own policies
    assert DataContext.get_current().get_config(LIMITS_KEY) is None
    assert policies() == before
    assert DataContext.get_current().wait_for_min_actors_s == wait_before


def test_the_bound_is_gone_after_a_failed_run_too():
    with pytest.raises(RuntimeError), bounded_queues(RowLimits(100, 100), batch_rows=100):
        raise RuntimeError("the run failed")
    assert DataContext.get_current().get_config(LIMITS_KEY) is None
    assert RowsAhead not in policies()


def test_a_bound_below_one_batch_is_refused_it_could_wait_forever():
    with pytest.raises(ValueError, match="at least one batch"), bounded_queues(RowLimits(8192, 100), batch_rows=4096):
        pass
