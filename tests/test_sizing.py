"""Stage sizes follow the cluster's resources, always leave Ray Data one CPU for its list/read/write
tasks (or the pipeline would deadlock), and yield to explicit settings."""

from __future__ import annotations

import pytest

from albert_batch import RunConfig
from albert_batch.runner import size_stages

BASE = {"input": "/in", "output": "/out", "classifier_model": "c", "ner_model": "n"}


@pytest.mark.parametrize("cpus", [1, 2, 4, 16, 64])
def test_cpu_clusters_leave_a_whole_cpu_for_io_tasks(cpus):
    sizing = size_stages(RunConfig(**BASE), {"CPU": cpus})
    reserved = sizing.model_actors * sizing.cpus_per_model_actor + sizing.tokenizer_actors * sizing.cpus_per_tokenizer_actor
    assert reserved <= max(0.5, cpus - 1) + 1e-9
    assert sizing.model_actors == max(1, cpus // 8)
    assert sizing.torch_threads * sizing.model_actors <= cpus
    assert sizing.gpus_per_model_actor == 0


def test_fractional_gpus_put_several_replicas_on_each_gpu():
    config = RunConfig(**BASE, resources={"num_gpus_per_actor": 0.25})
    sizing = size_stages(config, {"CPU": 16, "GPU": 2})
    assert sizing.model_actors == 8 and sizing.gpus_per_model_actor == 0.25
    assert sizing.tokenizer_actors >= 2
    reserved = sizing.model_actors * sizing.cpus_per_model_actor + sizing.tokenizer_actors * sizing.cpus_per_tokenizer_actor
    assert reserved <= 15 + 1e-9


def test_explicit_settings_win():
    config = RunConfig(**BASE, resources={"model_actors": 3, "tokenizer_actors": 2, "num_cpus_per_actor": 2})
    sizing = size_stages(config, {"CPU": 64})
    assert (sizing.model_actors, sizing.tokenizer_actors, sizing.cpus_per_model_actor) == (3, 2, 2)
