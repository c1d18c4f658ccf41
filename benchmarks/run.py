"""Batch-inference benchmark: albert-batch against the alternatives, on one machine, in one run.

    python -m benchmarks.run                           # the full run (BENCHMARKS.md): base-shaped models
    python -m benchmarks.run --quick                   # smoke test: tiny models, 384 documents, about a minute
    python -m benchmarks.run --streaming-rows 1000000  # bounded memory: a million rows through the pipeline

Every contender runs in a fresh child process, one at a time, while this process samples the memory of
the child's whole process tree (see `benchmarks.memory`). Results go to ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from albert_batch.config import Precision
from benchmarks import machine as machine_ceilings
from benchmarks import workload
from benchmarks.memory import GIB, TreeSampler, TreeUsage
from benchmarks.report import markdown, ratios, save

ROOT = Path(__file__).resolve().parent.parent
# albert_batch[PRECISION] is albert-batch with that --precision (albert_batch alone: --precision's).
CONTENDERS = ("hf_default", "hf_batch32", "ray_docs", "albert_batch", "albert_batch[int8]", "hand_loop",
              "hand_loop_tuned", "agreement")
# On the steady-state corpus only albert-batch and the hand loops run (the others would take most of an hour).
STEADY_CONTENDERS = ("albert_batch", "hand_loop", "hand_loop_tuned")
RAY_DOCS_BATCH_ROWS = 64


@dataclass(frozen=True)
class Measurement:
    """One contender on one corpus and task."""

    contender: str
    task: str
    docs: int
    real_tokens: int
    seconds: float
    peak_pss_gib: float
    peak_rss_sum_gib: float
    processes: int
    cpu_s: float
    details: dict[str, Any]
    share_of_ceiling: float | None  # of the machine's ceiling for the dtype it multiplies in (`benchmarks.machine`)

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / self.seconds

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 1),
                "docs_per_s": round(self.docs / self.seconds, 2)}


def run_child(name: str, params: dict[str, Any], log_file: Path) -> tuple[dict[str, Any], TreeUsage]:
    """Run one contender in a fresh interpreter; return its result and the memory and CPU use of its tree."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        result_file = Path(out.name)
    command = [sys.executable, "-m", "benchmarks.contenders", name, json.dumps(params), str(result_file)]
    with log_file.open("a") as log:
        log.write(f"\n=== {name} {json.dumps(params)}\n")
        log.flush()
        child = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        with TreeSampler(child.pid) as sampler:
            code = child.wait()
    if code != 0:
        raise RuntimeError(f"contender {name} failed with exit code {code}; see {log_file}")
    result = json.loads(result_file.read_text())
    result_file.unlink()
    return result, sampler.usage


def measure(label: str, task: str, corpus: workload.Corpus, runs: list[tuple[dict[str, Any], TreeUsage]],
            log_file: Path, ceilings: dict[str, Any] | None) -> Measurement:
    """The fastest of a contender's runs (on a shared machine the fastest is the one least disturbed)."""
    result, usage = min(runs, key=lambda r: r[0]["seconds"])
    details = {k: v for k, v in result.items() if k not in ("seconds", "ray_stats")}
    if len(runs) > 1:
        details["all_seconds"] = [round(r[0]["seconds"], 2) for r in runs]
    if "ray_stats" in result:
        (log_file.parent / f"ray-stats-{label}-{task}-{corpus.docs}.txt").write_text(result["ray_stats"])
    share = machine_ceilings.share(corpus.real_tokens / result["seconds"], machine_ceilings.compute_dtype(result),
                                   ceilings)
    return Measurement(contender=label, task=task, docs=corpus.docs, real_tokens=corpus.real_tokens,
                       seconds=result["seconds"], peak_pss_gib=round(usage.pss / GIB, 3),
                       peak_rss_sum_gib=round(usage.rss / GIB, 3), processes=usage.processes,
                       cpu_s=round(usage.cpu_s, 1), details=details, share_of_ceiling=share)


