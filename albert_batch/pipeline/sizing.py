"""How a run is laid out on the cluster: how many tokenizer and model actors, how much of a CPU or GPU
each reserves, and the batch and forward-pass sizes. Derived from the cluster's resources; the
``resources:`` settings win."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from albert_batch.config import ResourceConfig, RunConfig
from albert_batch.errors import ConfigError

log = logging.getLogger(__name__)

# Per CPU, the tokenizer stage is hundreds of times faster than a CPU model actor, while one GPU consumes
# tokens faster than several CPUs tokenize (BENCHMARKS.md, "Stage sizes"): one tokenizer actor keeps dozens
# of CPU model cores busy, and a GPU needs several tokenizer actors.
CPUS_PER_MODEL_ACTOR = 8
CPUS_PER_TOKENIZER_ACTOR = 64
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
    model_actors: int
    cpus_per_model_actor: float
    gpus_per_model_actor: float
    torch_threads: int
    tokenizer_actors: int
    cpus_per_tokenizer_actor: float
    batch_size: int
    max_tokens_per_forward: int
    max_rows_ahead: int  # how far each stage may run ahead of the next (see pipeline/backpressure.py)
    rows_per_file: int


def size_stages(config: RunConfig, cluster: dict[str, float], node_cpus: float | None = None) -> StageSizing:
    """Derive the stage layout from the cluster's resources (``node_cpus``: the largest node's CPUs, where
    the cluster has several); settings in ``config.resources`` win.

    Ray Data's list, read and write tasks each ask for a whole logical CPU, so the actors' reservations
    leave one CPU free or the pipeline would deadlock; settings that would not raise ConfigError. Logical
    reservations only schedule: a CPU model actor runs torch on its whole share of the cores (tokenizing
    and I/O take little).
    CPU clusters: one model actor per 8 CPUs, one tokenizer actor per 64 CPUs; an actor's share fits one
    node and leaves it a CPU (a share of the whole cluster larger than any node would never be scheduled).
    GPU clusters: one model actor per ``num_gpus_per_actor`` share of each GPU with up to one CPU to drive
    it, several tokenizer actors per GPU on the CPUs left, and GPU-sized forward passes."""
    res = config.resources
    cpus = max(1.0, float(cluster.get("CPU", os.cpu_count() or 1)))
    spare = max(0.5, cpus - 1.0)  # what the actors may reserve between them
    if res.num_gpus_per_actor > 0:
        sizing = _size_gpu_stages(config, spare, float(cluster.get("GPU", 0.0)))
    else:
        sizing = _size_cpu_stages(config, cpus, spare, node_cpus or cpus)
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


def _size_cpu_stages(config: RunConfig, cpus: float, spare: float, node_cpus: float) -> StageSizing:
    res = config.resources
    actors = res.model_actors or max(1, int(cpus // CPUS_PER_MODEL_ACTOR))
    cpus_per_actor = res.num_cpus_per_actor or min(spare * 0.75 / actors, max(0.5, node_cpus - 1))
    threads = int(res.num_cpus_per_actor) if res.num_cpus_per_actor else int(min(cpus // actors, node_cpus))
    tokenizers = res.tokenizer_actors or math.ceil(cpus / CPUS_PER_TOKENIZER_ACTOR)
    batch_size = res.batch_size or BATCH_ROWS
    return StageSizing(
        model_actors=actors,
        cpus_per_model_actor=round(cpus_per_actor, 3),
        gpus_per_model_actor=0.0,
        torch_threads=max(1, threads),
        tokenizer_actors=tokenizers,
        cpus_per_tokenizer_actor=_tokenizer_share(spare - cpus_per_actor * actors, tokenizers),
        batch_size=batch_size,
        max_tokens_per_forward=tokens_per_forward(res, gpu=False),
        max_rows_ahead=_rows_ahead(batch_size, actors),
        rows_per_file=res.rows_per_file or ROWS_PER_FILE,
    )


def _size_gpu_stages(config: RunConfig, spare: float, gpus: float) -> StageSizing:
    res = config.resources
    if gpus == 0:
        log.warning("num_gpus_per_actor is set but the cluster reports no GPU: the run waits for GPU nodes to join "
                    "until Ray Data's no-progress timeout; set num_gpus_per_actor to 0 on a CPU-only cluster")
    actors = res.model_actors or max(1, math.floor(gpus / res.num_gpus_per_actor + 1e-9))
    # Each model actor's CPU only launches kernels and postprocesses; tokenizers get at least half the CPUs.
    cpus_per_actor = res.num_cpus_per_actor or min(1.0, spare / (2 * actors))
    left = spare - cpus_per_actor * actors
    tokenizers = res.tokenizer_actors or max(1, min(math.ceil(TOKENIZER_ACTORS_PER_GPU * max(gpus, 1.0)), int(left)))
    batch_size = res.batch_size or BATCH_ROWS
    return StageSizing(
        model_actors=actors,
        cpus_per_model_actor=round(cpus_per_actor, 3),
        gpus_per_model_actor=res.num_gpus_per_actor,
        torch_threads=max(1, int(cpus_per_actor)),
        tokenizer_actors=tokenizers,
        cpus_per_tokenizer_actor=_tokenizer_share(left, tokenizers),
        batch_size=batch_size,
        max_tokens_per_forward=tokens_per_forward(res, gpu=True),
        max_rows_ahead=_rows_ahead(batch_size, actors),
        rows_per_file=res.rows_per_file or ROWS_PER_FILE,
    )


def _rows_ahead(batch_size: int, model_actors: int) -> int:
    """A spare batch waiting for each model actor (at least two), beside the batches Ray Data has already
    handed to each actor: enough to keep the model stage fed, while the queues stay a few batches long
    however large the corpus."""
    return batch_size * max(2, model_actors)


def _tokenizer_share(left: float, tokenizers: int) -> float:
    """Each tokenizer actor's logical CPUs: an even split of what the model actors left, at most one CPU
    (a tokenizer actor runs one batch at a time), and a token 0.05 when nothing is left."""
    return round(min(1.0, max(0.05, left / tokenizers)), 3)
