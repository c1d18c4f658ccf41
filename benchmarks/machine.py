"""What the machine allows: its CPU's features and how fast it multiplies matrices in fp32 and bf16, and so
the most tokens per second an ALBERT model could run at if it did nothing but its matrix products. Every
throughput the harness reports is also given as a share of that ceiling, so figures from different CPUs
compare."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

# ALBERT-base's largest product for a forward pass of 256 tokens: tokens × hidden · hidden × FFN. Small enough
# that an emulated bf16 product takes seconds, not a minute; fp32 runs as fast at it as at 2,048 tokens.
MATMUL_SHAPE = (256, 768, 3072)
DTYPES = ("fp32", "bf16")


def cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def cpu_class() -> str:
    """The CPU's class as the results in BENCHMARKS.md are grouped: what its fastest matrix instructions are."""
    from albert_batch.inference.device import cpu_features

    features = cpu_features()
    if features["amx_bf16"]:
        return "AMX"
    if features["avx512_bf16"]:
        return "AVX-512-BF16"
    if features["avx512f"]:
        return "AVX-512"
    return "AVX2" if features["avx2"] else "older than AVX2"


def product_gflops(dtype: str, *, seconds: float = 2.0) -> dict[str, float]:
    """The machine's GFLOP/s on `MATMUL_SHAPE` products in ``dtype``, per kernel: one core's rate times the
    cores torch uses. The kernels are torch's two for CPUs: ``mm`` (MKL's in fp32 on x86, oneDNN's in bf16)
    and, where torch has oneDNN and it runs ``dtype`` here, ``onednn_packed``: oneDNN's on a weight laid out
    once, which albert-batch's bf16 model actors run. The ceiling is the faster (`ceilings`): in fp32 oneDNN's
    was measured 1.18x MKL's on an AMD EPYC, so MKL's alone would understate the machine.

    One core's rate is timed on one thread by that thread's CPU time, so other work on the machine does not
    lower it (a product on every core would wait at each barrier for a core someone else holds), over about
    ``seconds`` in all after a warm-up product. The pipeline's CPU actors run one pass per core, each on one
    thread, as this does."""
    import torch

    m, k, n = MATMUL_SHAPE
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(torch_dtype)
    b = torch.randn(k, n, generator=generator).to(torch_dtype)
    kernels = {"mm": lambda: torch.mm(a, b)}
    if torch.backends.mkldnn.is_available():
        try:  # oneDNN refuses bf16 on CPUs without the instructions its bf16 kernels need
            packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)
            kernels["onednn_packed"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
            kernels["onednn_packed"]()
        except RuntimeError:
            kernels.pop("onednn_packed", None)
    threads = torch.get_num_threads()
    rates = {}
    torch.set_num_threads(1)
    try:
        for name, product in kernels.items():
            product()
            products, started = 0, time.thread_time()
            while products == 0 or time.thread_time() - started < seconds / len(kernels):
                product()
                products += 1
            rates[name] = 2 * m * k * n * products / (time.thread_time() - started) / 1e9 * threads
    finally:
        torch.set_num_threads(threads)
    return rates


def flops_per_token(model_dir: str, mean_tokens: float) -> float:
    """Floating-point operations an ALBERT encoder spends per token: every layer's seven matrix products
    (query, key, value, attention output, the feed-forward pair) and attention over ``mean_tokens``, plus
    the embedding projection. Heads, softmax and layer norms are left out (under 1% at the base shape)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, ffn, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_layer = 4 * hidden * hidden + 2 * hidden * ffn + 2 * mean_tokens * hidden
    return 2.0 * (layers * per_layer + config["embedding_size"] * hidden)


def ceilings(model_dir: str, mean_tokens: float, *, seconds: float = 2.0) -> dict[str, Any]:
    """The machine's matrix throughput per dtype and the tokens/s it allows the model at ``model_dir``."""
    import torch

    from albert_batch.inference.device import cpu_features

    flops = flops_per_token(model_dir, mean_tokens)
    per_kernel = {dtype: {kernel: round(rate, 1) for kernel, rate in product_gflops(dtype, seconds=seconds).items()}
                  for dtype in DTYPES}
    gflops = {dtype: max(rates.values()) for dtype, rates in per_kernel.items()}
    return {"cpu": cpu_model(), "cpu_class": cpu_class(), "features": cpu_features(),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "matmul_shape": list(MATMUL_SHAPE),
            "gflops": gflops, "gflops_per_kernel": per_kernel,
            "mflops_per_token": round(flops / 1e6, 1),
            "tokens_per_s": {dtype: round(g * 1e9 / flops, 1) for dtype, g in gflops.items()}}


def averaged(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """Ceilings measured more than once in a run (at its start and its end) as one: each dtype's and kernel's
    mean rate. On a shared host the ceiling moves by 10-20% within an hour, so a run of many minutes is held
    against the mean of the rates around it rather than those of its first seconds. Each measurement's tokens/s
    stays under ``measured_tokens_per_s``."""
    first = measured[0]
    if len(measured) == 1:
        return first

    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 1)

    per_kernel = {dtype: {kernel: mean([c["gflops_per_kernel"][dtype][kernel] for c in measured])
                          for kernel in rates} for dtype, rates in first["gflops_per_kernel"].items()}
    return {**first, "gflops": {dtype: mean([c["gflops"][dtype] for c in measured]) for dtype in first["gflops"]},
            "gflops_per_kernel": per_kernel,
            "tokens_per_s": {dtype: mean([c["tokens_per_s"][dtype] for c in measured]) for dtype in first["tokens_per_s"]},
            "measured_tokens_per_s": {dtype: [c["tokens_per_s"][dtype] for c in measured] for dtype in first["tokens_per_s"]}}


def compute_dtype(details: dict[str, Any]) -> str:
    """Whose ceiling a measurement is held against: bf16's for runs that multiply in bf16, else fp32's (int8
    runs too: there is no int8 ceiling, and theirs may exceed 100%)."""
    used = str(details.get("precision") or details.get("dtype") or "")
    if used.startswith("auto ("):  # "auto (bf16: this CPU has AMX)": the dtype auto chose, not the reason
        used = used.removeprefix("auto (").split(":")[0]
    return "bf16" if "bf16" in used or "bfloat16" in used else "fp32"


def share(tokens_per_s: float | None, dtype: str, machine_ceilings: dict[str, Any] | None) -> float | None:
    """``tokens_per_s`` as a share of the ``dtype`` ceiling; None without a ceiling."""
    if tokens_per_s is None or not machine_ceilings:
        return None
    return round(tokens_per_s / machine_ceilings["tokens_per_s"][dtype], 3)
