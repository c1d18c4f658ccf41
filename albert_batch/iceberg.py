"""Iceberg tables in a catalog as the destination of a run: ``iceberg://CATALOG/NAMESPACE``.

CATALOG is a catalog name as pyiceberg's ``load_catalog`` resolves it (``.pyiceberg.yaml``, or the
``PYICEBERG_CATALOG__<NAME>__*`` environment variables), so credentials stay in the catalog's own
configuration and never in a URI, a manifest, a log line or an error. Any catalog pyiceberg supports
(SQL, REST, Glue, Hive) works the same; nothing here is specific to one.

    NAMESPACE.classifications   the contract's columns + the run's partition keys (identity partitions)
    NAMESPACE.entities
    NAMESPACE.rejects

A run stages its data files in each table's own location (``<table location>/data/<partition>/``) and its
unit records under the rejects table's location, then replaces its partition with one atomic catalog
commit per table (`replace_partition`): the partition's old files are dropped and the staged ones added
in one transaction, whose snapshots carry the run's manifest (`MANIFEST_PROPERTY`). A reader sees the
old partition or the new one, never a mix; a run stopped before its commit leaves the table as it was
(its staged files are orphans until the next run of the partition reuses them or maintenance removes
them). A commit that loses a race with another writer is redone on the refreshed table.

Ray Data's ``Dataset.write_iceberg`` commits as soon as its write tasks finish; albert-batch must first
check that every input row is in each table or in the rejects, commit three tables with the run's
properties, and keep staged units for a stopped run to resume, so it builds on pyiceberg's public API.

pyiceberg is an extra (``pip install "albert-batch[iceberg]"``) and is imported only when a run or a
validation uses an ``iceberg://`` output.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from albert_batch.contract import Manifest, partition_path, schema
from albert_batch.errors import AlbertBatchError, ConfigError, OutputError, PublishError, ValidationError
from albert_batch.storage import Location

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

SCHEME = "iceberg"
RUN_PROPERTY = "albert-batch.run-id"
PARTITION_PROPERTY = "albert-batch.partition"
MANIFEST_PROPERTY = "albert-batch.manifest"  # the run's `Manifest` as JSON, without its file list
TARGET_FILE_SIZE = "write.target-file-size-bytes"  # the table property that sizes its data files
COMMIT_ATTEMPTS = 8  # commits that lose to another writer are redone on the refreshed table
COMMIT_BACKOFF_S = 0.5
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class IcebergTarget:
    """``iceberg://CATALOG/NAMESPACE``: a catalog name and a namespace (dotted for nested namespaces)."""

    catalog: str
    namespace: str

    @classmethod
    def parse(cls, uri: str, *, what: str = "output") -> IcebergTarget:
        if not is_iceberg(uri):
            raise ConfigError(f"{what} is not an iceberg://CATALOG/NAMESPACE URI")
        rest = uri.strip()[len(SCHEME) + 3:]
        if "@" in rest or "?" in rest or "#" in rest:
            raise ConfigError(f"{what} must be iceberg://CATALOG/NAMESPACE with no credentials, query or fragment; "
                              "configure the catalog in .pyiceberg.yaml or PYICEBERG_CATALOG__<NAME>__* variables")
        catalog, _, namespace = rest.strip("/").partition("/")
        namespace = namespace.strip("/").replace("/", ".")
        for part, name in ((catalog, "catalog"), (namespace, "namespace")):
            if not _NAME.match(part):
                raise ConfigError(f"{what} iceberg://{catalog}/{namespace} needs a {name} name of letters, digits, "
                                  "'_', '-' or '.' (iceberg://CATALOG/NAMESPACE)")
        return cls(catalog, namespace)

    @property
    def uri(self) -> str:
        return f"{SCHEME}://{self.catalog}/{self.namespace}"

    def __str__(self) -> str:
        return self.uri

    def identifier(self, table: str) -> str:
        return f"{self.namespace}.{table}"

    def table_uri(self, table: str) -> str:
        return f"{self.uri}/{table}"


def is_iceberg(uri: object) -> bool:
    return isinstance(uri, str) and uri.strip().lower().startswith(f"{SCHEME}://")


def redact(text: str) -> str:
    """An error text without the secrets a catalog's library may echo: URI user parts and key=value
    pairs whose key names a credential."""
    text = re.sub(r"://[^/\s@]+@", "://***@", text)
    return re.sub(r"(?i)\b([\w.-]*(?:secret|password|token|credential|access[_-]?key)[\w.-]*)\s*[=:]\s*\S+",
                  r"\1=***", text)


