"""Columns of the batches that flow between the stages: their names, and per-row numpy arrays moved in and
out of Arrow list columns without per-element Python work."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from albert_batch.contract import Task

# Where each row comes from: its unit of work, and its row number in the unit. Every stage passes them on,
# so that the writer can record which rows of which unit it wrote (`albert_batch.pipeline.staging`).
UNIT = "unit"
ROW = "row"
POSITION = (UNIT, ROW)
# The number of tokens of each accepted text (before truncation or windows), for the quality report.
TOKENS = "tokens"
# The input columns a run carries into its tables (``keep_columns``) travel as ``kept.<name>``, clear of the
# stages' own columns; every stage passes them on, like the position columns.
KEPT = "kept."


def kept_column(name: str) -> str:
    """The name under which the stages carry the input column ``name``."""
    return KEPT + name


def task_column(task: Task, name: str) -> str:
    """The name under which the stages pass a task's feature or result ``name`` along: ``ner.entities``."""
    return f"{task.value}.{name}"


def to_list_array(arrays: list[np.ndarray], value_type: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([np.size(a) for a in arrays], out=offsets[1:])
    dtype = value_type.to_pandas_dtype()
    values = np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays]) if arrays else np.empty(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


def from_list_array(column: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.flatten().to_numpy(zero_copy_only=False)
    base = offsets[0]
    return [values[offsets[i] - base : offsets[i + 1] - base] for i in range(len(column))]
