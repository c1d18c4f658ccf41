"""Ratios against the issue's targets and the Markdown report; plain functions over the results JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.machine import DTYPES, compute_dtype, share

# The targets for albert-batch end to end on >= 2,000 documents (issue 6).
TARGET_DOCS = 2000
TARGETS: dict[str, dict[str, float]] = {
    "classify": {"vs_hf_default": 2.5, "vs_hf_batch32": 10.0, "steady_vs_hand_loop": 0.9},
    "ner": {"vs_hf_default": 2.0, "steady_vs_hand_loop": 0.9},
}
AGREEMENT_TARGETS = {"label_agreement": 0.995, "entity_span_agreement": 0.99}
RATIO_BASELINES = {"vs_hf_default": "hf_default", "vs_hf_batch32": "hf_batch32", "vs_ray_docs": "ray_docs"}


def steady_rate(batches: list[list[float]], *, of: str = "tokens", actors: int = 1) -> float | None:
    """Tokens (or rows) per second of the model stage once every actor has finished its first batch,
    from the [finish time, rows, tokens] of each batch in time order: the work finished after the
    ``actors``-th batch over the time from it to the last. Start-up, each actor's first batch and the
    final write are excluded. None without a batch after those. The tokenizer runs far ahead of the
    model, so this is the model stage's own pace."""
    if len(batches) <= actors:
        return None
    column = {"rows": 1, "tokens": 2}[of]
    elapsed = batches[-1][0] - batches[actors - 1][0]
    return sum(b[column] for b in batches[actors:]) / elapsed if elapsed > 0 else None


def ratios(measurements: list[dict[str, Any]], ceilings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """albert-batch (each of its precisions: ``albert_batch``, ``albert_batch[int8]``, ...) against each
    baseline, per corpus size and task, its steady state as a share of the machine's ceiling, and whether
    each target is met."""
    by_key = {(m["docs"], m["task"], m["contender"]): m for m in measurements}
    rows = []
    for docs, task, label in dict.fromkeys((m["docs"], m["task"], m["contender"]) for m in measurements
                                           if m["contender"].startswith("albert_batch")):
        ours = by_key[(docs, task, label)]
        row: dict[str, Any] = {"docs": docs, "task": task, "contender": label,
                               "albert_batch_tokens_per_s": ours["tokens_per_s"]}
        for name, baseline in RATIO_BASELINES.items():
            other = by_key.get((docs, task, baseline))
            row[name] = round(ours["tokens_per_s"] / other["tokens_per_s"], 2) if other else None
        actors = ours["details"].get("stages", {}).get("model_actors", 1)
        steady = steady_rate(ours["details"].get("batches", []), actors=actors)
        loops = [by_key[k]["tokens_per_s"] for k in ((docs, task, "hand_loop"), (docs, task, "hand_loop_tuned"))
                 if k in by_key]
        hand = max(loops, default=None)  # the best hand loop, plain or with the pipeline's model-level tuning
        row["steady_tokens_per_s"] = round(steady, 1) if steady else None
        row["steady_share_of_ceiling"] = share(steady, compute_dtype(ours["details"]), ceilings)
        row["hand_loop_tokens_per_s"] = hand
        row["steady_vs_hand_loop"] = round(steady / hand, 3) if steady and hand else None
        row["targets"] = targets_met(row) if docs >= TARGET_DOCS else {}
        rows.append(row)
    return rows


def targets_met(row: dict[str, Any]) -> dict[str, bool | None]:
    return {name: None if row.get(name) is None else row[name] >= goal for name, goal in TARGETS[row["task"]].items()}


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "–"
    return format(value, spec) if isinstance(value, float) else str(value)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _verdict(row: dict[str, Any], name: str) -> str:
    met = row["targets"].get(name)
    return "" if met is None else (" ✓" if met else " ✗")


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    features = ", ".join(name for name, present in m.get("features", {}).items() if present) or "none of them"
    lines = [f"# Benchmark results ({report['started_at']})", "",
             f"Machine: {m['cpu']} ({m.get('cpu_class', '?')} class; of AMX, AVX-512, AVX-512-BF16, AVX2 it has: "
             f"{features}), {m['cpus']} CPUs, {m['memory_gib']} GiB. Load average at start "
             f"{_loads(report['load_average_at_start'])}, at end {_loads(report['load_average_at_end'])}. "
             f"Models: {report['models']['size']}.", ""]
    if report.get("ceilings"):
        lines += _ceilings(report["ceilings"])
    if "measurements" in report:
        lines += _throughput(report) + _ratio_table(report) + _agreement(report)
    if "streaming" in report:
        lines += _streaming(report["streaming"])
    return "\n".join(lines) + "\n"


def _ceilings(c: dict[str, Any]) -> list[str]:
    shape = "×".join(map(str, c["matmul_shape"]))
    return ["## The machine's ceiling", "",
            f"Matrix products ({shape} as (m×k)·(k×n)): one core's rate, timed by its CPU time, times "
            f"{c['threads']} cores, with the faster of torch's kernels; and the tokens/s they allow the model at "
            f"{c['mflops_per_token']:.0f} MFLOP per token:", "",
            "| dtype | GFLOP/s | per kernel | ceiling tokens/s |", "| --- | ---: | --- | ---: |",
            *[f"| {d} | {c['gflops'][d]:.1f} | {_kernels(c.get('gflops_per_kernel', {}).get(d, {}))} | "
              f"{c['tokens_per_s'][d]:,.0f} |" for d in DTYPES], "", *_measured(c),
            "Shares below are of the ceiling of the dtype a contender multiplies in (bf16 where it runs bf16, fp32 "
            "otherwise, int8 included: an int8 run may pass 100%).", ""]


def _measured(c: dict[str, Any]) -> list[str]:
    if "measured_tokens_per_s" not in c:
        return []
    return ["The mean of the ceiling measured at the start and at the end of the runs (tokens/s: "
            + "; ".join(f"{d} {' and '.join(f'{v:,.0f}' for v in c['measured_tokens_per_s'][d])}" for d in DTYPES)
            + ").", ""]


def _kernels(rates: dict[str, float]) -> str:
    return ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items()) or "–"


