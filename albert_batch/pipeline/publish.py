"""Atomic publication of a run's partitions.

A run writes every file into its partition's staging folder, ``OUTPUT/_staging/<partition>/`` (consumers
skip ``_`` folders; see `albert_batch.pipeline.staging`). When all rows are written and accounted for, it
writes its reports (`albert_batch.quality`) and ``_COMMIT.json`` there — the point of no return — and then,
for each table's partition: removes ``_SUCCESS``, removes the partition's old files, moves the new data
files in, copies the reports in, writes ``_manifest.json`` and finally ``_SUCCESS``. Consumers read a partition only when
``_SUCCESS`` exists, so they see either the old complete partition or the new one.

Every step is idempotent, so a run killed after its commit is finished by the next run of the same
partition (`recover`); a run killed before its commit leaves the partitions as they were. Runs of other
partitions leave it alone: they cannot tell a dead run's commit from one being applied at that moment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

from albert_batch import storage
from albert_batch.contract import COMMIT, MANIFEST, STAGING_DIR, SUCCESS, Manifest
from albert_batch.errors import AlbertBatchError, PublishError
from albert_batch.storage import Location

log = logging.getLogger(__name__)

REPORTS = "_reports"  # in the staging folder: the partition's reports, copied into each table's partition


def publish(output: Location, run_id: str, partition_path: str, staging: Location,
            manifests: dict[str, Manifest], reports: Mapping[str, bytes]) -> None:
    """Commit the files staged in ``staging`` and publish one partition per table, as ``manifests`` list them,
    with ``reports`` (file name -> content) in each."""
    commit = {"run_id": run_id, "partition_path": partition_path,
              "files": {table: manifest.files for table, manifest in manifests.items()},
              "manifests": {table: dataclasses.asdict(manifest) for table, manifest in manifests.items()},
              "reports": sorted(reports)}
    try:
        for name, content in reports.items():
            storage.write_bytes(staging.child(REPORTS, name), content)
        storage.write_bytes(staging.child(COMMIT), json.dumps(commit, indent=2, default=str).encode())
        apply_commit(output, staging, commit)
    except AlbertBatchError as err:
        raise PublishError(
            f"publishing run {run_id} to {output} failed: {err}. Completed partitions are intact; an interrupted "
            f"one has no {SUCCESS} and is finished by the next run of partition {partition_path}"
        ) from err


def apply_commit(output: Location, staging: Location, commit: dict[str, Any]) -> None:
    """Publish a committed run's partitions; every step is idempotent, so it may be applied again. A
    partition's deletes and moves run `storage.CONCURRENCY` at a time."""
    for table, names in commit["files"].items():
        target = output.child(table, commit["partition_path"])
        storage.delete_file(target.child(SUCCESS))
        keep = set(names)
        present = {f.base_name for f in storage.list_files(target, recursive=False)}
        storage.concurrently(storage.delete_file, [target.child(name) for name in sorted(present - keep - {SUCCESS})])
        staged = {f.base_name for f in storage.list_files(staging.child(table), recursive=False)}
        vanished = [name for name in names if name not in staged and name not in present]
        if vanished:
            raise PublishError(f"staged files {vanished[:5]} of {staging.child(table)} vanished before they were "
                               "published")
        storage.concurrently(lambda pair: storage.move(*pair),
                             [(staging.child(table, name), target.child(name)) for name in names if name in staged])
        storage.concurrently(lambda pair: storage.write_bytes(pair[1], storage.read_bytes(pair[0])),
                             [(staging.child(REPORTS, name), target.child(name)) for name in commit.get("reports", [])])
        storage.write_bytes(target.child(MANIFEST), json.dumps(commit["manifests"][table], indent=2, default=str).encode())
        storage.write_bytes(target.child(SUCCESS), b"")
        log.info("published %s", target)
    storage.delete_dir(staging)


def recover(output: Location, partition_path: str) -> list[str]:
    """Finish the publications of ``partition_path`` that were committed but interrupted; report other
    runs' staging folders. Another partition's commit may be a run publishing right now, so it is left to
    that partition's next run."""
    finished = []
    for staging in storage.list_dirs(output.child(STAGING_DIR)):
        commit_file = staging.child(COMMIT)
        if not storage.exists(commit_file):  # work staged for a later publication, resumed by its partition's runs
            continue
        commit = json.loads(storage.read_bytes(commit_file))
        if commit["partition_path"] != partition_path:
            log.warning("run %s committed partition %s but has not finished publishing it (or is doing so now); "
                        "the next run of that partition finishes it", commit["run_id"], commit["partition_path"])
            continue
        log.warning("finishing the interrupted publication of run %s", commit["run_id"])
        try:
            apply_commit(output, staging, commit)
        except AlbertBatchError as err:
            raise PublishError(
                f"finishing the interrupted publication of run {commit['run_id']} failed: {err}. Fix the cause and "
                f"run again, or delete {staging} to abandon it (its partition then stays without {SUCCESS} "
                "until it is re-run)"
            ) from err
        finished.append(commit["run_id"])
    return finished

