"""One bad row costs one row. When a stage (tokenizer, model or write) raises an error for a batch because
of the batch's data, the rows that cause it are found by splitting the batch and calling the stage on the
parts; those rows are rejected with reason ``processing_error`` and a ``detail`` (the error's type and the
first line of its message), and the rest of the batch goes on with the results of the parts that passed.

How a data failure is told from an infrastructure failure (`is_data_error`):

- Most infrastructure failures never reach a stage's code as an exception: a dead worker, a lost node or a
  process killed for its memory ends the task or the actor, and Ray retries the task or restarts the actor
  (the run's retry and resume paths, unchanged).
- Those that do reach it are re-raised as they are, never split: albert-batch's own errors (a storage
  operation that failed after its retries, a model that cannot load), ``MemoryError`` and torch's
  out-of-memory error, ``OSError`` (connections, files), Ray's own errors, and signals and exits.
- Any other exception that the stage's code raises for a batch is the data's, if it is also raised for a
  part of the batch: splitting ends at single rows, and those rows are the ones that fail. A batch that
  fails while no part of it does was not failed by its data, and its error is raised.

So the same rows are rejected by every run of the same input and settings, a resumed one included; a model
that fails every row rejects every row, and the run's failure budget (``max_error_rate``) fails the run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from albert_batch.contract import RejectReason
from albert_batch.errors import AlbertBatchError

log = logging.getLogger(__name__)

REASON = "reject_reason"
DETAIL = "reject_detail"
DETAIL_CHARS = 300
# A failing batch is cut in halves, and each failing half again. The halves that pass are kept, so one bad
# row costs the failed attempts (at most about one more pass over the batch, when the error comes at the
# end of the work) and the lower efficiency of smaller parts; cutting into more parts at first wastes less
# on failed attempts, but measured slower on CPU model actors, whose forward passes are far less efficient
# on a few dozen rows than on a batch (BENCHMARKS.md, "One bad row").
FIRST_SPLIT = 2
# Test-only: rows whose id is listed fail in that stage, e.g. {"tokenize": [3], "model": [5], "write": [7]}.
# The driver reads it and hands it to the stages; unset, nothing is injected.
FAULTS_ENV = "ALBERT_BATCH_TEST_FAULTS"
STAGES = ("tokenize", "model", "write")
_NOT_DATA_NAMES = {"OutOfMemoryError"}  # torch.OutOfMemoryError (a RuntimeError), named so torch stays unimported


class InjectedFault(RuntimeError):
    """The test-only fault hook's error (see `FAULTS_ENV`)."""


def is_data_error(err: BaseException) -> bool:
    """Whether ``err``, raised by a stage's code for a batch, may be the batch's data's doing (see above)."""
    if not isinstance(err, Exception):
        # Rust panics in the tokenizer (pyo3's PanicException) derive from BaseException; signals, exits do too.
        return type(err).__name__ == "PanicException"
    if isinstance(err, (AlbertBatchError, MemoryError, OSError)) or type(err).__name__ in _NOT_DATA_NAMES:
        return False
    return not type(err).__module__.startswith("ray.")


def detail_of(err: BaseException) -> str:
    """The error's type and the first line of its message, shortened: what the rejects table records."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"


def accepted_rows(batch: pa.Table) -> np.ndarray:
    """Positions of the rows not rejected so far (every row, for a batch without reject columns)."""
    if REASON not in batch.column_names:
        return np.arange(batch.num_rows)
    return np.flatnonzero(pc.is_null(batch.column(REASON)).to_numpy(zero_copy_only=False))


def mark_rejected(batch: pa.Table, failed: Mapping[int, str]) -> pa.Table:
    """``batch`` with the rows at ``failed``'s positions rejected as processing errors, with their detail."""
    size = batch.num_rows
    reasons = batch.column(REASON).to_pylist() if REASON in batch.column_names else [None] * size
    found = details(batch).to_pylist()
    for position, detail in failed.items():
        reasons[position], found[position] = RejectReason.PROCESSING_ERROR.value, detail
    batch = _set(batch, REASON, pa.array(reasons, pa.string()))
    return _set(batch, DETAIL, pa.array(found, pa.string()))


def details(batch: pa.Table) -> pa.ChunkedArray | pa.Array:
    """The batch's reject details, or nulls for a batch without them (a stage called on a plain table)."""
    return batch.column(DETAIL) if DETAIL in batch.column_names else pa.nulls(batch.num_rows, pa.string())