def _loads(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _throughput(report: dict[str, Any]) -> list[str]:
    lines = ["## Throughput", "",
             "| docs | task | contender | seconds | real tokens/s | share of ceiling | docs/s | peak PSS GiB "
             "| Σ RSS GiB |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in report["measurements"]:
        lines.append(f"| {m['docs']} | {m['task']} | {m['contender']} | {m['seconds']:.1f} | {m['tokens_per_s']:.0f} | "
                     f"{_percent(m.get('share_of_ceiling'))} | {m['docs_per_s']:.1f} | {m['peak_pss_gib']:.2f} | "
                     f"{m['peak_rss_sum_gib']:.2f} |")
    return [*lines, ""]


def _ratio_table(report: dict[str, Any]) -> list[str]:
    lines = ["## albert-batch against the alternatives", "",
             f"Targets on ≥{TARGET_DOCS:,} documents: classification ≥2.5× (a) default and ≥10× (a) batch_size=32; "
             "NER ≥2× (a) default; steady state ≥90% of the hand loop.", "",
             "| docs | task | (c) | (c)/(a) default | (c)/(a) bs32 | (c)/(b) | (c) steady tokens/s "
             "| steady share of ceiling | best hand loop tokens/s | steady / hand loop |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["ratios"]:
        lines.append(f"| {r['docs']} | {r['task']} | {r['contender']} | "
                     f"{_fmt(r['vs_hf_default'])}{_verdict(r, 'vs_hf_default')} | "
                     f"{_fmt(r['vs_hf_batch32'])}{_verdict(r, 'vs_hf_batch32')} | {_fmt(r['vs_ray_docs'])} | "
                     f"{_fmt(r['steady_tokens_per_s'], '.0f')} | {_percent(r.get('steady_share_of_ceiling'))} | "
                     f"{_fmt(r['hand_loop_tokens_per_s'], '.0f')} | "
                     f"{_fmt(r['steady_vs_hand_loop'])}{_verdict(r, 'steady_vs_hand_loop')} |")
    return [*lines, ""]


def _agreement(report: dict[str, Any]) -> list[str]:
    rows = report.get("agreement", [])
    if not rows:
        return []
    lines = ["## Lower precisions against fp32 (the pipeline's predictors, same corpus)", "",
             "| docs | task | precision | agreement | target | time against fp32 | detail |",
             "| ---: | --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        metric = "label_agreement" if r["task"] == "classify" else "entity_span_agreement"
        detail = (f"median fp32 score margin {r['median_fp32_margin']:.3f}" if r["task"] == "classify" else
                  f"{r['fp32_entities']} fp32 entities; identical documents {r['identical_documents']:.1%}")
        ok = "✓" if r[metric] >= AGREEMENT_TARGETS[metric] else "✗"
        lines.append(f"| {r['docs']} | {r['task']} | {r['precision']} | {r[metric]:.2%} {ok} | "
                     f"{AGREEMENT_TARGETS[metric]:.1%} | {r['speedup']:.2f}× faster | {detail} |")
    return [*lines, ""]


def _streaming(s: dict[str, Any]) -> list[str]:
    return ["## Bounded memory (streaming)", "",
            "Materialised: the input, the tokenizer's features and the results as Arrow, were they held at once.", "",
            "| rows | tasks | seconds | rows/s | materialised GiB (input + features + results) "
            "| peak PSS GiB (1st half / 2nd half) | Σ RSS GiB | machine's memory in use, above the start, GiB |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {s['rows']:,} | {','.join(s['tasks'])} | {s['seconds']:.1f} | {s['rows_per_s']:.0f} | "
            f"{s['materialised_gib']:.2f} ({s['input_in_memory_gib']:.2f} + {s['features_in_memory_gib']:.2f} + "
            f"{s['results_in_memory_gib']:.2f}) | {s['peak_pss_gib']:.2f} ({s['peak_pss_first_half_gib']:.2f} / "
            f"{s['peak_pss_second_half_gib']:.2f}) | {s['peak_rss_sum_gib']:.2f} | "
            f"{_fmt(s.get('peak_machine_used_gib'))} |", ""]


def save(results_dir: Path, report: dict[str, Any], table: str, log_file: Path) -> None:
    """Write ``results.json`` and ``results.md`` into ``results_dir`` and print the table."""
    (results_dir / "results.json").write_text(json.dumps(report, indent=2))
    (results_dir / "results.md").write_text(table)
    print()
    print(table)
    print(f"results: {results_dir / 'results.json'}, {results_dir / 'results.md'} (logs: {log_file})")
