"""Check a published partition the way a careful consumer would, and summarise it.

`validate_partition` reads, for every table of a run, the partition's ``_SUCCESS`` and ``_manifest.json``
and the footers of its data files (`storage.CONCURRENCY` at a time), and refuses the partition unless: it is complete (``_SUCCESS``), it
was written by the expected run, its files are exactly the ones the manifest lists, their row counts add
up to the manifest's, the schema is the output contract's, and no input row is lost
(``input rows = result rows + rejected rows`` for each task). The summary it returns is compact and
secret-free (Airflow puts it in XCom). Needs pyarrow and storage only: no Ray.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from albert_batch import iceberg, storage
from albert_batch.contract import MANIFEST, REJECTS, SUCCESS, TASK_OUTPUTS, Manifest, Task, schema, tables_for
from albert_batch.errors import NotFound, ValidationError
from albert_batch.storage import Location


@dataclass(frozen=True)
class PartitionSummary:
    """A validated partition: where each table's rows are, and the run's figures from its manifests."""

    run_id: str
    partition: str
    tables: dict[str, dict[str, Any]]  # table -> {"uri", "rows", "files"}
    input_rows: int
    rejected_rows: int
    rejects_by_reason: dict[str, int]
    label_counts: dict[str, int]
    seconds: float
    rows_per_second: float | None
    precision: str | None
    models: dict[str, dict[str, Any]]  # task -> {"location", "weights_sha256"}

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types, for XCom."""
        return dataclasses.asdict(self)


def validate_partition(output: str | os.PathLike | Location, partition_path: str, tasks: Iterable[Task | str],
                       *, run_id: str | None = None) -> PartitionSummary:
    """Validate every table of one published partition — Hive folders, or Iceberg tables for an
    ``iceberg://`` output — and return the run's summary from its manifests."""
    tasks = [Task(t) for t in tasks]
    if iceberg.is_iceberg(output):
        target = iceberg.IcebergTarget.parse(str(output))
        root = target.uri
        checked = _check_iceberg_tables(target, partition_path, tables_for(tasks), run_id)
    else:
        location = output if isinstance(output, Location) else Location.parse(os.fspath(output), what="output")
        root = location.uri
        checked = {table: _check_table(location.child(table, partition_path), table, run_id)
                   for table in tables_for(tasks)}
    manifests = {table: manifest for table, (manifest, _) in checked.items()}
    first = manifests[REJECTS]
    counts = first.counts
    rejected = first.rows
    if len({m.run_id for m in manifests.values()}) != 1:
        raise ValidationError(f"the tables of {partition_path} in {root} come from different runs: "
                              f"{ {t: m.run_id for t, m in manifests.items()} }")
    if rejected != counts["rejected_rows"]:
        raise ValidationError(f"{checked[REJECTS][1]} holds {rejected} rejects but the run counted "
                              f"{counts['rejected_rows']}")
    for task in tasks:
        table = TASK_OUTPUTS[task].table
        results = manifests[table].rows
        if results + rejected != counts["input_rows"]:
            raise ValidationError(
                f"{checked[table][1]}: {counts['input_rows']} input rows but {results} results "
                f"and {rejected} rejects — rows were lost or duplicated"
            )
    seconds = float(first.timings.get("total_s") or 0.0)
    return PartitionSummary(
        run_id=first.run_id,
        partition=partition_path,
        tables={table: {"uri": uri, "rows": m.rows, "files": len(m.files)} for table, (m, uri) in checked.items()},
        input_rows=counts["input_rows"],
        rejected_rows=rejected,
        rejects_by_reason=first.rejects_by_reason,
        label_counts=first.label_counts,
        seconds=round(seconds, 3),
        rows_per_second=round(counts["input_rows"] / seconds, 1) if seconds > 0 else None,
        precision=first.precision,
        models={task: {"location": m.get("location"), "weights_sha256": m.get("weights_sha256")}
                for task, m in first.models.items()},
    )


