"""The writer: the model stage's rows, split into the output tables (`albert_batch.contract`) and staged
as Parquet where the run's destination says (`albert_batch.pipeline.destination`), which publishes them
once every row is there.

Rows reach the writer through the driver (`WriteQueue`), which holds references to the model stage's
output blocks (the rows stay in Ray's object store) and starts a write task with them as soon as one of
these comes first:

- a unit of work has all its rows there (a stopped run's next run reuses whole units),
- ``rows_per_file`` rows are there (the largest file a write stages),
- the oldest has waited ``flush_s`` seconds (the work a stop can cost, in time, on a slow model),
- the model stage is done.

Write tasks ask for no CPU, so they start at once on a cluster whose CPUs the read, the tokenizers and the
model hold; at most a few run at a time, and the queue holds the model stage back when they fall behind.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from albert_batch import metrics, storage
from albert_batch.contract import CLASSIFICATIONS, ENTITIES, REJECTS, TASK_OUTPUTS, Task, schema
from albert_batch.pipeline import heap, staging
from albert_batch.pipeline.columns import ROW, TOKENS, UNIT, kept_column, task_column
from albert_batch.pipeline.isolation import REASON, check_faults, details, is_data_error, reject_failing
from albert_batch.pipeline.ledger import RunLedger
from albert_batch.quality.sketch import Sketch
from albert_batch.storage import Location

log = logging.getLogger(__name__)

SAMPLE_ENTITIES = 5


@dataclass
class WriteReport:
    """What pieces of work staged: each table's files (name -> rows) and rows, rejects by reason, a few rows of
    the sampled column (entities), and the quality sketch of their rows (`albert_batch.quality.sketch`)."""

    files: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # processing errors' details -> rows
    samples: list[dict[str, Any]] = field(default_factory=list)
    quality: Sketch = field(default_factory=Sketch)

    @property
    def labels(self) -> dict[str, int]:
        return self.quality.labels

    @classmethod
    def of(cls, pieces: Iterable[staging.Piece]) -> WriteReport:
        """What ``pieces`` staged, their files in the order given."""
        total = cls()
        for piece in pieces:
            for table, name in piece.files.items():
                total.files.setdefault(table, {})[name] = piece.rows.get(table, 0)
            total.rows.update(piece.rows)
            total.rejects.update(piece.rejects)
            total.errors.update(piece.errors)
            total.quality.add(Sketch.from_dict(piece.quality))
            total.samples.extend(piece.samples[: SAMPLE_ENTITIES - len(total.samples)])
        return total


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue()


@dataclass(frozen=True)
class StagingWriter:
    """What a write task does with its rows: Parquet files in the partition's staging folder, one file per
    table for each unit of work it has rows of, then a record of each such piece after its files
    (`albert_batch.pipeline.staging`); the driver reads the records back, not the tasks' return values, so
    that a stopped run's pieces count too and a retried task's leftovers never do."""

    folder: Location
    table_dirs: dict[str, Location]
    run_id: str
    models: dict[Task, str]
    id_type: pa.DataType
    partition_columns: dict[str, str | None] = field(default_factory=dict)
    kept: tuple[pa.Field, ...] = ()  # the input columns carried into every table (`InputPlan.kept`)
    unit_keys: dict[int, str] = field(default_factory=dict)  # unit -> its key (`albert_batch.pipeline.units`)
    faults: dict[str, frozenset[object]] | None = None  # the test-only fault hook's rows (isolation.FAULTS_ENV)
    ledger: RunLedger | None = None  # the run's `albert_batch.pipeline.ledger.RunLedger`, told of each write
    run: metrics.RunTags | None = None  # the tags of the metrics a write records

    def write(self, blocks: Sequence[pa.Table]) -> int:
        """Stage ``blocks`` (the model stage's output); returns their rows."""
        started = time.perf_counter()
        heap.use_the_system_allocator_for_arrow()
        if self.run is not None:
            metrics.bind(self.run)
        try:
            with staging.retries_reported(self.folder):
                batch = pa.concat_tables(blocks, promote_options="default")
                for unit in pc.unique(batch.column(UNIT)).to_pylist():
                    rows = batch.filter(pc.equal(batch.column(UNIT), unit))
                    piece = self.stage_piece(rows, unit)
                    staging.write_piece(self.folder, piece)
                    _count_staged(piece)
                if self.ledger is not None:
                    self.ledger.staged(batch.num_rows, time.perf_counter() - started)
                return batch.num_rows
        finally:
            heap.return_freed_heap_pages()  # a file's worth of buffers, freed

    def stage_piece(self, batch: pa.Table, unit: int) -> staging.Piece:
        """Write one unit's rows of a batch as one file per table; the piece that describes them. Rows that
        the tables cannot be made of are rejected as processing errors (`albert_batch.pipeline.isolation`)."""
        try:
            report, encoded = self.encode(batch)
        except BaseException as err:
            if not is_data_error(err):
                raise
            batch = reject_failing(self.encode, batch, err, stage="write")
            report, encoded = self.encode(batch)
        name = uuid.uuid4().hex[:12]
        files = {}
        for table_name, data in encoded.items():
            files[table_name] = f"part-{self.run_id}-{staging.record_name(unit, name)}.parquet"
            storage.write_bytes(self.table_dirs[table_name].child(files[table_name]), data)
        return staging.Piece(unit=unit, name=name, run_id=self.run_id, ranges=_ranges(batch.column(ROW)),
                             files=files, rows=dict(report.rows), rejects=dict(report.rejects),
                             errors=dict(report.errors), samples=report.samples, quality=report.quality.as_dict(),
                             key=self.unit_keys.get(unit, ""))

    def encode(self, batch: pa.Table) -> tuple[WriteReport, dict[str, bytes]]:
        """The batch's tables as Parquet files' bytes (tables without rows have none), and its report."""
        check_faults("write", self.faults, batch.column("id"), pc.is_null(batch.column(REASON)))
        report = WriteReport()
        encoded = {}
        for table_name, table in self.tables(batch, report).items():
            report.rows[table_name] = table.num_rows
            if table.num_rows:
                encoded[table_name] = parquet_bytes(self.with_partition_columns(table))
        return report, encoded

    def with_partition_columns(self, table: pa.Table) -> pa.Table:
        """The table with the destination's partition columns (Iceberg's files carry them; Hive's folders do)."""
        for key, value in self.partition_columns.items():
            table = table.append_column(pa.field(key, pa.string()), pa.array([value] * table.num_rows, pa.string()))
        return table

    def tables(self, batch: pa.Table, report: WriteReport) -> dict[str, pa.Table]:
        """The output tables of one batch of the model stage; counts, samples and the quality sketch go into
        ``report``."""
        accepted_mask = pc.is_null(batch.column(REASON))
        accepted = batch.filter(accepted_mask)
        rejected = batch.filter(pc.invert(accepted_mask))
        ids = accepted.column("id").cast(self.id_type)
        carried = {f.name: accepted.column(kept_column(f.name)) for f in self.kept}
        run_ids = pa.array([self.run_id] * accepted.num_rows, pa.string())
        tables: dict[str, pa.Table] = {}
        for task, uri in self.models.items():
            output = TASK_OUTPUTS[task]
            columns = {"id": ids, **{f.name: accepted.column(task_column(task, f.name)) for f in output.results},
                       "model": pa.array([uri] * accepted.num_rows, pa.string()), "run_id": run_ids,
                       "processed_at": accepted.column("processed_at"), **carried}
            tables[output.table] = pa.table(columns, schema=schema(output.table, self.id_type, self.kept))
            if output.sampled:
                report.samples = _sample_rows(accepted, task_column(task, output.sampled))
        report.quality = Sketch.of(
            tokens=accepted.column(TOKENS), processed_at=accepted.column("processed_at"),
            classifications=tables.get(CLASSIFICATIONS),
            entities=tables[ENTITIES].column("entities") if ENTITIES in tables else None)
        reasons = rejected.column(REASON)
        report.rejects.update(_value_counts(reasons))
        found = details(rejected)
        report.errors.update(_value_counts(pc.drop_null(found)))
        tables[REJECTS] = pa.table(
            {"id": rejected.column("id").cast(self.id_type), "reason": reasons,
             "run_id": pa.array([self.run_id] * rejected.num_rows, pa.string()), "detail": found,
             **{f.name: rejected.column(kept_column(f.name)) for f in self.kept}},
            schema=schema(REJECTS, self.id_type, self.kept),
        )
        return tables


def _count_staged(piece: staging.Piece) -> None:
    """A staged piece's rows, rejects by reason and text tokens, to the metrics."""
    metrics.count("albert_batch_rows_staged", piece.row_count)
    for reason, rows in piece.rejects.items():
        metrics.count("albert_batch_rows_rejected", rows, reason=reason)
    metrics.count("albert_batch_text_tokens", piece.quality.get("tokens_sum", 0))


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


MAX_WRITES = 2  # write tasks at once; more wait for one to finish, and the model stage with them
WRITE_TASK = "albert-batch-write"  # the write tasks' name, as Ray's state API and dashboard list them
POLL_S = 1.0


def _stage_blocks(writer: StagingWriter, slices: list[tuple[int, int] | None], *blocks: pa.Table) -> int:
    """A write task: ``blocks`` are the model stage's output blocks (Ray hands the task their values), each
    cut to its slice of rows where it has one."""
    cut = [b if s is None else b.slice(s[0], s[1] - s[0]) for b, s in zip(blocks, slices, strict=True)]
    return writer.write(cut)


class WriteQueue:
    """The driver's side of the writer (see the module's doc): gathers the model stage's output blocks by
    reference and starts write tasks. Use it as a context manager, `add` each bundle the model stage
    outputs, then `finish`; a failed write task's error is raised by `add` or `finish`."""

    def __init__(self, writer: StagingWriter, unit_rows: Mapping[int, int], *, rows_per_file: int,
                 flush_s: float, max_writes: int = MAX_WRITES) -> None:
        self.writer = writer
        self.unit_rows = dict(unit_rows)
        self.rows_per_file = rows_per_file
        self.flush_s = flush_s
        self.max_writes = max_writes
        self._lock = threading.Lock()
        self._blocks: list[tuple[Any, tuple[int, int] | None]] = []  # (ObjectRef of a block, its slice)
        self._rows = 0
        self._oldest: float | None = None
        self._arrived: Counter[int] = Counter()
        self._writes: list[Any] = []  # ObjectRefs of write tasks in flight
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._flush_stale, name="albert-batch-writes", daemon=True)

    def __enter__(self) -> WriteQueue:
        import ray

        self._task = ray.remote(_stage_blocks).options(num_cpus=0, max_retries=3, name=WRITE_TASK)
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._timer.join(timeout=10)

    def add(self, bundle: Any) -> None:
        """Take a Ray Data ``RefBundle`` of the model stage's output."""
        import ray

        for entry, cut in zip(bundle.blocks, bundle.slices, strict=True):
            units = ray.get(entry.ref).column(UNIT)  # which units it completes; the rows stay in Ray
            if cut is not None:
                units = units.slice(cut.start_offset, cut.end_offset - cut.start_offset)
            counts = _value_counts(units)
            with self._lock:
                self._blocks.append((entry.ref, None if cut is None else (cut.start_offset, cut.end_offset)))
                self._rows += len(units)
                self._oldest = self._oldest or time.monotonic()
                self._arrived.update(counts)
                completes = any(self._arrived[unit] >= self.unit_rows.get(unit, 0) for unit in counts)
            if completes or self._rows >= self.rows_per_file:
                self.flush()
        self._reap(keep=self.max_writes)

    def flush(self) -> None:
        """Start a write task with every block held."""
        with self._lock:
            blocks, self._blocks, self._rows, self._oldest = self._blocks, [], 0, None
            if blocks:
                self._writes.append(self._task.remote(self.writer, [cut for _, cut in blocks],
                                                      *[ref for ref, _ in blocks]))

    def finish(self) -> None:
        """Stage what is held and wait for every write."""
        self.flush()
        self._reap(keep=0)

    def _reap(self, *, keep: int) -> None:
        """Collect the finished writes (raising a failed one's error) and wait until at most ``keep`` run,
        a second at a time, so that a signal reaches the run."""
        import ray

        while True:
            with self._lock:
                writes = list(self._writes)
            if not writes:
                return
            waiting = len(writes) > keep
            done, _ = ray.wait(writes, num_returns=len(writes), timeout=POLL_S if waiting else 0)
            for ref in done:
                ray.get(ref)
                with self._lock:
                    self._writes.remove(ref)
            if not waiting:
                return

    def _flush_stale(self) -> None:
        while not self._stop.wait(POLL_S):
            with self._lock:
                stale = self._oldest is not None and time.monotonic() - self._oldest >= self.flush_s
            if stale:
                try:
                    self.flush()
                except Exception as err:  # the main thread's next add or finish reports a failed write
                    log.debug("write queue: %s", err)
