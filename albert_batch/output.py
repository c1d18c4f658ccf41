"""The output contract: three tables of Hive-partitioned Parquet, written by Ray tasks into a staging
folder and then published by `albert_batch.publish`.

    classifications/<partition>/part-*.parquet  id, label, score, scores, truncated, model, run_id, processed_at
    entities/<partition>/part-*.parquet         id, entities, model, run_id, processed_at
    rejects/<partition>/part-*.parquet          id, reason, run_id
"""

from __future__ import annotations

import io
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from albert_batch import heap, storage
from albert_batch.config import CLASSIFICATIONS, ENTITIES, REJECTS, TASK_TABLES, Task
from albert_batch.stages import ENTITY_TYPE, SCORES_TYPE, TIMESTAMP_TYPE
from albert_batch.storage import Location

SAMPLE_ENTITIES_PER_WRITE = 5


def schema(table: str, id_type: pa.DataType) -> pa.Schema:
    id_field = pa.field("id", id_type, nullable=False)
    if table == CLASSIFICATIONS:
        fields = [
            id_field,
            pa.field("label", pa.string(), nullable=False),
            pa.field("score", pa.float64(), nullable=False),
            pa.field("scores", SCORES_TYPE, nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
        ]
    elif table == ENTITIES:
        fields = [id_field, pa.field("entities", pa.list_(ENTITY_TYPE), nullable=False)]
    else:
        return pa.schema([pa.field("id", id_type), pa.field("reason", pa.string(), nullable=False),
                          pa.field("run_id", pa.string(), nullable=False)])
    return pa.schema([*fields, pa.field("model", pa.string(), nullable=False),
                      pa.field("run_id", pa.string(), nullable=False),
                      pa.field("processed_at", TIMESTAMP_TYPE, nullable=False)])


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue()


class StagingSink(Datasink[dict]):
    """Splits model-stage batches into the three tables and writes each as Parquet into the run's staging
    folder. Each write returns what it wrote; `on_write_complete` (on the driver) adds it all up."""

    def __init__(self, *, staging: Location, run_id: str, models: dict[Task, str], id_type: pa.DataType, rows_per_file: int):
        self.staging = staging
        self.run_id = run_id
        self.models = models
        self.id_type = id_type
        self.rows_per_file = rows_per_file
        self.result: dict[str, Any] | None = None

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        heap.use_the_system_allocator_for_arrow()
        try:
            return self._write(blocks, ctx)
        finally:
            heap.return_freed_heap_pages()  # a file's worth of buffers, freed

    def _write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        batch = pa.concat_tables([BlockAccessor.for_block(b).to_arrow() for b in blocks], promote_options="default")
        report: dict[str, Any] = {"files": {}, "rows": {}, "rejects": Counter(), "labels": Counter(), "samples": []}
        if batch.num_rows == 0:
            return report
        accepted_mask = pc.is_null(batch.column("reject_reason"))
        accepted = batch.filter(accepted_mask)
        rejected = batch.filter(pc.invert(accepted_mask))
        ids = accepted.column("id").cast(self.id_type)
        common = {
            "model": None,
            "run_id": pa.array([self.run_id] * accepted.num_rows, pa.string()),
            "processed_at": accepted.column("processed_at"),
        }
        outputs: dict[str, pa.Table] = {}
        for task, uri in self.models.items():
            common["model"] = pa.array([uri] * accepted.num_rows, pa.string())
            if task is Task.CLASSIFY:
                cols = {"id": ids, **{k: accepted.column(f"{task}.{k}") for k in ("label", "score", "scores", "truncated")}}
                report["labels"].update(_value_counts(accepted.column(f"{task}.label")))
            else:
                cols = {"id": ids, "entities": accepted.column(f"{task}.entities")}
                report["samples"] = _sample_entities(accepted, task)
            outputs[TASK_TABLES[task]] = pa.table({**cols, **common}, schema=schema(TASK_TABLES[task], self.id_type))
        reasons = rejected.column("reject_reason")
        report["rejects"].update(_value_counts(reasons))
        outputs[REJECTS] = pa.table(
            {"id": rejected.column("id").cast(self.id_type), "reason": reasons,
             "run_id": pa.array([self.run_id] * rejected.num_rows, pa.string())},
            schema=schema(REJECTS, self.id_type),
        )
        name = f"part-{self.run_id}-{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}.parquet"
        for table_name, table in outputs.items():
            report["rows"][table_name] = table.num_rows
            if table.num_rows:
                storage.write_bytes(self.staging.child(table_name, name), parquet_bytes(table))
                report["files"][table_name] = [name]
        return report

    def on_write_complete(self, write_result: Any) -> None:
        total: dict[str, Any] = {"files": {}, "rows": Counter(), "rejects": Counter(), "labels": Counter(), "samples": []}
        for report in write_result.write_returns:
            for table, names in report["files"].items():
                total["files"].setdefault(table, []).extend(names)
            total["rows"].update(report["rows"])
            total["rejects"].update(report["rejects"])
            total["labels"].update(report["labels"])
            if len(total["samples"]) < SAMPLE_ENTITIES_PER_WRITE:
                total["samples"].extend(report["samples"][: SAMPLE_ENTITIES_PER_WRITE - len(total["samples"])])
        self.result = total


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    """Counts of each value, without turning the whole column into Python objects."""
    return {row["values"]: row["counts"] for row in pc.value_counts(column).to_pylist()}


def _sample_entities(accepted: pa.Table, task: Task) -> list[dict[str, Any]]:
    """The first few rows that have entities. Only those rows become Python objects: a write holds up to
    ``rows_per_file`` rows, and their entities as dicts would take many times their Arrow size."""
    entities = accepted.column(f"{task}.entities")
    found = pc.indices_nonzero(pc.fill_null(pc.greater(pc.list_value_length(entities), 0), False))
    rows = accepted.take(found[:SAMPLE_ENTITIES_PER_WRITE])
    return [{"id": row_id, "entities": row_entities[:3]}
            for row_id, row_entities in zip(rows.column("id").to_pylist(), rows.column(f"{task}.entities").to_pylist(),
                                            strict=True)]
