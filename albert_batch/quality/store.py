"""Where a partition's quality figures and report live, and how to find the partition drift is measured
against.

    Hive folders:   OUTPUT/<table>/<partition>/_quality.json and _report.html, in every table's partition,
                    published with it (before its ``_SUCCESS``)
    Iceberg tables: <table location>/_reports/<partition>/_quality.json and _report.html, written right after
                    the table's commit (an Iceberg table has no partition folder of its own to put them in)

The rejects table is written by every run, so its copy is the one read back. The partition a run's drift
is measured against is the **previous partition** of the same output: among the partitions with figures,
the one whose partition path sorts immediately before the run's (``dt=2026-11-30`` before
``dt=2026-12-01``; keys compare in order, values as text).
"""

from __future__ import annotations

import os

from albert_batch import iceberg, storage
from albert_batch.contract import REJECTS
from albert_batch.errors import NotFound, ValidationError
from albert_batch.quality.figures import QUALITY, QualityFigures
from albert_batch.storage import Location

REPORTS_DIR = "_reports"


def table_root(output: str | Location, table: str) -> Location:
    """The folder under which ``table``'s partitions keep their figures."""
    if iceberg.is_iceberg(output):
        from pyiceberg.exceptions import NoSuchTableError

        target = iceberg.IcebergTarget.parse(str(output))
        try:
            found = iceberg.load_catalog(target).load_table(target.identifier(table))
        except NoSuchTableError:
            raise ValidationError(f"{target.table_uri(table)} does not exist: no run has written to it") from None
        return iceberg_reports(found.location())
    location = output if isinstance(output, Location) else Location.parse(os.fspath(output), what="output")
    return location.child(table)


def iceberg_reports(table_location: str) -> Location:
    """The folder of an Iceberg table's partition reports."""
    return Location.parse(table_location, what="an Iceberg table's location").child(REPORTS_DIR)


def report_folder(output: str | Location, table: str, partition_path: str) -> Location:
    return table_root(output, table).child(partition_path)


def partitions_with_figures(output: str | Location) -> dict[str, Location]:
    """Partition path -> its ``_quality.json``, for every partition of the output that has one."""
    root = table_root(output, REJECTS)
    found = {}
    for info in storage.list_files(root):
        if info.base_name == QUALITY:
            relative = info.path[len(root.path.rstrip("/")) + 1:]
            found[relative.rsplit("/", 1)[0]] = Location(root.scheme, info.path)
    return found


def read_figures(output: str | Location, partition_path: str) -> QualityFigures:
    """The figures of one published partition; ValidationError when it has none."""
    loc = report_folder(output, REJECTS, partition_path).child(QUALITY)
    try:
        return QualityFigures.from_json(storage.read_bytes(loc))
    except NotFound:
        raise ValidationError(f"{loc} does not exist: partition {partition_path} of {output} was not published, or "
                              "was published by a version of albert-batch without quality reports") from None


def previous_partition(output: str | Location, partition_path: str) -> str | None:
    """The partition with figures whose path sorts immediately before ``partition_path``."""
    key = _sort_key(partition_path)
    earlier = [p for p in partitions_with_figures(output) if _sort_key(p) < key]
    return max(earlier, key=_sort_key) if earlier else None


def _sort_key(partition_path: str) -> list[tuple[str, str]]:
    return [tuple(part.split("=", 1)) for part in partition_path.split("/")]  # type: ignore[misc]