def _set(batch: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in batch.column_names:
        return batch.set_column(batch.column_names.index(name), name, values)
    return batch.append_column(name, values)


def isolated(call: Callable[[pa.Table], pa.Table], batch: pa.Table, *, stage: str) -> pa.Table:
    """``call(batch)`` for a stage whose output has a row for each input row, in order; when it raises a data
    error, the rows that cause it are rejected and the others keep the results of the parts that passed."""
    try:
        return call(batch)
    except BaseException as err:
        if not is_data_error(err):
            raise
        first = err
    outputs: list[tuple[np.ndarray, pa.Table]] = []
    bad = _failing(call, batch, accepted_rows(batch), first, outputs, split=FIRST_SPLIT)
    _log(stage, batch, bad)
    done = np.concatenate([rows for rows, _ in outputs]) if outputs else np.empty(0, np.int64)
    rest = np.setdiff1d(np.arange(batch.num_rows), done)  # rejected before, or now
    if len(rest):
        part = batch.take(pa.array(rest))
        outputs.append((rest, call(mark_rejected(part, {i: bad[int(r)] for i, r in enumerate(rest) if int(r) in bad}))))
    order = np.concatenate([rows for rows, _ in outputs])
    joined = pa.concat_tables([table for _, table in outputs], promote_options="default")
    return joined.take(pa.array(np.argsort(order, kind="stable")))


def reject_failing(probe: Callable[[pa.Table], object], batch: pa.Table, first: BaseException, *,
                   stage: str) -> pa.Table:
    """``batch`` with the rows rejected for which ``probe`` raises a data error (``first``: the error it
    raised for the whole batch), for a stage whose work is not a row per row (the writer's)."""
    bad = _failing(probe, batch, accepted_rows(batch), first, None, split=FIRST_SPLIT)
    _log(stage, batch, bad)
    return mark_rejected(batch, bad)


def _failing(call: Callable[[pa.Table], object], batch: pa.Table, rows: np.ndarray, error: BaseException | None,
             outputs: list[tuple[np.ndarray, pa.Table]] | None, *, split: int) -> dict[int, str]:
    """The positions among ``rows`` for which ``call`` raises a data error, with its detail. ``error`` is what
    ``call`` raised for all of ``rows``, if known; the outputs of the parts that pass go to ``outputs``."""
    if error is None:
        try:
            output = call(batch.take(pa.array(rows)))
        except BaseException as err:
            if not is_data_error(err):
                raise
            error = err
        else:
            if outputs is not None:
                outputs.append((rows, output))  # type: ignore[arg-type]
            return {}
    if len(rows) == 0:  # only rows rejected before were left, and the call still failed
        raise error
    if len(rows) == 1:
        return {int(rows[0]): detail_of(error)}
    bad: dict[int, str] = {}
    for part in np.array_split(rows, min(split, len(rows))):
        bad.update(_failing(call, batch, part, None, outputs, split=2))
    if not bad:  # no part fails: the batch as a whole did, not a row of it
        raise error
    return bad


def _log(stage: str, batch: pa.Table, bad: Mapping[int, str]) -> None:
    ids = batch.column("id").take(pa.array(sorted(bad))).to_pylist() if "id" in batch.column_names else sorted(bad)
    log.warning("%s stage: %d row(s) of a batch of %d rejected as processing errors (ids %s): %s", stage, len(bad),
                batch.num_rows, ids[:10], next(iter(bad.values())))


def injected_faults() -> dict[str, frozenset[object]]:
    """The test-only fault hook's rows by stage (see `FAULTS_ENV`), read where the run starts."""
    value = os.environ.get(FAULTS_ENV)
    if not value:
        return {}
    faults = json.loads(value)
    unknown = set(faults) - set(STAGES)
    if unknown:
        raise ValueError(f"{FAULTS_ENV}: unknown stage(s) {sorted(unknown)}; the stages are {', '.join(STAGES)}")
    return {stage: frozenset(ids) for stage, ids in faults.items()}


def check_faults(stage: str, faults: Mapping[str, Iterable[object]] | None, ids: pa.ChunkedArray | pa.Array,
                 accepted: pa.Array | pa.ChunkedArray | np.ndarray) -> None:
    """Raise `InjectedFault` if the ``accepted`` rows' ``ids`` hold one the fault hook fails in ``stage``
    (without faults, nothing is looked at)."""
    if faults and (chosen := faults.get(stage)):
        mask = pa.array(accepted) if isinstance(accepted, np.ndarray) else accepted
        hit = [i for i in ids.filter(mask).to_pylist() if i in chosen]
        if hit:
            raise InjectedFault(f"injected fault in the {stage} stage for row {hit[0]}")
