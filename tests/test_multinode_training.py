"""Fine-tuning on a two-node Ray cluster with its output on S3: the training worker runs on the second node,
loads the starting model from S3, is killed in the middle of its second epoch, and Ray Train restarts it from
the first epoch's checkpoint in S3; the model it writes then runs in the batch pipeline on the same cluster.

The fine-tuning driver runs in a process of its own, because a process joins one Ray cluster only and the
test session may have joined its embedded one already."""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import traceback
from typing import Any

import pytest
from test_training import labelled

from albert_batch import RunConfig, Task, run, storage
from albert_batch.config import ResourceConfig
from albert_batch.dev.local_ray import start_head
from albert_batch.storage import Location
from albert_batch.training import finetune as finetuning
from albert_batch.training import workspace
from albert_batch.training.config import FinetuneConfig
from albert_batch.training.finetune import REPORT, WORK_DIR
from albert_batch.training.workspace import RUN
from support import read_published, write_corpus

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train writes it when it has recorded a checkpoint


def loop_killed_in_epoch_two(snapshot: str) -> Any:
    """The training loop, except that on its first attempt the worker process exits in the middle of its
    second epoch, as a worker on a lost node does: once Ray Train has recorded the first epoch's checkpoint
    (``snapshot`` exists), so that a restart has something to resume from."""

    def train_loop(config: dict[str, Any]) -> None:
        import itertools
        import time

        import ray.train

        from albert_batch import storage
        from albert_batch.storage import Location
        from albert_batch.training import loop

        if ray.train.get_checkpoint() is None:
            batches, epochs = loop.bucketed_batches, itertools.count(1)

            def dying(*args: Any, **kwargs: Any) -> Any:
                epoch = next(epochs)
                for i, batch in enumerate(batches(*args, **kwargs)):
                    if epoch == 2 and i == 2:
                        deadline = time.monotonic() + 60
                        while not storage.exists(Location.parse(snapshot)) and time.monotonic() < deadline:
                            time.sleep(0.2)
                        os._exit(1)
                    yield batch

            loop.bucketed_batches = dying
        loop.train_loop(config)

    return train_loop


def finetune_then_run(config: FinetuneConfig, run_config: RunConfig) -> None:
    """The driver's process: fine-tune with the dying loop, then run the batch pipeline with the model."""
    try:
        snapshot = f"{config.output}/{WORK_DIR}/ray_train/finetune/{SNAPSHOT}"
        finetuning.train_loop = loop_killed_in_epoch_two(snapshot)
        finetuning.finetune(config)
        run(run_config)
    except BaseException:
        traceback.print_exc()
        raise


@pytest.mark.slow
def test_a_worker_on_another_node_killed_mid_epoch_resumes_from_s3_and_its_model_runs(tmp_path, s3, s3_client,
                                                                                      monkeypatch):
    s3_client.create_dir("models")
    head = start_head(token=secrets.token_hex(16), log=tmp_path / "head.log", extra_args=["--num-cpus=2"],
                      env={"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"})
    second = None
    try:
        head_node = {n["node_id"] for n in head._alive_nodes()}
        second = head.add_node(log=tmp_path / "node.log", resources={"worker_node": 1}, num_cpus=2)
        [second_node] = {n["node_id"] for n in head._alive_nodes()} - head_node
        config = FinetuneConfig(task=Task.CLASSIFY, train=labelled(tmp_path, Task.CLASSIFY, 160, "train"),
                                eval=labelled(tmp_path, Task.CLASSIFY, 40, "eval"), output="s3://models/sentiment",
                                init="tiny", epochs=2, batch_size=16, max_length=64, vocab_size=400,
                                ray_address=head.gcs_address, worker_resources={"worker_node": 1})
        (tmp_path / "input").mkdir()
        write_corpus(tmp_path / "input/in.parquet", [1, 2], ["Absolutely love it!", "Broke after a day."])
        # One model actor of one CPU: sized from the whole cluster's CPUs, an actor would not fit on one node.
        run_config = RunConfig(input=str(tmp_path / "input"), output=str(tmp_path / "out"), tasks="classify",
                               classifier_model="s3://models/sentiment", partition=["dt=2026-12-01"],
                               ray_address=head.gcs_address,
                               resources=ResourceConfig(model_actors=1, num_cpus_per_actor=1, tokenizer_actors=1))
        for key, value in head.environment().items():  # the cluster's token, for the driver's process
            monkeypatch.setenv(key, value)
        driver = multiprocessing.get_context("spawn").Process(target=finetune_then_run, args=(config, run_config))
        driver.start()
        driver.join(timeout=900)  # a bound on a hang only: a busy machine takes minutes
        assert driver.exitcode == 0, "fine-tuning or the run failed; its traceback is in the captured stderr"

        report = json.loads(s3_client.open_input_stream(f"models/sentiment/{REPORT}").read())
        assert [(e["epoch"], e["resumed_from"]) for e in report["epochs"]] == [(1, 0), (2, 1)], \
            "the second epoch ran once more, from the first epoch's checkpoint, not from scratch"
        assert not s3_client.get_file_info(f"models/sentiment/{WORK_DIR}").type.value, \
            "the working folder is removed once the model is written"
        workers = [a for a in head.get("/api/v0/actors?limit=1000&detail=1")["data"]["result"]["result"]
                   if a["class_name"] == "RayTrainWorker"]
        assert len(workers) == 2, "the killed worker and the one that replaced it"
        assert {w["node_id"] for w in workers} == {second_node}, "the training workers ran on the second node"
        assert len(read_published(tmp_path / "out", "classifications")) == 2
    finally:
        if second:
            second.stop()
        head.stop()


def test_a_rerun_keeps_the_checkpoints_of_the_same_settings_only(tmp_path):
    output = Location.parse(str(tmp_path / "model"))
    work = output.child(WORK_DIR)
    storage.write_bytes(output.child(REPORT), b"{}")
    storage.write_bytes(work.child(RUN), b'{"epochs": 2}')
    storage.write_bytes(work.child("ray_train", "finetune", SNAPSHOT), b"{}")

    assert workspace.start(output, work, REPORT, b'{"epochs": 2}'), "the same settings resume"
    assert not (tmp_path / "model" / REPORT).exists(), "an earlier report no longer marks a complete model"
    assert (tmp_path / "model" / WORK_DIR / "ray_train" / "finetune" / SNAPSHOT).exists()

    assert not workspace.start(output, work, REPORT, b'{"epochs": 3}'), "other settings start afresh"
    assert not (tmp_path / "model" / WORK_DIR).exists()