def describe(err: BaseException) -> str:
    """An error of a catalog's library in one line: its type and the first line of its message, redacted."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {redact(lines[0]) if lines else ''}".rstrip(": ")


def load_catalog(target: IcebergTarget) -> Catalog:
    """The catalog, as pyiceberg's own configuration describes it. Raises OutputError naming the catalog
    when it is not configured or does not answer."""
    try:
        from pyiceberg.catalog import load_catalog as load
        from pyiceberg.utils.config import Config
    except ImportError as err:
        raise ConfigError(f"output {target} needs pyiceberg: pip install \"albert-batch[iceberg]\"") from err
    try:
        # pyiceberg reads its configuration once, at import; read it again, so that a long-lived process
        # (an Airflow worker, a notebook) sees the catalog as configured now.
        catalog = load(target.catalog, **(Config().get_catalog_config(target.catalog) or {}))
        catalog.create_namespace_if_not_exists(target.namespace)
    except Exception as err:  # pyiceberg raises ValueError, SQLAlchemy, HTTP and boto errors alike
        raise OutputError(f"output {target}: catalog {target.catalog!r} cannot be used ({describe(err)}); configure "
                          f"it in .pyiceberg.yaml or PYICEBERG_CATALOG__{target.catalog.upper()}__* variables") from None
    return catalog


def table_schema(table: str, id_type: pa.DataType, partition_keys: Iterator[str] | list[str],
                 kept: Sequence[pa.Field] = ()) -> pa.Schema:
    """The contract's schema of ``table`` with the input columns the run carries (``kept``), then the partition
    keys as string columns."""
    base = schema(table, id_type, kept)
    return pa.schema([*base, *(pa.field(key, pa.string()) for key in partition_keys)])


def prepare_table(catalog: Catalog, target: IcebergTarget, table: str, id_type: pa.DataType,
                  partition_keys: list[str], kept: Sequence[pa.Field] = ()) -> Table:
    """The table, created on first use (identity-partitioned on ``partition_keys``) or evolved to hold
    every column and partition key of this run, the input columns it carries (``kept``) included: columns
    are added (``union_by_name``), never dropped, so rows written without a carried column read null there.
    Raises OutputError where evolution is impossible."""
    from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError

    wanted = table_schema(table, id_type, partition_keys, kept)
    ident = target.identifier(table)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return _create_or_evolve(catalog, target, table, ident, wanted, partition_keys)
        except (CommitFailedException, TableAlreadyExistsError):  # another run created or evolved it just now
            if attempt == COMMIT_ATTEMPTS:
                raise OutputError(f"Iceberg table {target.table_uri(table)} kept changing under this run while it "
                                  "was being created or evolved; run again") from None
            _pause(attempt)
        except AlbertBatchError:
            raise
        except Exception as err:  # the catalog's or the warehouse's own errors, whatever the catalog type
            raise OutputError(f"output {target}: preparing table {table} failed ({describe(err)})") from None
    raise AssertionError("unreachable")


def _create_or_evolve(catalog: Catalog, target: IcebergTarget, table: str, ident: str, wanted: pa.Schema,
                      partition_keys: list[str]) -> Table:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        found = catalog.load_table(ident)
    except NoSuchTableError:
        with catalog.create_table_transaction(ident, schema=wanted) as create:
            with create.update_spec() as spec:
                for key in partition_keys:
                    spec.add_identity(key)
        log.info("created Iceberg table %s, partitioned by %s", target.table_uri(table), partition_keys)
        return catalog.load_table(ident)
    return _evolve(found, target.table_uri(table), wanted, partition_keys)


def _evolve(found: Table, uri: str, wanted: pa.Schema, partition_keys: list[str]) -> Table:
    current = found.schema().as_arrow()
    for f in wanted:
        if f.name in current.names and not same_type(current.field(f.name).type, f.type):
            raise OutputError(f"Iceberg table {uri} has column {f.name} of type {current.field(f.name).type}, but this "
                              f"run writes {f.type}; write to another namespace or migrate the table")
    missing = [f.name for f in wanted if f.name not in current.names]
    if missing:
        with found.update_schema() as update:
            update.union_by_name(wanted)
        log.info("Iceberg table %s: added columns %s", uri, missing)
    spec = found.spec()
    sources = {found.schema().find_field(p.source_id).name: p for p in spec.fields}
    if any(type(p.transform).__name__ != "IdentityTransform" for p in sources.values()):
        raise OutputError(f"Iceberg table {uri} has a partition spec ({spec}) other than identity partitions on "
                          "albert-batch's partition keys; write to another namespace")
    new_keys = [key for key in partition_keys if key not in sources]
    if new_keys:
        with found.update_spec() as update:
            for key in new_keys:
                update.add_identity(key)
        log.info("Iceberg table %s: added partition keys %s", uri, new_keys)
    return found.refresh()


def same_type(found: pa.DataType, wanted: pa.DataType) -> bool:
    """Equal types, ignoring the names Arrow gives list items and map entries and the large variants of
    lists and strings that Iceberg's Arrow schemas use."""
    def is_list(t: pa.DataType) -> bool:
        return pa.types.is_list(t) or pa.types.is_large_list(t)

    def is_string(t: pa.DataType) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t)

    if is_string(found) and is_string(wanted):
        return True
    if is_list(found) and is_list(wanted):
        return same_type(found.value_type, wanted.value_type)
    if pa.types.is_map(found) and pa.types.is_map(wanted):
        return same_type(found.key_type, wanted.key_type) and same_type(found.item_type, wanted.item_type)
    if pa.types.is_struct(found) and pa.types.is_struct(wanted):
        return [f.name for f in found] == [f.name for f in wanted] and all(
            same_type(a.type, b.type) for a, b in zip(found, wanted, strict=True))
    return found.equals(wanted)


