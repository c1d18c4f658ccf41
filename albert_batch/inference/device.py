"""Where and in which precision a model runs: the device, the dtype ``--precision`` resolves to on it, and
the CPU features that decide it. Which kernels the model then runs with is `albert_batch.inference.kernels`."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from albert_batch.config import Precision

if TYPE_CHECKING:
    import torch

# CPU features that decide how fast a precision runs, as /proc/cpuinfo names them.
CPU_FEATURES = ("amx_bf16", "avx512f", "avx512_bf16", "avx2")
# How much slower bf16 matrix products run than fp32 on a CPU without bf16 instructions, where torch emulates
# them: 1.6 GFLOP/s against 104-135 on a 2-core AMD EPYC with AVX2 only (BENCHMARKS.md, "The machine's ceiling").
EMULATED_BF16_SLOWDOWN = 80


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where it cannot be read (then no fast path is assumed)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((frozenset(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")),
                        frozenset())
    except OSError:
        return frozenset()


def cpu_features() -> dict[str, bool]:
    """Which of `CPU_FEATURES` this CPU has, for benchmark reports and manifests' readers."""
    return {name: name in cpu_flags() for name in CPU_FEATURES}


def cpu_has_amx() -> bool:
    """True when the CPU multiplies bf16 matrices natively and fast (Intel AMX)."""
    return "amx_bf16" in cpu_flags()


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions at all (AMX, or AVX-512's BF16 extension). Without
    them torch emulates bf16 matrix products, far slower than fp32."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def slow_precision(precision: Precision, *, use_gpu: bool) -> str | None:
    """A warning for a precision this node's CPU runs far slower than fp32, or None: bf16 on CPU actors of a
    CPU without bf16 instructions (``auto`` picks fp32 there). Such a run is not refused: its results are
    right, and the node that checks is not always the node that runs the model."""
    if precision is not Precision.BF16 or use_gpu or cpu_has_native_bf16():
        return None
    return (f"precision bf16 on this CPU (no AMX, no AVX-512-BF16) runs emulated: bf16 matrix products measured "
            f"~{EMULATED_BF16_SLOWDOWN}x slower than fp32 on such a CPU; use --precision auto or fp32 (or int8)")


def resolve_device(use_gpu: bool) -> torch.device:
    import torch

    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def resolve_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 where the hardware runs it fast (CPUs with AMX or AVX-512-BF16, GPUs with bf16), fp32
    elsewhere. On both CPU classes bf16 was measured about twice as fast as fp32 end to end, with trained
    models' labels and entity spans agreeing with fp32's above the targets (BENCHMARKS.md)."""
    import torch

    if precision in (Precision.FP32, Precision.INT8):  # int8: the model loads in fp32, then is quantised
        return torch.float32
    if precision is Precision.BF16:
        return torch.bfloat16
    if precision is Precision.FP16:
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def describe_precision(precision: Precision, *, use_gpu: bool) -> str:
    """What ``precision`` means on this node, for summaries and manifests (no torch import)."""
    if precision is not Precision.AUTO:
        return precision.value
    if use_gpu:
        return "auto (bf16 on GPUs that support it, else fp32)"
    if cpu_has_amx():
        return "auto (bf16: this CPU has AMX)"
    if cpu_has_native_bf16():
        return "auto (bf16: this CPU has AVX-512-BF16)"
    return "auto (fp32: this CPU lacks AMX and AVX-512-BF16)"
