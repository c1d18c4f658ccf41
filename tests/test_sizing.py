"""Stage sizes follow the cluster's resources, always leave Ray Data one CPU for its list/read/write
tasks (or the pipeline would deadlock), and yield to explicit settings."""

from __future__ import annotations

import pytest

from albert_batch import RunConfig
from albert_batch.errors import ConfigError
from albert_batch.pipeline.sizing import size_stages

BASE = {"input": "/in", "output": "/out", "classifier_model": "c", "ner_model": "n"}


@pytest.mark.parametrize("cpus", [1, 2, 4, 16, 64])
def test_cpu_clusters_leave_a_whole_cpu_for_io_tasks(cpus):
    sizing = size_stages(RunConfig(**BASE), {"CPU": cpus})
    reserved = sizing.model_actors * sizing.cpus_per_model_actor + sizing.tokenizer_actors * sizing.cpus_per_tokenizer_actor
    assert reserved <= max(0.5, cpus - 1) + 1e-9
    assert sizing.model_actors == max(1, cpus // 8)
    assert sizing.torch_threads * sizing.model_actors <= cpus
    assert sizing.gpus_per_model_actor == 0


def test_on_a_cluster_of_small_nodes_a_model_actor_fits_one_node_and_leaves_it_a_cpu():
    sizing = size_stages(RunConfig(**BASE), {"CPU": 4}, node_cpus=2)  # two nodes of two CPUs
    assert sizing.model_actors == 1 and sizing.cpus_per_model_actor == 1 and sizing.torch_threads == 2
    assert size_stages(RunConfig(**BASE), {"CPU": 4}).cpus_per_model_actor == 3  # one node of four


def test_fractional_gpus_put_several_replicas_on_each_gpu():
    config = RunConfig(**BASE, resources={"num_gpus_per_actor": 0.25})
    sizing = size_stages(config, {"CPU": 16, "GPU": 2})
    assert sizing.model_actors == 8 and sizing.gpus_per_model_actor == 0.25
    assert sizing.tokenizer_actors >= 2
    reserved = sizing.model_actors * sizing.cpus_per_model_actor + sizing.tokenizer_actors * sizing.cpus_per_tokenizer_actor
    assert reserved <= 15 + 1e-9


def test_settings_that_leave_no_cpu_for_io_tasks_are_refused_not_left_to_hang():
    config = RunConfig(**BASE, resources={"num_cpus_per_actor": 1, "tokenizer_actors": 1})
    with pytest.raises(ConfigError, match="read and write tasks need"):
        size_stages(config, {"CPU": 2})
    assert size_stages(config, {"CPU": 4}).cpus_per_model_actor == 1
    assert size_stages(RunConfig(**BASE, resources={"num_cpus_per_actor": 1}), {"CPU": 2}).cpus_per_model_actor == 1


def test_explicit_settings_win():
    config = RunConfig(**BASE, resources={"model_actors": 3, "tokenizer_actors": 2, "num_cpus_per_actor": 2})
    sizing = size_stages(config, {"CPU": 64})
    assert (sizing.model_actors, sizing.tokenizer_actors, sizing.cpus_per_model_actor) == (3, 2, 2)
    on_gpus = RunConfig(**BASE, resources={"num_gpus_per_actor": 1, "tokenizer_actors": 0})
    assert size_stages(on_gpus, {"CPU": 8, "GPU": 1}).tokenizer_actors == 0, "0: the model actors tokenize"


@pytest.mark.parametrize("cpus", [2, 16, 64])
def test_cpu_model_actors_tokenize_their_own_batches(cpus):
    """The Rust tokenizer outpaces a CPU model by hundreds of times: tokenizer actors would only hold CPUs
    and memory, and their processes would start before the first forward pass. Torch runs on every core the
    model actors share."""
    sizing = size_stages(RunConfig(**BASE), {"CPU": cpus})
    assert (sizing.tokenizer_actors, sizing.cpus_per_tokenizer_actor) == (0, 0)
    assert sizing.torch_threads == cpus // sizing.model_actors
    assert sizing.model_actors * sizing.cpus_per_model_actor == cpus - 1, "every CPU but the one for I/O tasks"
    assert (sizing.batch_size, sizing.max_tokens_per_forward) == (4096, 2048), "big batches pad less"


def test_torch_threads_follow_explicit_cpus_per_actor():
    config = RunConfig(**BASE, resources={"model_actors": 4, "num_cpus_per_actor": 3})
    assert size_stages(config, {"CPU": 64}).torch_threads == 3


@pytest.mark.parametrize(("cpus", "gpus", "share"), [(16, 1, 0.25), (16, 2, 0.25), (96, 8, 0.5), (8, 2, 0.1), (4, 1, 1.0)])
def test_gpu_clusters_feed_every_gpu_without_overbooking_cpus(cpus, gpus, share):
    config = RunConfig(**BASE, resources={"num_gpus_per_actor": share})
    sizing = size_stages(config, {"CPU": cpus, "GPU": gpus})
    assert sizing.model_actors == round(gpus / share), "every share of every GPU gets a replica"
    assert sizing.cpus_per_model_actor <= 1 and sizing.torch_threads == 1
    assert 1 <= sizing.tokenizer_actors <= 6 * gpus
    reserved = sizing.model_actors * sizing.cpus_per_model_actor + sizing.tokenizer_actors * sizing.cpus_per_tokenizer_actor
    assert reserved <= cpus - 1 + 1e-9, "one CPU stays free for Ray Data's read and write tasks"


def test_gpu_actors_get_gpu_sized_batches_unless_set():
    gpu = {"CPU": 16, "GPU": 1}
    derived = size_stages(RunConfig(**BASE, resources={"num_gpus_per_actor": 0.25}), gpu)
    assert derived.batch_size > 256 and derived.max_tokens_per_forward >= 32_768
    explicit = size_stages(RunConfig(**BASE, resources={"num_gpus_per_actor": 0.25, "batch_size": 512,
                                                        "max_tokens_per_forward": 8192}), gpu)
    assert (explicit.batch_size, explicit.max_tokens_per_forward) == (512, 8192)


def test_explicit_batch_settings_win_on_cpus_too():
    config = RunConfig(**BASE, resources={"batch_size": 64, "max_tokens_per_forward": 4096})
    sizing = size_stages(config, {"CPU": 2})
    assert (sizing.batch_size, sizing.max_tokens_per_forward) == (64, 4096)


@pytest.mark.parametrize("resources", [{}, {"num_gpus_per_actor": 0.25}])
def test_any_explicit_batch_setting_wins_even_a_small_one(resources):
    """Only an absent setting is derived: 256 rows and 2,048 tokens given explicitly are kept on GPUs too."""
    config = RunConfig(**BASE, resources={**resources, "batch_size": 256, "max_tokens_per_forward": 2048})
    sizing = size_stages(config, {"CPU": 16, "GPU": 1})
    assert (sizing.batch_size, sizing.max_tokens_per_forward) == (256, 2048)


@pytest.mark.parametrize(("resources", "cluster", "batches"), [
    ({}, {"CPU": 2}, 2),                                      # one CPU model actor: at least two batches
    ({"batch_size": 64}, {"CPU": 64}, 8),                     # eight CPU model actors
    ({"num_gpus_per_actor": 0.25}, {"CPU": 16, "GPU": 1}, 4),  # four replicas on one GPU
])
def test_each_stage_may_run_a_spare_batch_per_model_actor_ahead(resources, cluster, batches):
    """Enough waiting work for every model actor, and the queues stay a few batches long however large the
    corpus (albert_batch/pipeline/backpressure.py holds each stage to it)."""
    sizing = size_stages(RunConfig(**BASE, resources=resources), cluster)
    assert sizing.max_rows_ahead == batches * sizing.batch_size


def test_model_actors_on_dedicated_hosts_are_sized_for_the_host_not_for_a_small_head():
    """A head of one CPU and model nodes of eight CPUs offering model_node=1: each model actor takes its
    host's CPUs but one, and torch runs on all eight; a MIN..MAX pool starts at MIN and may grow to MAX."""
    config = RunConfig(**BASE, resources={"model_actors": "1..4", "model_actor_resources": ["model_node=1"]})
    host = {"CPU": 8.0, "model_node": 1.0}
    sizing = size_stages(config, {"CPU": 9}, node_cpus=8, host=host)
    assert (sizing.model_actors, sizing.max_model_actors) == (1, 4)
    assert (sizing.cpus_per_model_actor, sizing.torch_threads) == (7, 8)
    assert sizing.max_rows_ahead == sizing.batch_size * 4, "the queues feed the largest pool"
    two_per_host = size_stages(config, {"CPU": 9}, node_cpus=8, host={"CPU": 8.0, "model_node": 2.0})
    assert (two_per_host.cpus_per_model_actor, two_per_host.torch_threads) == (3.5, 4)


def test_gpu_actors_on_hosts_take_a_cpu_share_of_their_host():
    config = RunConfig(**BASE, resources={"model_actors": "1..8", "num_gpus_per_actor": 0.5})
    sizing = size_stages(config, {"CPU": 17, "GPU": 1}, node_cpus=16, host={"CPU": 16.0, "GPU": 1.0})
    assert (sizing.model_actors, sizing.max_model_actors, sizing.gpus_per_model_actor) == (1, 8, 0.5)
    assert sizing.cpus_per_model_actor == 1.0


def test_a_fixed_count_is_its_own_minimum_and_maximum():
    sizing = size_stages(RunConfig(**BASE, resources={"model_actors": 2}), {"CPU": 16})
    assert sizing.model_actors == sizing.max_model_actors == 2
    derived = size_stages(RunConfig(**BASE), {"CPU": 16})
    assert derived.model_actors == derived.max_model_actors == 2


def test_a_host_that_is_the_whole_cluster_leaves_its_tokenizer_and_io_tasks_room():
    config = RunConfig(**BASE, resources={"model_actor_resources": ["slot=1"], "tokenizer_actors": 1})
    sizing = size_stages(config, {"CPU": 2, "slot": 1}, node_cpus=2, host={"CPU": 2.0, "slot": 1.0})
    reserved = sizing.model_actors * sizing.cpus_per_model_actor + sizing.tokenizer_actors * sizing.cpus_per_tokenizer_actor
    assert sizing.cpus_per_model_actor == 0.75 and reserved <= 1 + 1e-9
    alone = size_stages(RunConfig(**BASE, resources={"model_actor_resources": ["slot=1"]}), {"CPU": 2, "slot": 1},
                        node_cpus=2, host={"CPU": 2.0, "slot": 1.0})
    assert (alone.tokenizer_actors, alone.cpus_per_model_actor) == (0, 1.0), "model actors that tokenize: the CPU but one"
