"""Where and in which precision a model runs: the device, the dtype ``--precision`` resolves to on it,
and the bf16 kernel fusion."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from albert_batch.config import Precision

if TYPE_CHECKING:
    import torch


@functools.cache
def cpu_has_amx() -> bool:
    """True when the CPU multiplies bf16 matrices natively (Intel AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in fh)
    except OSError:
        return False


def resolve_device(use_gpu: bool) -> torch.device:
    import torch

    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def resolve_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 where the hardware runs it fast (AMX CPUs, GPUs with bf16), fp32 elsewhere."""
    import torch

    if precision is Precision.FP32:
        return torch.float32
    if precision is Precision.BF16:
        return torch.bfloat16
    if precision is Precision.FP16:
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_amx() else torch.float32


def describe_precision(precision: Precision, *, use_gpu: bool) -> str:
    """What ``precision`` means on this node, for summaries and manifests (no torch import)."""
    if precision is not Precision.AUTO:
        return precision.value
    if use_gpu:
        return "auto (bf16 on GPUs that support it, else fp32)"
    return f"auto ({'bf16: this CPU has AMX' if cpu_has_amx() else 'fp32: this CPU lacks AMX'})"


def fuse_tanh_gelu(model: torch.nn.Module) -> int:
    """Swap transformers' tanh-approximation GELU (ALBERT's ``gelu_new``), written as six elementwise
    torch ops, for torch's fused kernel of the same formula; return how many modules were swapped.

    In bf16 each of those ops is a pass over the feed-forward layer's largest tensor, rounded to bf16 in
    between; the fused kernel makes one pass and computes in float32 inside: faster, and no further from
    fp32 (BENCHMARKS.md, "What makes it fast"). Not for fp32 models: their results must match Hugging
    Face's pipelines, which use the op-by-op formula."""
    import torch
    from transformers.activations import FastGELUActivation, NewGELUActivation

    swapped = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, (NewGELUActivation, FastGELUActivation)):
                setattr(parent, name, torch.nn.GELU(approximate="tanh"))
                swapped += 1
    return swapped
