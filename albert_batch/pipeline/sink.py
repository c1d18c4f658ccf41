"""The writer: a Ray Data ``Datasink`` that splits the model stage's batches into the output tables
(`albert_batch.contract`) and writes each as Parquet into the run's staging folder, from which
`albert_batch.pipeline.publish` publishes them."""

from __future__ import annotations

import io
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from albert_batch import storage
from albert_batch.contract import REJECTS, TASK_OUTPUTS, Task, schema
from albert_batch.pipeline import heap
from albert_batch.pipeline.columns import task_column
from albert_batch.storage import Location

SAMPLE_ENTITIES = 5


@dataclass
class WriteReport:
    """What writes staged: each table's files and rows, rejects by reason, counts of the counted result
    column's values (labels), and a few rows of the sampled one (entities)."""

    files: dict[str, list[str]] = field(default_factory=dict)
    rows: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: WriteReport) -> None:
        for table, names in other.files.items():
            self.files.setdefault(table, []).extend(names)
        self.rows.update(other.rows)
        self.rejects.update(other.rejects)
        self.labels.update(other.labels)
        self.samples.extend(other.samples[: SAMPLE_ENTITIES - len(self.samples)])


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue()


class StagingSink(Datasink[WriteReport]):
    """Each write task turns its rows into one Parquet file per table in the staging folder and returns
    what it wrote; `on_write_complete` (on the driver) adds the reports up into ``result``."""

    def __init__(self, *, staging: Location, run_id: str, models: dict[Task, str], id_type: pa.DataType, rows_per_file: int):
        self.staging = staging
        self.run_id = run_id
        self.models = models
        self.id_type = id_type
        self.rows_per_file = rows_per_file
        self.result: WriteReport | None = None

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[Block], ctx: Any) -> WriteReport:
        heap.use_the_system_allocator_for_arrow()
        try:
            batch = pa.concat_tables([BlockAccessor.for_block(b).to_arrow() for b in blocks], promote_options="default")
            return self._write(batch, f"part-{self.run_id}-{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}.parquet")
        finally:
            heap.return_freed_heap_pages()  # a file's worth of buffers, freed

    def _write(self, batch: pa.Table, name: str) -> WriteReport:
        report = WriteReport()
        if batch.num_rows == 0:
            return report
        for table_name, table in self.tables(batch, report).items():
            report.rows[table_name] = table.num_rows
            if table.num_rows:
                storage.write_bytes(self.staging.child(table_name, name), parquet_bytes(table))
                report.files[table_name] = [name]
        return report

    def tables(self, batch: pa.Table, report: WriteReport) -> dict[str, pa.Table]:
        """The output tables of one batch of the model stage; counts and samples go into ``report``."""
        accepted_mask = pc.is_null(batch.column("reject_reason"))
        accepted = batch.filter(accepted_mask)
        rejected = batch.filter(pc.invert(accepted_mask))
        ids = accepted.column("id").cast(self.id_type)
        run_ids = pa.array([self.run_id] * accepted.num_rows, pa.string())
        tables: dict[str, pa.Table] = {}
        for task, uri in self.models.items():
            output = TASK_OUTPUTS[task]
            columns = {"id": ids, **{f.name: accepted.column(task_column(task, f.name)) for f in output.results},
                       "model": pa.array([uri] * accepted.num_rows, pa.string()), "run_id": run_ids,
                       "processed_at": accepted.column("processed_at")}
            tables[output.table] = pa.table(columns, schema=output.schema(self.id_type))
            if output.counted:
                report.labels.update(_value_counts(accepted.column(task_column(task, output.counted))))
            if output.sampled:
                report.samples = _sample_rows(accepted, task_column(task, output.sampled))
        reasons = rejected.column("reject_reason")
        report.rejects.update(_value_counts(reasons))
        tables[REJECTS] = pa.table(
            {"id": rejected.column("id").cast(self.id_type), "reason": reasons,
             "run_id": pa.array([self.run_id] * rejected.num_rows, pa.string())},
            schema=schema(REJECTS, self.id_type),
        )
        return tables

    def on_write_complete(self, write_result: Any) -> None:
        total = WriteReport()
        for report in write_result.write_returns:
            total.add(report)
        self.result = total


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    """Counts of each value, without turning the whole column into Python objects."""
    return {row["values"]: row["counts"] for row in pc.value_counts(column).to_pylist()}


def _sample_rows(accepted: pa.Table, column: str) -> list[dict[str, Any]]:
    """The first few rows whose list ``column`` is not empty, with its first three items. Only those rows
    become Python objects: a write holds up to ``rows_per_file`` rows, and all of them as dicts would take
    many times their Arrow size."""
    values = accepted.column(column)
    found = pc.indices_nonzero(pc.fill_null(pc.greater(pc.list_value_length(values), 0), False))
    rows = accepted.take(found[:SAMPLE_ENTITIES])
    return [{"id": row_id, "entities": items[:3]}
            for row_id, items in zip(rows.column("id").to_pylist(), rows.column(column).to_pylist(), strict=True)]
