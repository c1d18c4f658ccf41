"""Published files sized for consumers: however many files the writer staged for a table (one per piece
of work: per unit, per ``rows_per_file``, per ``flush_seconds``), publishing merges them into files of
about a target size.

Warehouse engines (Trino, Spark, Athena, DuckDB) read many small files slowly, S3 charges per request,
and a partition's staged files follow how the run was cut and stopped, not its size. So the staged files
of a table, in order, are gathered into groups of about the target size; each group of two or more files
becomes one file written beside them, and a file alone in its group is published as it is. The target is
`TARGET_FILE_BYTES` (256 MiB of Parquet, the ``file_size_mib`` setting), or an Iceberg table's own
``write.target-file-size-bytes`` where the table sets it. 256 MiB is within the 128-512 MiB that engines
recommend for analytic files, and under Iceberg's default of 512 MiB: output rows are small (tens of bytes
for a classification), so most partitions are one file per table either way, and larger partitions keep
files that engines can read in parallel.

A merge streams: its sources are read `storage.CONCURRENCY` at a time, ahead of the writer, and written as
row groups of at most `ROW_GROUP_BYTES` of Arrow data, so it holds little memory whatever the target. Each
source's rows are checked against the rows its piece of work recorded. The sources stay where they are
until the publication is done (a run stopped while merging merges again when it resumes); merged files
that a stopped run never published are orphans, like its staged files (`albert_batch.pipeline.staging`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from albert_batch import storage
from albert_batch.errors import PublishError
from albert_batch.storage import Location

log = logging.getLogger(__name__)

TARGET_FILE_BYTES = 256 * 2**20
ROW_GROUP_BYTES = 64 * 2**20  # Arrow data gathered into one row group of a merged file


@dataclass(frozen=True)
class Compacted:
    """A table's files after merging: ``files`` to publish, in order, and the staged files ``merged`` into
    them, which are not published and go once the publication is done; where each staged file's rows are
    ``placed``: its name -> (the published file, the row its rows start at)."""

    files: list[str]
    merged: list[str]
    placed: dict[str, tuple[str, int]]


def groups(sizes: Mapping[str, int], target_bytes: int) -> list[list[str]]:
    """The files (name -> bytes, in order) gathered into consecutive groups of about ``target_bytes``: a
    group is closed once it reaches the target, so every group but the last reaches it."""
    found: list[list[str]] = [[]]
    size = 0
    for name, file_bytes in sizes.items():
        if found[-1] and size >= target_bytes:
            found.append([])
            size = 0
        found[-1].append(name)
        size += file_bytes
    return [group for group in found if group]


def compact(folder: Location, files: Mapping[str, int], *, target_bytes: int, run_id: str) -> Compacted:
    """Merge the staged ``files`` of one table in ``folder`` (name -> the rows its piece recorded, in order)
    into files of about ``target_bytes``, written in ``folder``."""
    if len(files) < 2:
        return Compacted(files=list(files), merged=[], placed={name: (name, 0) for name in files})
    sizes = {f.base_name: f.size for f in storage.list_files(folder, recursive=False)}
    missing = [name for name in files if name not in sizes]
    if missing:
        raise PublishError(f"staged files {missing[:5]} of {folder} vanished before they were published")
    published, merged, placed = [], [], {}
    for group in groups({name: sizes[name] for name in files}, target_bytes):
        if len(group) == 1:
            published.append(group[0])
            placed[group[0]] = (group[0], 0)
            continue
        name = f"part-{run_id}-{uuid.uuid4().hex[:12]}.parquet"
        first = 0
        for source in group:
            placed[source] = (name, first)
            first += files[source]
        rows = merge(folder, {source: files[source] for source in group}, folder.child(name))
        log.info("merged %d staged files (%d rows) of %s into %s", len(group), rows, folder, name)
        published.append(name)
        merged.extend(group)
    return Compacted(files=published, merged=merged, placed=placed)


def merge(folder: Location, sources: Mapping[str, int], target: Location) -> int:
    """Write the rows of ``sources`` (file name in ``folder`` -> its rows), in order, as one Parquet file
    ``target``; returns its rows. Raises PublishError when a source does not hold the rows it should."""

    def read(name: str) -> pa.Table:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(folder.child(name))))
        if table.num_rows != sources[name]:
            raise PublishError(f"staged file {folder.child(name)} holds {table.num_rows} rows, but its piece of work "
                               f"recorded {sources[name]}; nothing was published")
        return table

    def fill(out: pa.NativeFile) -> int:
        rows, held, held_bytes = 0, [], 0
        writer: pq.ParquetWriter | None = None
        try:
            for table in storage.each_concurrently(read, list(sources)):
                writer = writer or pq.ParquetWriter(out, table.schema, compression="snappy")
                held.append(table)
                held_bytes += table.nbytes
                if held_bytes >= ROW_GROUP_BYTES:
                    rows += _write_group(writer, held)
                    held, held_bytes = [], 0
            if held:
                rows += _write_group(writer, held)
        finally:
            if writer is not None:
                writer.close()
        return rows

    return storage.write_with(target, fill)


def _write_group(writer: pq.ParquetWriter, tables: list[pa.Table]) -> int:
    group = pa.concat_tables(tables).combine_chunks()
    writer.write_table(group, row_group_size=max(1, group.num_rows))
    return group.num_rows
