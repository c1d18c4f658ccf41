"""Where a training run keeps what every node reads: a working folder in the run's output location holding
the starting model (``base/``) and Ray Train's checkpoints (``ray_train/``), and what goes into every
checkpoint beside the model. On a cluster the output is ``s3://…``, so workers on any node load the model
through `albert_batch.inference.models.resolve` and Ray Train resumes from checkpoints that outlive the
worker (and the driver) that wrote them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from albert_batch import storage
from albert_batch.errors import OutputError, StorageError, Transient
from albert_batch.storage import Location

BASE = "base"
CHECKPOINTS = "ray_train"
RUN = "run.json"  # the settings the checkpoints were trained with, written once the base is there
MAX_FAILURES = 3  # restarts of the training workers from the last checkpoint before the run fails
# What a tokenizer may be saved as; each one the base model has goes into every checkpoint.
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# In every checkpoint beside the model: the optimizer's and the schedule's state and where in training it was
# taken, to resume from; it stays out of the model folder a run writes.
TRAINING_STATE = "training_state.pt"


def start(output: Location, work: Location, report: str, settings: bytes) -> bool:
    """Check that ``output`` can be written before any work and drop an earlier run's ``report`` (which marks
    a complete model). The working folder ``work`` stays when an earlier run of the same ``settings`` left it,
    so that this run resumes from its checkpoints (returns True); any other is removed."""
    try:
        storage.check_writable(output)
        storage.delete_file(output.child(report))
        if storage.exists(work.child(RUN)) and storage.read_bytes(work.child(RUN)) == settings:
            return True
        storage.delete_dir(work)
    except Transient:
        raise
    except StorageError as err:
        raise OutputError(f"output {output} cannot be written: {err}") from err
    return False


def run_settings(config: Any, **extra: Any) -> bytes:
    """What decides the checkpoints' meaning, as `start` and `record_settings` compare it: every setting of
    the dataclass ``config`` but where Ray runs, and ``extra`` (fine-tuning's labels)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "ray_address"} | extra
    return json.dumps(settings, sort_keys=True, default=str).encode()


def record_settings(work: Location, settings: bytes) -> None:
    """Mark ``work`` as holding a run of ``settings``: a later run of the same settings resumes from it."""
    storage.write_bytes(work.child(RUN), settings)


def upload_base(folder: Path, work: Location) -> str:
    """Copy the prepared starting model into ``work``; returns the location the workers load it from."""
    target = work.child(BASE)
    for path in sorted(folder.iterdir()):
        if path.is_file():
            storage.write_bytes(target.child(path.name), path.read_bytes())
    return target.uri


def run_config(name: str, work: Location, *, num_to_keep: int | None) -> Any:
    """Ray Train's `RunConfig` with its storage in ``work``: a re-run with the same ``name`` and ``work``
    restores the checkpoints of the run before it, and a failed worker group restarts from the latest one
    up to `MAX_FAILURES` times."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    checkpoints = work.child(CHECKPOINTS)
    return RunConfig(name=name, storage_path=checkpoints.path, storage_filesystem=checkpoints.filesystem,
                     checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
                     failure_config=FailureConfig(max_failures=MAX_FAILURES))


def node_cpus() -> int:
    """The CPUs of the largest alive node: a worker runs on one node, so its share comes from one node's
    CPUs, not the cluster's."""
    import ray

    return int(max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=1)) or 1
