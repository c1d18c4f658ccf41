"""The writer: a Ray Data ``Datasink`` that splits the model stage's batches into the output tables
(`albert_batch.contract`) and stages them as Parquet where the run's destination says
(`albert_batch.pipeline.destination`), which publishes them once every row is there."""

from __future__ import annotations

import io
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from albert_batch import storage
from albert_batch.contract import CLASSIFICATIONS, ENTITIES, REJECTS, TASK_OUTPUTS, Task, schema
from albert_batch.pipeline import heap, staging
from albert_batch.pipeline.columns import ROW, TOKENS, UNIT, task_column
from albert_batch.quality.sketch import Sketch
from albert_batch.storage import Location

SAMPLE_ENTITIES = 5


@dataclass
class WriteReport:
    """What pieces of work staged: each table's files and rows, rejects by reason, a few rows of the sampled
    column (entities), and the quality sketch of their rows (`albert_batch.quality.sketch`)."""

    files: dict[str, list[str]] = field(default_factory=dict)
    rows: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    quality: Sketch = field(default_factory=Sketch)

    @property
    def labels(self) -> dict[str, int]:
        return self.quality.labels

    @classmethod
    def of(cls, pieces: Iterable[staging.Piece]) -> WriteReport:
        total = cls()
        for piece in sorted(pieces, key=lambda p: (p.unit, p.ranges)):
            for table, name in piece.files.items():
                total.files.setdefault(table, []).append(name)
            total.rows.update(piece.rows)
            total.rejects.update(piece.rejects)
            total.quality.add(Sketch.from_dict(piece.quality))
            total.samples.extend(piece.samples[: SAMPLE_ENTITIES - len(total.samples)])
        return total


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue()


class StagingSink(Datasink[int]):
    """Each write task turns its rows into Parquet files in the partition's staging folder, one file per
    table for each unit of work it has rows of, and records each such piece after its files
    (`albert_batch.pipeline.staging`); the driver reads the records back, not the tasks' return values, so
    that a stopped run's pieces count too and a retried task's leftovers never do."""

    def __init__(self, *, folder: Location, table_dirs: dict[str, Location], run_id: str, models: dict[Task, str],
                 id_type: pa.DataType, rows_per_file: int, partition_columns: dict[str, str | None] | None = None):
        self.folder = folder
        self.table_dirs = table_dirs
        self.partition_columns = partition_columns or {}
        self.run_id = run_id
        self.models = models
        self.id_type = id_type
        self.rows_per_file = rows_per_file

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[Block], ctx: Any) -> int:
        heap.use_the_system_allocator_for_arrow()
        try:
            with staging.retries_reported(self.folder):
                batch = pa.concat_tables([BlockAccessor.for_block(b).to_arrow() for b in blocks],
                                         promote_options="default")
                for unit in pc.unique(batch.column(UNIT)).to_pylist():
                    rows = batch.filter(pc.equal(batch.column(UNIT), unit))
                    staging.write_piece(self.folder, self.stage_piece(rows, unit))
                return batch.num_rows
        finally:
            heap.return_freed_heap_pages()  # a file's worth of buffers, freed

    def stage_piece(self, batch: pa.Table, unit: int) -> staging.Piece:
        """Write one unit's rows of a batch as one file per table; the piece that describes them."""
        report = WriteReport()
        name = uuid.uuid4().hex[:12]
        files = {}
        for table_name, table in self.tables(batch, report).items():
            report.rows[table_name] = table.num_rows
            if table.num_rows:
                files[table_name] = f"part-{self.run_id}-{staging.record_name(unit, name)}.parquet"
                storage.write_bytes(self.table_dirs[table_name].child(files[table_name]),
                                    parquet_bytes(self.with_partition_columns(table)))
        return staging.Piece(unit=unit, name=name, run_id=self.run_id, ranges=_ranges(batch.column(ROW)),
                             files=files, rows=dict(report.rows), rejects=dict(report.rejects),
                             samples=report.samples, quality=report.quality.as_dict())

    def with_partition_columns(self, table: pa.Table) -> pa.Table:
        """The table with the destination's partition columns (Iceberg's files carry them; Hive's folders do)."""
        for key, value in self.partition_columns.items():
            table = table.append_column(pa.field(key, pa.string()), pa.array([value] * table.num_rows, pa.string()))
        return table

    def tables(self, batch: pa.Table, report: WriteReport) -> dict[str, pa.Table]:
        """The output tables of one batch of the model stage; counts, samples and the quality sketch go into
        ``report``."""
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
            if output.sampled:
                report.samples = _sample_rows(accepted, task_column(task, output.sampled))
        report.quality = Sketch.of(
            tokens=accepted.column(TOKENS), processed_at=accepted.column("processed_at"),
            classifications=tables.get(CLASSIFICATIONS),
            entities=tables[ENTITIES].column("entities") if ENTITIES in tables else None)
        reasons = rejected.column("reject_reason")
        report.rejects.update(_value_counts(reasons))
        tables[REJECTS] = pa.table(
            {"id": rejected.column("id").cast(self.id_type), "reason": reasons,
             "run_id": pa.array([self.run_id] * rejected.num_rows, pa.string())},
            schema=schema(REJECTS, self.id_type),
        )
        return tables


def _ranges(rows: pa.ChunkedArray) -> list[list[int]]:
    """Row numbers as sorted [start, stop) ranges."""
    numbers = np.unique(rows.to_numpy())
    if not len(numbers):
        return []
    breaks = np.flatnonzero(np.diff(numbers) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(numbers)]])
    return [[int(numbers[a]), int(numbers[b - 1]) + 1] for a, b in zip(starts, stops, strict=True)]


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
