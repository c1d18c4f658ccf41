"""Where a run's results go: Hive-partitioned Parquet folders (``OUTPUT/<table>/<partition>/``, the default)
or Iceberg tables in a catalog (``iceberg://CATALOG/NAMESPACE``). The run stages, resumes and accounts for
its rows the same way for both; a destination says where staged files and unit records live, which
columns the files carry beside the contract's, the size its published files are merged up to
(`albert_batch.pipeline.compact`), and how a finished run is published."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import pyarrow as pa

from albert_batch import iceberg, storage
from albert_batch.config import RunConfig
from albert_batch.contract import MANIFEST, REJECTS, SUCCESS, Manifest, partition_path, tables_for
from albert_batch.errors import ConfigError, NotFound, OutputError, StorageError, Transient
from albert_batch.pipeline import compact, publish, staging
from albert_batch.quality import store as quality_store
from albert_batch.storage import Location

log = logging.getLogger(__name__)


class Destination(ABC):
    """The output of one partition of a run."""

    uri: str
    folder: Location  # the partition's staging folder: unit records (`pipeline.staging`), run record, retries
    table_dirs: dict[str, Location]  # where the writer stages each table's files
    partition_columns: dict[str, str | None]  # columns every staged file carries (Iceberg's partition keys)
    file_bytes: int = compact.TARGET_FILE_BYTES  # the size published files are merged up to
    empty_tables_need_a_file = True  # a table without rows still gets a file, which carries its schema

    def check(self) -> None:
        """Write and delete a small object in the staging folder, so that a missing bucket or a denied write
        is found before any work, not at the first write."""
        try:
            storage.check_writable(self.folder)
        except Transient:
            raise
        except StorageError as err:
            raise OutputError(f"output {self.uri} cannot be written: {err}") from err

    @abstractmethod
    def recover(self) -> None:
        """Finish an interrupted publication of this partition, where the destination has one."""

    def published_files(self) -> set[Location]:
        """Staged files that are published already and must never be deleted as leftovers."""
        return set()

    def target_file_bytes(self, table: str) -> int:
        """The size ``table``'s published files are merged up to."""
        return self.file_bytes

    def compact(self, run_id: str, files: Mapping[str, Mapping[str, int]]) -> dict[str, compact.Compacted]:
        """Each table's staged files (name -> rows) merged into files of its target size (`pipeline.compact`)."""
        return {table: compact.compact(self.table_dirs[table], names, target_bytes=self.target_file_bytes(table),
                                       run_id=run_id)
                for table, names in files.items()}

    @abstractmethod
    def publish(self, run_id: str, manifests: dict[str, Manifest], reports: Mapping[str, bytes],
                merged: Mapping[str, Sequence[str]]) -> None:
        """Publish the files that ``manifests`` list, atomically per table, with the partition's ``reports``
        (file name -> content, `albert_batch.quality`) beside each table; then drop the staging folder and the
        staged files ``merged`` (per table) into the published ones."""

    @abstractmethod
    def read_published(self, table: str, name: str) -> bytes | None:
        """The file ``name`` published beside ``table``'s partition's reports, if it is published."""

    @abstractmethod
    def published_names(self, table: str) -> set[str]:
        """The names of the data files ``table``'s published partition consists of now."""

    @abstractmethod
    def published_location(self, table: str, name: str) -> Location:
        """Where ``table``'s published data file ``name`` is."""

    @abstractmethod
    def report_uri(self, table: str, name: str) -> str:
        """Where the published partition's report file ``name`` is for ``table``."""

    @abstractmethod
    def partition_uris(self, tables: Sequence[str]) -> dict[str, str]:
        """Where consumers find each table's published partition."""


class HiveFolders(Destination):
    """``OUTPUT/<table>/<partition>/`` with ``_manifest.json``, the reports and ``_SUCCESS`` (`pipeline.publish`)."""

    def __init__(self, output: Location, partition_path: str) -> None:
        self.output = output
        self.partition_path = partition_path
        self.uri = output.uri
        self.folder = staging.partition_folder(output, partition_path)
        self.partition_columns = {}
        self.table_dirs = {}

    def prepare(self, tables: Sequence[str]) -> HiveFolders:
        self.table_dirs = {table: self.folder.child(table) for table in tables}
        return self

    def recover(self) -> None:
        publish.recover(self.output, self.partition_path)

    def publish(self, run_id: str, manifests: dict[str, Manifest], reports: Mapping[str, bytes],
                merged: Mapping[str, Sequence[str]]) -> None:
        # The merged files are in the staging folder, which publishing removes.
        publish.publish(self.output, run_id, self.partition_path, self.folder, manifests, reports)

    def read_published(self, table: str, name: str) -> bytes | None:
        partition = self.output.child(table, self.partition_path)
        try:
            return storage.read_bytes(partition.child(name)) if storage.exists(partition.child(SUCCESS)) else None
        except NotFound:
            return None

    def published_names(self, table: str) -> set[str]:
        manifest = self.read_published(table, MANIFEST)
        return set(json.loads(manifest)["files"]) if manifest is not None else set()

    def published_location(self, table: str, name: str) -> Location:
        return self.output.child(table, self.partition_path, name)

    def report_uri(self, table: str, name: str) -> str:
        return self.output.child(table, self.partition_path, name).uri

    def partition_uris(self, tables: Sequence[str]) -> dict[str, str]:
        return {table: self.output.child(table, self.partition_path).uri for table in tables}