def _check_table(folder: Location, table: str, run_id: str | None) -> tuple[Manifest, str]:
    if not storage.exists(folder.child(SUCCESS)):
        raise ValidationError(f"{folder} has no {SUCCESS}: the partition was never published or its publication "
                              "was interrupted (the next run on this output finishes it)")
    try:
        manifest = Manifest.from_json(storage.read_bytes(folder.child(MANIFEST)))
    except NotFound as err:
        raise ValidationError(f"{folder} has {SUCCESS} but no {MANIFEST}") from err
    except (ValueError, TypeError) as err:  # not JSON, or JSON without a manifest's fields
        raise ValidationError(f"{folder.child(MANIFEST)} is not a valid manifest: {err}") from err
    if run_id is not None and manifest.run_id != run_id:
        raise ValidationError(f"{folder} was published by run {manifest.run_id!r}, not by run {run_id!r}")
    data = {f.base_name for f in storage.list_files(folder, recursive=False) if not f.base_name.startswith(("_", "."))}
    listed = set(manifest.files)
    if data != listed:
        raise ValidationError(f"{folder} holds files {sorted(data - listed)} the manifest does not list and lacks "
                              f"{sorted(listed - data)} that it does")
    rows = sum(storage.concurrently(lambda name: _footer_rows(folder.child(name), table, manifest.kept_columns),
                                    sorted(listed)))
    if rows != manifest.rows:
        raise ValidationError(f"{folder} holds {rows} rows but its manifest says {manifest.rows}")
    return manifest, folder.uri


def _footer_rows(loc: Location, table: str, kept: dict[str, str]) -> int:
    """The rows of one data file, whose footer must carry the contract's schema of ``table``, then exactly the
    input columns its manifest says the run carried (``kept``: name -> Arrow type)."""
    meta = storage.translated(lambda: pq.read_metadata(loc.path, filesystem=loc.filesystem),
                              doing="reading the footer of", loc=loc)
    found = meta.schema.to_arrow_schema().remove_metadata()
    if "id" not in found.names:
        raise ValidationError(f"{loc} has no id column; the output contract keys every table by id")
    expected = schema(table, found.field("id").type)
    fields = list(found)
    contract, carried = pa.schema(fields[: len(expected)]), {f.name: str(f.type) for f in fields[len(expected):]}
    if not contract.equals(expected) or list(carried.items()) != list(kept.items()):
        then = f"\nthen the columns the run carried, by its manifest: {kept}" if kept else ""
        raise ValidationError(f"{loc} does not have the {table} schema of the output contract:\n"
                              f"found    {found}\nexpected {expected}{then}")
    return meta.num_rows


def _check_iceberg_tables(target: iceberg.IcebergTarget, partition_path: str, tables: list[str],
                          run_id: str | None) -> dict[str, tuple[Manifest, str]]:
    """Each table's last commit of the partition (its snapshot's manifest), checked against the rows the
    table holds in the partition now and against the contract's schema."""
    from pyiceberg.exceptions import NoSuchTableError

    catalog = iceberg.load_catalog(target)
    values = dict(part.split("=", 1) for part in partition_path.split("/"))
    checked = {}
    for table in tables:
        uri = target.table_uri(table)
        try:
            found = catalog.load_table(target.identifier(table))
        except NoSuchTableError:
            raise ValidationError(f"{uri} does not exist: no run has written to it") from None
        manifest = iceberg.last_commit(found, partition_path)
        if manifest is None:
            raise ValidationError(f"{uri} has no commit of partition {partition_path} in its history: the partition "
                                  "was never published, or its snapshots were expired")
        if run_id is not None and manifest.run_id != run_id:
            raise ValidationError(f"{uri} partition {partition_path} was published by run {manifest.run_id!r}, "
                                  f"not by run {run_id!r}")
        partition = {key: values.get(key) for key in iceberg.partition_keys(found)}
        files = iceberg.partition_files(found, partition)
        rows = sum(f.record_count for f in files)
        if rows != manifest.rows:
            raise ValidationError(f"{uri} holds {rows} rows in partition {partition_path} but its last commit "
                                  f"(run {manifest.run_id}) wrote {manifest.rows}")
        current = found.schema().as_arrow()
        for f in schema(table, current.field("id").type if "id" in current.names else pa.int64()):
            if f.name not in current.names or not iceberg.same_type(current.field(f.name).type, f.type):
                raise ValidationError(f"{uri} does not have the {table} schema of the output contract: "
                                      f"column {f.name} should be {f.type}")
        if missing := [name for name in manifest.kept_columns if name not in current.names]:
            raise ValidationError(f"{uri} lacks the column {missing[0]} that run {manifest.run_id} carried into "
                                  f"partition {partition_path}")
        checked[table] = (dataclasses.replace(manifest, files=[f.file_path for f in files]), uri)
    return checked
