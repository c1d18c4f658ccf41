"""OpenLineage for the batch job: what `RayBatchJobOperator` read and wrote, in OpenLineage's terms, for
apache-airflow-providers-openlineage (which calls ``get_openlineage_facets_on_complete`` and emits the
events when a transport is configured; without the provider or a transport, nothing here runs).

Datasets are named as OpenLineage's naming conventions say for object stores and files: ``s3://BUCKET``
with the key as the name, ``file`` with the absolute path as the name. The Hive output's datasets are the
tables' folders (``OUTPUT/classifications``), not one partition, so every run of a table is the same
dataset. An Iceberg table is ``iceberg://CATALOG`` with ``NAMESPACE.TABLE`` as the name. The run carries
the albert-batch run id (an external query facet) and each output its row count in the partition.
"""

from __future__ import annotations

import logging
from typing import Any

from albert_batch import iceberg, storage
from albert_batch.config import RunConfig
from albert_batch.contract import tables_for
from albert_batch.errors import AlbertBatchError
from albert_batch.storage import Location

log = logging.getLogger(__name__)


def dataset_id(location: Location) -> tuple[str, str]:
    """(namespace, name) of a file or folder."""
    if location.scheme == "s3":
        bucket, _, key = location.path.partition("/")
        return f"s3://{bucket}", key or "/"
    return "file", location.path


def output_ids(config: RunConfig) -> dict[str, tuple[str, str]]:
    """(namespace, name) of each output table of a run."""
    if iceberg.is_iceberg(config.output):
        target = iceberg.IcebergTarget.parse(config.output)
        return {t: (f"{iceberg.SCHEME}://{target.catalog}", target.identifier(t)) for t in tables_for(config.tasks)}
    return {t: dataset_id(config.output_location.child(t)) for t in tables_for(config.tasks)}


def operator_lineage(config: RunConfig, run_id: str | None, rows: dict[str, int]) -> Any:
    """The provider's ``OperatorLineage`` for one run: its input, its output tables (with ``rows`` where
    known) and, once it published, its run id."""
    from airflow.providers.common.compat.openlineage.facet import (
        ExternalQueryRunFacet,
        InputDataset,
        OutputDataset,
        OutputStatisticsOutputDatasetFacet,
    )
    from airflow.providers.openlineage.extractors import OperatorLineage

    namespace, name = dataset_id(config.input_location)
    outputs = []
    for table, (out_namespace, out_name) in output_ids(config).items():
        facets = {"outputStatistics": OutputStatisticsOutputDatasetFacet(rowCount=rows[table])} if table in rows else {}
        outputs.append(OutputDataset(namespace=out_namespace, name=out_name, outputFacets=facets))
    run_facets = {"externalQuery": ExternalQueryRunFacet(externalQueryId=run_id, source="albert-batch")} if run_id else {}
    return OperatorLineage(inputs=[InputDataset(namespace=namespace, name=name)], outputs=outputs,
                           run_facets=run_facets)


def published_rows(config: RunConfig, run_id: str, s3: storage.S3Settings | None) -> dict[str, int]:
    """Each table's rows in the partition the run published; none where it cannot be read (lineage never
    fails a task)."""
    from albert_batch.pipeline.validate import validate_partition

    try:
        with storage.s3_settings(s3):
            summary = validate_partition(config.output_uri, config.partition_path, config.tasks, run_id=run_id)
    except AlbertBatchError as err:
        log.warning("OpenLineage: the row counts of %s are not reported: %s", config.partition_path, err)
        return {}
    return {table: entry["rows"] for table, entry in summary.tables.items()}