def partition_keys(table: Table) -> list[str]:
    """The columns ``table`` is partitioned by, in the spec's order."""
    return [table.schema().find_field(p.source_id).name for p in table.spec().fields]


def partition_filter(partition: Mapping[str, str | None]) -> BooleanExpression:
    """Rows of exactly one partition: each key equal to its value, or null where the run has no value."""
    from pyiceberg.expressions import AlwaysTrue, And, EqualTo, IsNull

    expression: BooleanExpression = AlwaysTrue()
    for key, value in partition.items():
        expression = And(expression, IsNull(key) if value is None else EqualTo(key, value))
    return expression


def file_uri(loc: Location) -> str:
    """A location as pyiceberg's FileIO names it."""
    return f"file://{loc.path}" if loc.scheme == "file" else loc.uri


def replace_partition(catalog: Catalog, target: IcebergTarget, table: str, partition: Mapping[str, str | None],
                      files: list[Location], manifest: Manifest) -> None:
    """One atomic commit: the partition's rows become exactly those of ``files``. Its snapshots carry the
    run id, the partition and the manifest. Redone on the refreshed table when another writer commits
    first; raises PublishError when the commit cannot land, and then the table is as it was."""
    from pyiceberg.exceptions import CommitFailedException

    properties = commit_properties(manifest)
    paths = [file_uri(f) for f in files]
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        found = catalog.load_table(target.identifier(table))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Delete operation did not match any records": a new partition
                transaction = found.transaction()
                transaction.delete(partition_filter(partition), snapshot_properties=properties)
                if paths:
                    # The files may be in the table already (a run that committed this table, then stopped before
                    # the others): the delete above drops them, and this adds them back, once.
                    transaction.add_files(paths, snapshot_properties=properties, check_duplicate_files=False)
                else:
                    with transaction.update_snapshot(snapshot_properties=properties).fast_append():
                        pass  # a snapshot without files still records which run emptied the partition
                transaction.commit_transaction()
            log.info("committed %d files to %s, partition %s", len(paths), target.table_uri(table),
                     manifest.partition)
            return
        except CommitFailedException as err:
            if attempt == COMMIT_ATTEMPTS:
                raise PublishError(f"committing to {target.table_uri(table)} lost to other writers {attempt} times "
                                   f"({describe(err)}); the table is as it was") from None
            log.warning("commit to %s conflicted with another writer; redoing it on the refreshed table",
                        target.table_uri(table))
            _pause(attempt)
        except Exception as err:  # the catalog's or the warehouse's own errors; the commit landed or it did not
            raise PublishError(f"committing to {target.table_uri(table)} failed ({describe(err)}); the next run of "
                               f"partition {partition_path(partition)} commits its tables again") from None


def commit_properties(manifest: Manifest) -> dict[str, str]:
    """The snapshot summary properties of a run's commit: strings, secret-free like the manifest."""
    record = json.loads(manifest.to_json())
    record["files"] = []  # a partition's file list belongs to the table's own metadata
    return {RUN_PROPERTY: manifest.run_id, PARTITION_PROPERTY: partition_path(manifest.partition),
            MANIFEST_PROPERTY: json.dumps(record, separators=(",", ":"), default=str),
            "albert-batch.input-fingerprint": str(manifest.input.get("fingerprint", "")),
            "albert-batch.rows": str(manifest.rows)}


def last_commit(table: Table, partition: str) -> Manifest | None:
    """The manifest of the latest commit that replaced ``partition`` (a ``k=v/k=v`` path) in the table's
    current history, or None when none did."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        properties = snapshot.summary.additional_properties if snapshot.summary else {}
        if properties.get(PARTITION_PROPERTY) == partition and MANIFEST_PROPERTY in properties:
            return Manifest.from_json(properties[MANIFEST_PROPERTY])
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return None


def partition_files(table: Table, partition: Mapping[str, str | None]) -> list[DataFile]:
    """The data files the table holds now in ``partition`` (their ``record_count`` is the rows)."""
    files = []
    for task in table.scan(row_filter=partition_filter(partition)).plan_files():
        if task.delete_files:
            raise ValidationError(f"{'.'.join(table.name())} has delete files in partition "
                                  f"{partition_path(partition)}; albert-batch writes copy-on-write and cannot count it")
        files.append(task.file)
    return files


def _pause(attempt: int) -> None:
    time.sleep(random.uniform(0, COMMIT_BACKOFF_S * 2 ** (attempt - 1)))