def run_and_print(name: str, label: str, task: str, corpus: workload.Corpus, params: dict[str, Any],
                  log_file: Path, ceilings: dict[str, Any] | None) -> tuple[dict[str, Any], TreeUsage]:
    print(f"  {label:<20} {task:<8} {corpus.docs} docs ...", end=" ", flush=True)
    result, usage = run_child(name, params, log_file)
    tokens_per_s = corpus.real_tokens / result["seconds"]
    dtype = machine_ceilings.compute_dtype(result)
    share = machine_ceilings.share(tokens_per_s, dtype, ceilings)
    print(f"{result['seconds']:7.1f}s  {tokens_per_s:8.0f} tokens/s"
          f"{f' = {share:.0%} of the {dtype} ceiling' if share is not None else ''}  "
          f"peak PSS {usage.pss / GIB:.2f} GiB  CPU {usage.cpu_s:.0f}s", flush=True)
    return result, usage


def contender_params(contender: str, task: str, models: workload.Models, corpus: workload.Corpus, work: Path,
                     args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The child's name and keyword arguments for one contender (``albert_batch[int8]``: albert-batch with
    ``--precision int8``)."""
    model = models.classifier if task == "classify" else models.ner
    contender, _, precision = contender.partition("[")
    output = work / "outputs" / f"{contender}{precision and '-' + precision.rstrip(']')}-{task}-{corpus.docs}"
    if contender in ("hf_default", "hf_batch32"):
        return "hf_pipeline", {"task": task, "model": model, "texts_file": corpus.texts_file,
                               "batch_size": 32 if contender == "hf_batch32" else None}
    if contender == "ray_docs":
        return "ray_docs", {"task": task, "model": model, "corpus": corpus.folder, "output": str(output),
                            "batch_size": RAY_DOCS_BATCH_ROWS, "actors": max(1, (os.cpu_count() or 2) - 1)}
    if contender == "albert_batch":
        return "albert_batch", {"task": task, "model": json.dumps({task: model}), "corpus": corpus.folder,
                                "output": str(output), "precision": precision.rstrip("]") or args.precision,
                                "tokens_file": corpus.tokens_file}
    if contender in ("hand_loop", "hand_loop_tuned"):
        return "hand_loop", {"task": task, "model": model, "texts_file": corpus.texts_file, "dtype": auto_dtype(),
                             "tokens_per_forward": 2048, "tuned": contender == "hand_loop_tuned"}
    return "agreement", {"task": task, "model": model, "texts_file": corpus.texts_file,
                         "precisions": agreement_precisions()}


def auto_dtype() -> str:
    """The dtype ``--precision auto`` multiplies in on this CPU: the hand loops run in it."""
    from albert_batch.inference.device import cpu_has_native_bf16

    return "bfloat16" if cpu_has_native_bf16() else "float32"


def agreement_precisions() -> list[str]:
    """The precisions held against fp32: int8, and bf16 where the CPU has bf16 instructions (elsewhere
    torch emulates it, far too slowly for a corpus: BENCHMARKS.md)."""
    from albert_batch.inference.device import cpu_has_native_bf16

    return ["bf16", "int8"] if cpu_has_native_bf16() else ["int8"]


def machine() -> dict[str, Any]:
    from albert_batch.inference.device import cpu_features, cpu_has_amx
    from albert_batch.pipeline.cluster import package_versions

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": machine_ceilings.cpu_model(), "cpu_class": machine_ceilings.cpu_class(),
            "features": cpu_features(), "cpus": os.cpu_count(), "amx_bf16": cpu_has_amx(),
            "memory_gib": round(memory / GIB, 1), "platform": platform.platform(), "versions": package_versions()}


def benchmark(args: argparse.Namespace, work: Path, log_file: Path) -> dict[str, Any]:
    models = custom_models(args) or workload.build_models(work, args.size)
    ceilings = measure_ceilings(models, args)
    done: list[tuple[str, str, workload.Corpus, list[tuple[dict[str, Any], TreeUsage]]]] = []
    corpora, agreements = [], []
    runs = [(docs, args.contenders) for docs in args.docs]
    steady = [c for c in args.contenders if c in STEADY_CONTENDERS]
    if args.steady_docs and steady:  # a corpus only when a contender runs on it
        runs.append((args.steady_docs, steady))
    for docs, contenders in runs:
        corpus = workload.build_corpus(work, docs, models)
        corpora.append(corpus.__dict__)
        print(f"corpus: {docs} docs, {corpus.real_tokens} real tokens (mean {corpus.mean_tokens:.1f}, "
              f"max {corpus.max_tokens})", flush=True)
        for task in args.tasks:
            timed = {}
            for contender in contenders:
                name, params = contender_params(contender, task, models, corpus, work, args)
                if contender == "agreement":
                    agreements += measure_agreement(task, corpus, params, log_file)
                else:
                    timed[contender] = (name, params)
            # Repeats take turns (a b a b, not a a b b), so a slow spell of the machine hits every contender.
            runs: dict[str, list[tuple[dict[str, Any], TreeUsage]]] = {contender: [] for contender in timed}
            for _ in range(args.repeat):
                for contender, (name, params) in timed.items():
                    if "output" in params:  # a fresh output: a run would reuse what the one before it published
                        shutil.rmtree(params["output"], ignore_errors=True)
                    runs[contender].append(run_and_print(name, contender, task, corpus, params, log_file, ceilings))
            done += [(contender, task, corpus, contender_runs) for contender, contender_runs in runs.items()]
    if done:  # the ceiling again, after the runs: their shares are of the mean of the two
        ceilings = machine_ceilings.averaged([ceilings, measure_ceilings(models, args, when="at the end")])
    results = [measure(contender, task, corpus, contender_runs, log_file, ceilings).to_json()
               for contender, task, corpus, contender_runs in done]
    return {"models": models.__dict__, "ceilings": ceilings, "corpora": corpora, "measurements": results,
            "ratios": ratios(results, ceilings), "agreement": agreements}


def measure_ceilings(models: workload.Models, args: argparse.Namespace, *, when: str = "") -> dict[str, Any]:
    """The machine's fp32 and bf16 matrix throughput, and the tokens/s they allow the benchmark's model."""
    print(f"ceilings{' ' + when if when else ''}: matrix products in fp32 and bf16 ...", end=" ", flush=True)
    ceilings = machine_ceilings.ceilings(models.classifier, workload.MEAN_TOKENS, seconds=1.0 if args.quick else 3.0)
    features = ", ".join(name for name, present in ceilings["features"].items() if present) or "none of them"
    print(f"{ceilings['cpu']} ({ceilings['cpu_class']}; {features}): "
          + ", ".join(f"{dtype} {ceilings['gflops'][dtype]:.1f} GFLOP/s = {ceilings['tokens_per_s'][dtype]:.0f} tokens/s"
                      for dtype in machine_ceilings.DTYPES)
          + f" at {ceilings['mflops_per_token']:.0f} MFLOP/token", flush=True)
    return ceilings


def measure_agreement(task: str, corpus: workload.Corpus, params: dict[str, Any], log_file: Path) -> list[dict[str, Any]]:
    print(f"  {' and '.join(params['precisions']) + ' vs fp32':<20} {task:<8} {corpus.docs} docs ...", end=" ", flush=True)
    result, _ = run_child("agreement", params, log_file)
    rows = [{"docs": corpus.docs, "task": task, "precision": precision, **figures} for precision, figures in result.items()]
    print("; ".join(f"{r['precision']}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()
                                                       if "agreement" in k or k == "speedup") for r in rows), flush=True)
    return rows


def streaming(args: argparse.Namespace, work: Path, log_file: Path) -> dict[str, Any]:
    """A corpus of ``--streaming-rows`` rows through the pipeline: peak memory against its size in memory."""
    models = custom_models(args) or workload.build_models(work, args.size)
    base = workload.build_corpus(work, 2000, models)
    corpus = workload.build_streaming_corpus(work, args.streaming_rows, base)
    print(f"streaming corpus: {corpus.docs} rows, {corpus.real_tokens} real tokens", flush=True)
    output = work / "outputs" / f"streaming-{corpus.docs}"
    shutil.rmtree(output, ignore_errors=True)
    params = {"task": ",".join(args.tasks), "model": json.dumps({"classify": models.classifier, "ner": models.ner}),
              "corpus": corpus.folder, "output": str(output), "precision": args.precision,
              "tokens_file": corpus.tokens_file}
    print(f"  albert_batch   {params['task']} ...", end=" ", flush=True)
    result, usage = run_child("albert_batch", params, log_file)
    # Everything the run handles, were it held at once: input rows, token features, results.
    sizes = {"input": workload.arrow_bytes(corpus.folder),
             "features": corpus.real_tokens * sum(workload.FEATURE_BYTES_PER_TOKEN[t] for t in args.tasks),
             "results": sum(workload.arrow_bytes(output / table) for table in ("classifications", "entities", "rejects")
                            if (output / table).exists())}
    summary = {
        "rows": corpus.docs, "tasks": args.tasks, "real_tokens": corpus.real_tokens, "seconds": result["seconds"],
        "rows_per_s": round(corpus.docs / result["seconds"], 1),
        "tokens_per_s": round(corpus.real_tokens / result["seconds"], 1),
        **{f"{name}_in_memory_gib": round(size / GIB, 3) for name, size in sizes.items()},
        "materialised_gib": round(sum(sizes.values()) / GIB, 3),
        "peak_pss_gib": round(usage.pss / GIB, 3), "peak_rss_sum_gib": round(usage.rss / GIB, 3),
        "peak_machine_used_gib": round(usage.machine_used / GIB, 3),
        "peak_pss_first_half_gib": round(usage.peak_between(0.0, 0.5) / GIB, 3),
        "peak_pss_second_half_gib": round(usage.peak_between(0.5, 1.0) / GIB, 3),
        "max_processes": usage.processes,
    }
    print(f"{result['seconds']:.1f}s, peak PSS {summary['peak_pss_gib']:.2f} GiB "
          f"(all of it materialised: {summary['materialised_gib']:.2f} GiB)", flush=True)
    return {"models": models.__dict__, "streaming": summary}


def custom_models(args: argparse.Namespace) -> workload.Models | None:
    """Trained model folders given on the command line (they must share one tokenizer), if any."""
    if not (args.classifier_model and args.ner_model):
        return None
    return workload.Models(classifier=str(Path(args.classifier_model).resolve()),
                           ner=str(Path(args.ner_model).resolve()), size="custom")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models, 384 documents, classification: a smoke test")
    parser.add_argument("--size", choices=["tiny", "base"], help="model shape (default base; tiny with --quick)")
    parser.add_argument("--docs", type=int, nargs="+", help="corpus sizes (default 384 2000; 384 with --quick)")
    parser.add_argument("--tasks", help="comma-separated: classify,ner (default both; classify with --quick)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {CONTENDERS}; albert_batch[fp32] etc. for other precisions")
    parser.add_argument("--steady-docs", type=int, metavar="N",
                        help="a corpus of N documents for the steady state, run by albert-batch and the hand loops "
                             "only (default 12000: three model batches; 0 to skip; skipped with --quick)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per contender, taking turns; the fastest counts (default 1)")
    parser.add_argument("--precision", default="auto", help="albert-batch's --precision (default auto)")
    parser.add_argument("--streaming-rows", type=int, metavar="N",
                        help="instead: run N rows through albert-batch and report peak memory (tiny models)")
    parser.add_argument("--classifier-model", metavar="DIR", help="use this trained model instead of random weights")
    parser.add_argument("--ner-model", metavar="DIR", help="use this trained model instead of random weights")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"), help="models, corpora and outputs")
    parser.add_argument("--results", metavar="DIR", help="where results.json and results.md go (default: --work)")
    args = parser.parse_args(argv)
    args.size = args.size or ("tiny" if args.quick or args.streaming_rows else "base")
    args.docs = args.docs or ([384] if args.quick else [384, 2000])
    if args.steady_docs is None:
        args.steady_docs = 0 if args.quick else 12_000
    args.tasks = [t.strip() for t in (args.tasks or ("classify" if args.quick else "classify,ner")).split(",") if t.strip()]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    precisions = {f"albert_batch[{p.value}]" for p in Precision}
    unknown = (sorted(set(args.contenders) - set(CONTENDERS) - precisions)
               + sorted(set(args.tasks) - {"classify", "ner"}))
    if unknown:
        parser.error(f"unknown contender or task: {', '.join(unknown)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if bool(args.classifier_model) != bool(args.ner_model):
        parser.error("give both --classifier-model and --ner-model, or neither")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    results_dir = Path(args.results).resolve() if args.results else work
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    log_file = results_dir / "contenders.log"
    log_file.write_text("")
    started = time.monotonic()
    report: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(),
        "load_average_at_start": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "results")},
    }
    report |= streaming(args, work, log_file) if args.streaming_rows else benchmark(args, work, log_file)
    report["load_average_at_end"] = os.getloadavg()
    report["total_s"] = round(time.monotonic() - started, 1)
    save(results_dir, report, markdown(report), log_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
