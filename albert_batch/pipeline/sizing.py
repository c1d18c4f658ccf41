"""How a run is laid out on the cluster: how many model actors and tokenizer actors (none on CPUs, where
the model actors tokenize), how much of a CPU or GPU each reserves, and the batch and forward-pass sizes.
Derived from the cluster's resources and, where model actors need a GPU or a custom resource, from the
nodes that offer it (the hosts, which an autoscaler may be adding); the ``resources:`` settings win."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from albert_batch.config import ResourceConfig, RunConfig
from albert_batch.errors import ConfigError
from albert_batch.pipeline import ledger
from albert_batch.pipeline.inputs import READ_TASK_CPUS

log = logging.getLogger(__name__)

# Per CPU, the tokenizer stage is hundreds of times faster than a CPU model actor, while one GPU consumes
# tokens faster than several CPUs tokenize (BENCHMARKS.md, "Stage sizes"): a CPU model actor tokenizes its
# own batches (a fraction of a percent of its time, and no tokenizer actors to start: BENCHMARKS.md,
# "Start-up"), and a GPU needs several tokenizer actors, so that it never waits for a CPU.
CPUS_PER_MODEL_ACTOR = 8
TOKENIZER_ACTORS_PER_GPU = 6
# Each batch is sorted by length and cut into forward passes, so larger batches pad less, and a batch of
# short texts is still small. On CPUs, forward passes of ~2k tokens keep the activations in cache; a GPU
# needs far larger ones to amortise kernel launches and keep its cores busy.
BATCH_ROWS = 4096
# Rows a write gathers into one output file (per table): fewer, larger files for consumers, against the rows
# a stopped run has not yet staged.
ROWS_PER_FILE = 100_000
CPU_TOKENS_PER_FORWARD = 2048
GPU_TOKENS_PER_FORWARD = 65_536


@dataclass(frozen=True)
class StageSizing:
    model_actors: int  # at the start, and at least
    max_model_actors: int  # at most: more than model_actors where the pool grows with the work and the cluster
    cpus_per_model_actor: float
    gpus_per_model_actor: float
    torch_threads: int
    tokenizer_actors: int
    cpus_per_tokenizer_actor: float
    batch_size: int
    max_tokens_per_forward: int
    max_rows_ahead: int  # how far each stage may run ahead of the next (see pipeline/backpressure.py)
    rows_per_file: int


def size_stages(config: RunConfig, cluster: dict[str, float], node_cpus: float | None = None,
                host: Mapping[str, float] | None = None) -> StageSizing:
    """Derive the stage layout from the cluster's resources (``node_cpus``: the largest node's CPUs, where
    the cluster has several; ``host``: the resources of a node that can host model actors, where they need a
    GPU or a custom resource); settings in ``config.resources`` win.

    Ray Data's list, read and write tasks each ask for a whole logical CPU, so the actors' reservations
    leave one CPU free or the pipeline would deadlock; settings that would not raise ConfigError. Logical
    reservations only schedule: a CPU model actor runs torch on its whole share of the cores (tokenizing
    and I/O take little).
    CPU clusters: one model actor per 8 CPUs, each tokenizing its own batches (no tokenizer actors), the
    actors reserving every CPU but the one for I/O tasks; an actor's share fits one node and leaves it a CPU
    (a share of the whole cluster larger than any node would never be scheduled).
    GPU clusters: one model actor per ``num_gpus_per_actor`` share of each GPU with up to one CPU to drive
    it, several tokenizer actors per GPU on the CPUs left, and GPU-sized forward passes.
    Model actors on hosts: as many per host as its GPUs or custom resources hold, sharing its CPUs (a CPU
    actor leaves the host one CPU), however small the head; a MIN..MAX pool is sized for its MIN actors on
    the cluster as it is, the others for the hosts the autoscaler adds."""
    res = config.resources
    cpus = max(1.0, float(cluster.get("CPU", os.cpu_count() or 1)))
    spare = max(0.5, cpus - 1.0)  # what the actors may reserve between them
    if res.num_gpus_per_actor > 0:
        sizing = _size_gpu_stages(config, spare, float(cluster.get("GPU", 0.0)), host)
    else:
        sizing = _size_cpu_stages(config, cpus, spare, node_cpus or cpus, host)
    reserved = sizing.model_actors * sizing.cpus_per_model_actor + sizing.tokenizer_actors * sizing.cpus_per_tokenizer_actor
    if reserved > spare + 1e-6:
        raise ConfigError(
            f"resources: the model and tokenizer actors would reserve {reserved:g} of the cluster's {cpus:g} CPUs, "
            f"leaving less than the whole CPU that Ray Data's read and write tasks need: the run would wait "
            f"forever. Lower num_cpus_per_actor, model_actors or tokenizer_actors (at most {spare:g} CPUs in all)"
        )
    return sizing


def tokens_per_forward(resources: ResourceConfig, *, gpu: bool) -> int:
    """Tokens per forward pass, padding included: the setting, or the size that suits the device."""
    return resources.max_tokens_per_forward or (GPU_TOKENS_PER_FORWARD if gpu else CPU_TOKENS_PER_FORWARD)


def per_host(host: Mapping[str, float], needs: Mapping[str, float]) -> int:
    """How many model actors that each need ``needs`` (a GPU share, custom resources) one ``host`` holds."""
    return max(1, min((math.floor(host.get(name, 0.0) / amount + 1e-9) for name, amount in needs.items() if amount > 0),
                      default=1))


def _size_cpu_stages(config: RunConfig, cpus: float, spare: float, node_cpus: float,
                     host: Mapping[str, float] | None) -> StageSizing:
    res = config.resources
    actors, most = _actors(res, max(1, int(cpus // CPUS_PER_MODEL_ACTOR)))
    tokenizers = res.tokenizer_actors or 0
    if host is not None and not res.num_cpus_per_actor:  # dedicated hosts: their CPUs, shared by their actors
        sharing = per_host(host, dict(res.model_actor_resources))
        # ... but a quarter CPU per tokenizer actor (where set) stays free where the hosts are most of the cluster
        cpus_per_actor = max(0.5, min((host.get("CPU", 1.0) - 1) / sharing, (spare - 0.25 * tokenizers) / actors))
        threads = int(max(1.0, host.get("CPU", 1.0) // sharing))
    else:
        # the spare CPUs, but a quarter of them for tokenizer actors (where set)
        share = spare * 0.75 if tokenizers else spare
        cpus_per_actor = res.num_cpus_per_actor or min(share / actors, max(0.5, node_cpus - 1))
        threads = int(res.num_cpus_per_actor) if res.num_cpus_per_actor else int(min(cpus // actors, node_cpus))
    batch_size = res.batch_size or BATCH_ROWS
    return StageSizing(
        model_actors=actors,
        max_model_actors=most,
        cpus_per_model_actor=round(cpus_per_actor, 3),
        gpus_per_model_actor=0.0,
        torch_threads=max(1, threads),
        tokenizer_actors=tokenizers,
        cpus_per_tokenizer_actor=_tokenizer_share(spare - cpus_per_actor * actors, tokenizers),
        batch_size=batch_size,
        max_tokens_per_forward=tokens_per_forward(res, gpu=False),
        max_rows_ahead=_rows_ahead(batch_size, most),
        rows_per_file=res.rows_per_file or ROWS_PER_FILE,
    )


def _size_gpu_stages(config: RunConfig, spare: float, gpus: float, host: Mapping[str, float] | None) -> StageSizing:
    res = config.resources
    actors, most = _actors(res, max(1, math.floor(gpus / res.num_gpus_per_actor + 1e-9)))
    # Each model actor's CPU only launches kernels and postprocesses; tokenizers get at least half the CPUs.
    if host is not None:
        sharing = per_host(host, {"GPU": res.num_gpus_per_actor, **dict(res.model_actor_resources)})
        cpus_per_actor = res.num_cpus_per_actor or min(1.0, host.get("CPU", 1.0) / (2 * sharing))
    else:
        cpus_per_actor = res.num_cpus_per_actor or min(1.0, spare / (2 * actors))
    left = spare - cpus_per_actor * actors
    tokenizers = res.tokenizer_actors if res.tokenizer_actors is not None else max(
        1, min(math.ceil(TOKENIZER_ACTORS_PER_GPU * max(gpus, 1.0)), int(left)))
    batch_size = res.batch_size or BATCH_ROWS
    return StageSizing(
        model_actors=actors,
        max_model_actors=most,
        cpus_per_model_actor=round(cpus_per_actor, 3),
        gpus_per_model_actor=res.num_gpus_per_actor,
        torch_threads=max(1, int(cpus_per_actor)),
        tokenizer_actors=tokenizers,
        cpus_per_tokenizer_actor=_tokenizer_share(left, tokenizers),
        batch_size=batch_size,
        max_tokens_per_forward=tokens_per_forward(res, gpu=True),
        max_rows_ahead=_rows_ahead(batch_size, most),
        rows_per_file=res.rows_per_file or ROWS_PER_FILE,
    )


def model_needs(config: RunConfig) -> dict[str, float]:
    """What one model actor needs besides CPUs: a GPU share, custom resources (what makes a node a host)."""
    needs = {"GPU": config.resources.num_gpus_per_actor, **dict(config.resources.model_actor_resources)}
    return {name: amount for name, amount in needs.items() if amount > 0}


def actor_needs(config: RunConfig, sizing: StageSizing) -> dict[str, float]:
    """The resources one model actor reserves."""
    return {"CPU": sizing.cpus_per_model_actor, "GPU": sizing.gpus_per_model_actor,
            **dict(config.resources.model_actor_resources)}


def reserved(sizing: StageSizing) -> dict[str, dict[str, float]]:
    """What one worker of each stage reserves (`albert_batch.pipeline.ledger.cost`)."""
    return {ledger.MODEL: {"CPU": sizing.cpus_per_model_actor, "GPU": sizing.gpus_per_model_actor},
            ledger.TOKENIZE: {"CPU": sizing.cpus_per_tokenizer_actor}, ledger.READ: {"CPU": READ_TASK_CPUS},
            ledger.WRITE: {"CPU": 0.0}}


def _actors(res: ResourceConfig, derived: int) -> tuple[int, int]:
    """The model actors at the start and at most: the setting's, or ``derived`` from the cluster."""
    return (res.model_actors.min, res.model_actors.max) if res.model_actors else (derived, derived)


def _rows_ahead(batch_size: int, model_actors: int) -> int:
    """A spare batch waiting for each model actor (at least two), beside the batches Ray Data has already
    handed to each actor: enough to keep the model stage fed, while the queues stay a few batches long
    however large the corpus."""
    return batch_size * max(2, model_actors)


def _tokenizer_share(left: float, tokenizers: int) -> float:
    """Each tokenizer actor's logical CPUs: an even split of what the model actors left, at most one CPU
    (a tokenizer actor runs one batch at a time), and a token 0.05 when nothing is left; 0 without any."""
    return round(min(1.0, max(0.05, left / tokenizers)), 3) if tokenizers else 0.0
