"""What each kernel choice is worth in a CPU model actor's forward passes, alone: ALBERT-base (random weights)
on documents of the benchmark corpus, cut into passes of at most 2,048 tokens as a run cuts them, one pass at
a time on one thread (as each of an actor's pass threads runs), timed by the thread's CPU time (robust to
other work on the machine); the variants take turns for three rounds, and each one's best round counts.

    python -m benchmarks.forward                         # the variants below, 600 documents
    python -m benchmarks.forward --compile               # and torch.compile (about a minute to compile)
    python -m benchmarks.forward --profile "bf16 packed"   # where one variant's CPU time goes, by operator

Variants: ``fp32`` (what ``--precision fp32`` runs: transformers' ops), ``fp32 fused GELU`` (what ``auto`` runs
on CPUs without bf16 instructions), ``fp32 packed`` (the fused GELU and
`albert_batch.inference.kernels.pack_linears` in fp32: not what any precision runs), ``bf16 fused GELU`` (bf16
as it ran before its linear layers moved to oneDNN), ``bf16 packed`` (what bf16 runs now on CPUs with bf16
instructions: `kernels.prepare`), and with ``--compile`` ``bf16 compiled`` (``bf16 fused GELU`` through
``torch.compile``: inductor, dynamic shapes, frozen weights). The bf16 variants run only on CPUs with bf16
instructions (elsewhere torch emulates bf16, ~80x slower). Each is printed with tokens per CPU-second (real
tokens: padding excluded), its share of one core's ceiling in its dtype (`benchmarks.machine`), and its
largest logit difference from ``fp32``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from albert_batch.inference.device import cpu_has_native_bf16
from benchmarks import workload
from benchmarks.machine import cpu_class, cpu_model, flops_per_token, product_gflops

# Models and corpora, where `benchmarks.run` caches them.
WORK = Path(__file__).resolve().parent.parent / ".cache" / "bench"
VARIANTS = ("fp32", "fp32 fused GELU", "fp32 packed", "bf16 fused GELU", "bf16 packed")


def build(variant: str, folder: Path):
    import torch

    from albert_batch.config import Precision
    from albert_batch.contract import Task
    from albert_batch.inference import albert, kernels

    dtype = torch.bfloat16 if variant.startswith("bf16") else torch.float32
    model = albert.load(folder, Task.CLASSIFY, [folder / "model.safetensors"], dtype=dtype)
    if variant == "bf16 packed":
        kernels.prepare(model, precision=Precision.BF16, dtype=dtype, device=torch.device("cpu"))
    elif variant != "fp32":
        kernels.fuse_tanh_gelu(model)
        if variant == "fp32 packed":
            kernels.pack_linears(model)
    if variant == "bf16 compiled":
        import torch._inductor.config as inductor

        inductor.freezing = True
        return dtype, torch.compile(model, dynamic=True)
    return dtype, model


def passes(models: workload.Models, docs: int) -> tuple[list, int]:
    """The 2,000-document corpus's first ``docs`` documents as padded (ids, mask) passes of at most 2,048
    tokens, and their real tokens."""
    import torch
    from tokenizers import Tokenizer

    from albert_batch.inference.predictor import token_budget_batches

    texts = workload.load_texts(workload.build_corpus(WORK, 2000, models))[:docs]
    tokenizer = Tokenizer.from_file(str(Path(models.classifier) / "tokenizer.json"))
    rows = [encoding.ids for encoding in tokenizer.encode_batch(texts)]
    lengths = np.array([len(row) for row in rows])
    tensors = []
    for group in token_budget_batches(lengths, 2048):
        ids = torch.zeros(len(group), int(lengths[group].max()), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(group):
            ids[i, : lengths[row]], mask[i, : lengths[row]] = torch.tensor(rows[row]), 1
        tensors.append((ids, mask))
    return tensors, int(lengths.sum())


def prepared(variant: str, folder: Path, tensors: list) -> tuple[str, Any, float, list]:
    """The variant's dtype, model, seconds to its first pass done (loading, kernel preparation, compilation, the
    pass) and its logits of the first passes (after which it is warm)."""
    import torch

    started = time.perf_counter()
    dtype, model = build(variant, folder)
    with torch.inference_mode():
        logits = [model(*tensors[0]).float()]
        first_pass = time.perf_counter() - started
        logits += [model(ids, mask).float() for ids, mask in tensors[1:5]]
    return "bf16" if dtype == torch.bfloat16 else "fp32", model, first_pass, logits


def rate(model: Any, tensors: list, real_tokens: int) -> float:
    """Real tokens per CPU-second of this thread over every pass."""
    import torch

    with torch.inference_mode():
        cpu = time.thread_time()
        for ids, mask in tensors:
            model(ids, mask)
        return real_tokens / (time.thread_time() - cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=600, help="documents of the 2,000-document corpus (default 600)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (bf16; about a minute)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over every variant, taking turns; the best counts (default 3)")
    parser.add_argument("--profile", metavar="VARIANT", help="instead: one variant's CPU time by operator")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    models = workload.build_models(WORK, "base")
    folder = Path(models.classifier)
    tensors, real_tokens = passes(models, args.docs)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        _, model = build(args.profile, folder)
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as profiler:
            for ids, mask in tensors:
                model(ids, mask)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        return 0
    # Where bf16 is emulated (~80x slower than fp32), its variants would take hours and tell nothing.
    dtypes = ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)
    flops = flops_per_token(str(folder), real_tokens / args.docs)
    ceilings = {dtype: max(product_gflops(dtype).values()) * 1e9 / flops / torch.get_num_threads()
                for dtype in dtypes}
    variants = (*VARIANTS, "bf16 compiled") if args.compile else VARIANTS
    variants = tuple(variant for variant in variants if variant.split()[0] in dtypes)
    models = {variant: prepared(variant, folder, tensors) for variant in variants}
    best = dict.fromkeys(variants, 0.0)
    for _ in range(args.rounds):  # rounds take turns, so a slow spell of the machine hits every variant
        for variant, (_, model, _, _) in models.items():
            best[variant] = max(best[variant], rate(model, tensors, real_tokens))
    exact = models["fp32"][3]
    results = []
    for variant, (dtype, _, first_pass, logits) in models.items():
        difference = max((got - want).abs().max().item() for got, want in zip(logits, exact, strict=True))
        results.append({"variant": variant, "dtype": dtype, "tokens_per_cpu_s": round(best[variant], 1),
                        "share_of_one_core_ceiling": round(best[variant] / ceilings[dtype], 3),
                        "first_pass_s": round(first_pass, 1), "max_logit_difference_from_fp32": difference})
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"cpu": cpu_model(), "cpu_class": cpu_class(), "docs": args.docs, "passes": len(tensors),
                      "real_tokens": real_tokens, "padded_tokens": sum(ids.numel() for ids, _ in tensors),
                      "one_core_ceiling_tokens_per_s": {d: round(c, 1) for d, c in ceilings.items()},
                      "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
