"""GPU benchmark, in one go, for a machine with one CUDA GPU (sized for an H200): ALBERT-base-shaped
classifier, documents of 128 tokens, bf16 (``--precision auto``).

    benchmarks/gpu.sh                                 # a fresh GPU machine: finds or builds a CUDA venv, runs this
    python -m benchmarks.gpu                          # the same, in a venv that already has CUDA torch
    python -m benchmarks.gpu --device cpu --size tiny --docs 3000 --ceiling-seconds 3   # smoke test on a CPU

It measures, each in a fresh child process:
  1. the model-stage ceiling: `Predictor.forward` alone on pre-tokenized sequences (no Ray, no I/O);
  2. ``albert-batch run`` end to end with fractional-GPU model actors (``--share``, default 0.25: four
     replicas on the GPU): sequences/s over the whole run and in steady state (first to last model batch).
GPU busy % comes from ``nvidia-smi`` sampled every 200 ms, averaged over each measurement's steady window.
Results go to ``results.json`` and ``results.md`` in ``--results``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from albert_batch.pipeline.sizing import BATCH_ROWS, CPU_TOKENS_PER_FORWARD, GPU_TOKENS_PER_FORWARD
from benchmarks import workload
from benchmarks.memory import GIB
from benchmarks.report import save, steady_rate
from benchmarks.run import ROOT, machine, run_child

SEQUENCE_TOKENS = 128
DISTINCT_TEXTS = 20_000
TARGET_SEQUENCES_PER_S = 15_000
NVIDIA_SMI = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "200"]


def parse_sample(line: str) -> tuple[float, float] | None:
    """(busy %, memory used MiB) from one line of ``nvidia-smi --query-gpu=utilization.gpu,memory.used``
    in CSV without units; None for a line that is not a sample (e.g. ``[N/A]``)."""
    fields = [f.strip() for f in line.split(",")]
    if len(fields) < 2:
        return None
    try:
        return float(fields[0]), float(fields[1])
    except ValueError:
        return None


def busy_between(samples: list[tuple[float, float, float]], start: float, end: float) -> float | None:
    """Mean GPU busy % of the (epoch seconds, busy %, MiB) samples taken within [start, end]."""
    inside = [busy for t, busy, _ in samples if start <= t <= end]
    return round(sum(inside) / len(inside), 1) if inside else None


class GpuSampler:
    """Runs ``nvidia-smi`` in the background and stamps each sample with this machine's clock on arrival
    (the pipeline stamps its batches with the same clock). Disabled, it samples nothing."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.samples: list[tuple[float, float, float]] = []
        self._process: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._read, name="gpu-sampler", daemon=True)

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self._process = subprocess.Popen(NVIDIA_SMI, stdout=subprocess.PIPE, text=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
            self._thread.join()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            sample = parse_sample(line)
            if sample:
                self.samples.append((time.time(), *sample))


def pipeline_summary(result: dict[str, Any], corpus: workload.Corpus, samples: list) -> dict[str, Any]:
    """Sequences/s overall and between the first and last finished model batch, with GPU busy % there."""
    batches, actors = result["batches"], result["stages"]["model_actors"]
    steady_tokens = steady_rate(batches, actors=actors)
    steady_rows = steady_rate(batches, of="rows", actors=actors)
    return {
        "docs": corpus.docs, "mean_tokens": round(corpus.mean_tokens, 1), "seconds": round(result["seconds"], 2),
        "sequences_per_s": round(corpus.docs / result["seconds"], 1),
        "steady_sequences_per_s": round(steady_rows, 1) if steady_rows else None,
        "steady_tokens_per_s": round(steady_tokens, 1) if steady_tokens else None,
        "first_batch_done_s": round(result["first_batch_done_s"], 2), "batches": len(batches),
        "steady_gpu_busy_pct": busy_between(samples, batches[actors - 1][0], batches[-1][0]) if steady_rows else None,
        "precision": result["precision"],
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}%"


def markdown(report: dict[str, Any]) -> str:
    ceiling, pipeline = report["ceiling"], report["pipeline"]
    where = (f"{report['gpu_name']}, model actors with {report['share']} GPU each" if report.get("gpu_name")
             else "CPU only (smoke test)")
    steady = pipeline["steady_sequences_per_s"]
    return "\n".join([
        f"# GPU benchmark ({report['started_at']})", "",
        f"{where}; {report['machine']['cpus']} CPUs. ALBERT-{report['size']} shape, classification, documents of "
        f"~{SEQUENCE_TOKENS} tokens (mean {pipeline['mean_tokens']}). Target: ≥{TARGET_SEQUENCES_PER_S:,} sequences/s.", "",
        "| measurement | sequences/s | steady sequences/s | GPU busy (steady) | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| model stage alone ({ceiling['dtype']}) | {ceiling['sequences_per_s']:,.0f} | – | "
        f"{_pct(ceiling['gpu_busy_pct'])} | {ceiling['seconds']:.1f} |",
        f"| albert-batch run, {pipeline['docs']:,} docs | {pipeline['sequences_per_s']:,.0f} | "
        f"{'–' if steady is None else f'{steady:,.0f}'} | {_pct(pipeline['steady_gpu_busy_pct'])} | "
        f"{pipeline['seconds']:.1f} |", "",
        f"Peak memory of the run's process tree: {report['pipeline_peak_pss_gib']:.2f} GiB PSS; peak GPU memory "
        f"used: {report['peak_gpu_mib'] or '–'} MiB.", ""])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: smoke-test this script")
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--docs", type=int, help="documents for the run (default: ~30 s of work at the ceiling)")
    parser.add_argument("--share", type=float, default=0.25, help="GPU per model actor (default 0.25)")
    parser.add_argument("--ceiling-seconds", type=float, default=20.0)
    parser.add_argument("--tokens-per-forward", type=int, help="for the ceiling (default: what the pipeline uses)")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"))
    parser.add_argument("--results", help="default: WORK/gpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_gpu = args.device == "cuda"
    if use_gpu and not shutil.which("nvidia-smi"):
        print("benchmarks.gpu: nvidia-smi not found; is this a GPU machine? (--device cpu for a smoke test)")
        return 2
    # The batch and forward-pass sizes the pipeline's model actors get (see albert_batch.pipeline.sizing.size_stages).
    tokens_per_forward = GPU_TOKENS_PER_FORWARD if use_gpu else CPU_TOKENS_PER_FORWARD
    work = Path(args.work).resolve()
    results = Path(args.results).resolve() if args.results else work / "gpu"
    results.mkdir(parents=True, exist_ok=True)
    log_file = results / "contenders.log"
    log_file.write_text("")
    started = time.monotonic()
    report: dict[str, Any] = {"started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "machine": machine(), "device": args.device, "size": args.size, "share": args.share if use_gpu else 0}
    if use_gpu:
        report["gpu_name"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                            capture_output=True, text=True, check=False).stdout.strip()
    models = workload.build_models(work, args.size)
    distinct = workload.build_corpus(work, min(DISTINCT_TEXTS, args.docs or DISTINCT_TEXTS), models,
                                     fixed_tokens=SEQUENCE_TOKENS)
    print(f"models and texts ready after {time.monotonic() - started:.0f}s", flush=True)

    with GpuSampler(enabled=use_gpu) as gpu:
        ceiling, _ = run_child("model_ceiling", {"model": models.classifier, "texts_file": distinct.texts_file,
                                                 "use_gpu": use_gpu, "seconds": args.ceiling_seconds,
                                                 "batch_rows": BATCH_ROWS,
                                                 "tokens_per_forward": args.tokens_per_forward or tokens_per_forward},
                                log_file)
        report["ceiling"] = {"sequences_per_s": round(ceiling["sequences"] / ceiling["seconds"], 1),
                             "tokens_per_s": round(ceiling["tokens"] / ceiling["seconds"], 1),
                             "seconds": round(ceiling["seconds"], 2), "dtype": ceiling["dtype"],
                             "gpu_busy_pct": busy_between(gpu.samples, *ceiling["window"])}
        print(f"model stage alone: {report['ceiling']['sequences_per_s']:,.0f} sequences/s ({ceiling['dtype']}), "
              f"GPU busy {_pct(report['ceiling']['gpu_busy_pct'])}", flush=True)

        docs = args.docs or int(min(2_000_000, max(50_000, 30 * report["ceiling"]["sequences_per_s"])))
        corpus = workload.build_streaming_corpus(work, docs, distinct)
        output = work / "outputs" / f"gpu-{docs}"
        shutil.rmtree(output, ignore_errors=True)
        resources = {"num_gpus_per_actor": args.share} if use_gpu else {}
        print(f"albert-batch run on {docs:,} documents ...", flush=True)
        result, usage = run_child("albert_batch", {
            "task": "classify", "model": json.dumps({"classify": models.classifier}), "corpus": corpus.folder,
            "output": str(output), "precision": "auto", "tokens_file": corpus.tokens_file, "resources": resources,
        }, log_file)
        report["pipeline"] = pipeline_summary(result, corpus, gpu.samples)
        report["pipeline_peak_pss_gib"] = round(usage.pss / GIB, 3)
        report["peak_gpu_mib"] = max((mib for _, _, mib in gpu.samples), default=None)
    report["total_s"] = round(time.monotonic() - started, 1)
    save(results, report, markdown(report), log_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