class IcebergTables(Destination):
    """``iceberg://CATALOG/NAMESPACE``: one table per output table, one atomic commit per table
    (`albert_batch.iceberg`); a partition's reports are written right after its table's commit, to
    ``<table location>/_reports/<partition>/`` (`albert_batch.quality.store`)."""

    empty_tables_need_a_file = False

    def __init__(self, target: iceberg.IcebergTarget, partition: dict[str, str]) -> None:
        self.target = target
        self.partition = partition
        self.uri = target.uri
        self.catalog = iceberg.load_catalog(target)
        self.tables: dict[str, object] = {}
        self.table_dirs = {}
        self.partition_columns = {}

    def prepare(self, tables: Sequence[str], id_type: pa.DataType, kept: Sequence[pa.Field] = ()) -> IcebergTables:
        """Create or evolve the tables, to hold the input columns the run carries (``kept``) too; the staged
        files carry every partition key of each table (null where this run has no value), so each file lands
        in exactly this run's partition. A carried column may not be a partition key of a table."""
        keys: list[str] = []
        for table in tables:
            found = iceberg.prepare_table(self.catalog, self.target, table, id_type, list(self.partition), kept)
            self.tables[table] = found
            keys.extend(k for k in iceberg.partition_keys(found) if k not in keys)
        if clash := [f.name for f in kept if f.name.lower() in {k.lower() for k in keys}]:
            raise ConfigError(f"keep_columns: {clash[0]!r} is a partition key of the Iceberg tables in {self.uri}; "
                              "it cannot be a column too")
        self.partition_columns = {key: self.partition.get(key) for key in keys}
        path = partition_path(self.partition_columns)
        self.table_dirs = {table: Location.parse(found.location(), what=f"the location of {table}").child("data", path)
                           for table, found in self.tables.items()}
        rejects = Location.parse(self.tables[REJECTS].location(), what="the location of the rejects table")
        self.folder = staging.partition_folder(rejects, path)
        return self

    def recover(self) -> None:
        """Nothing to finish: each table's commit is atomic, and a run stopped between two tables' commits is
        repaired by the next run of the partition, which commits all three again."""

    def published_files(self) -> set[Location]:
        return {Location.parse(path) for table in self.tables for path in self._published_paths(table)}

    def target_file_bytes(self, table: str) -> int:
        """The table's ``write.target-file-size-bytes`` where it sets one, else the run's setting."""
        value = self.tables[table].properties.get(iceberg.TARGET_FILE_SIZE)
        if value is None:
            return self.file_bytes
        try:
            found = int(value)
            if found > 0:
                return found
        except ValueError:
            pass
        log.warning("Iceberg table %s sets %s to %r, not a positive number of bytes; merging files up to %d MiB",
                    self.target.table_uri(table), iceberg.TARGET_FILE_SIZE, value, self.file_bytes // 2**20)
        return self.file_bytes

    def publish(self, run_id: str, manifests: dict[str, Manifest], reports: Mapping[str, bytes],
                merged: Mapping[str, Sequence[str]]) -> None:
        keep = self.published_files() if any(merged.values()) else set()  # an earlier attempt's, never deleted
        for table, manifest in manifests.items():  # a fixed order: the tasks' tables, then the rejects
            iceberg.replace_partition(self.catalog, self.target, table, self.partition_columns,
                                      [self.table_dirs[table].child(name) for name in manifest.files], manifest)
            for name, content in reports.items():
                storage.write_bytes(self._reports(table).child(name), content)
        leftovers = [self.table_dirs[table].child(name) for table, names in merged.items() for name in names]
        storage.concurrently(storage.delete_file, [f for f in leftovers if f not in keep])
        staging.discard(self.folder)

    def read_published(self, table: str, name: str) -> bytes | None:
        try:
            return storage.read_bytes(self._reports(table).child(name))
        except NotFound:
            return None

    def published_names(self, table: str) -> set[str]:
        return {path.rsplit("/", 1)[-1] for path in self._published_paths(table)}

    def _published_paths(self, table: str) -> list[str]:
        """The data files of ``table``'s partition, as the table's current snapshot holds them."""
        scan = self.tables[table].refresh().scan(row_filter=iceberg.partition_filter(self.partition_columns))
        return [task.file.file_path for task in scan.plan_files()]

    def published_location(self, table: str, name: str) -> Location:
        return self.table_dirs[table].child(name)

    def report_uri(self, table: str, name: str) -> str:
        return self._reports(table).child(name).uri

    def _reports(self, table: str) -> Location:
        return quality_store.iceberg_reports(self.tables[table].location()).child(partition_path(self.partition))

    def partition_uris(self, tables: Sequence[str]) -> dict[str, str]:
        return {table: self.target.table_uri(table) for table in tables}


def open_destination(config: RunConfig, id_type: pa.DataType, kept: Sequence[pa.Field] = ()) -> Destination:
    """The run's destination, its tables created or evolved (Iceberg) to hold the ``kept`` columns too, and
    its staging folder checked."""
    tables = tables_for(config.tasks)
    if iceberg.is_iceberg(config.output):
        destination: Destination = IcebergTables(iceberg.IcebergTarget.parse(config.output),
                                                 dict(config.partition)).prepare(tables, id_type, kept)
    else:
        destination = HiveFolders(config.output_location, config.partition_path).prepare(tables)
    if config.resources.file_size_mib:
        destination.file_bytes = config.resources.file_size_mib * 2**20
    destination.check()
    return destination
