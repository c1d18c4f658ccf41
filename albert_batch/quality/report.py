"""``_report.html``: one self-contained page per published partition (its charts inline SVG, no scripts, no
network), readable at a glance at the top and detailed below."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from albert_batch.quality import charts
from albert_batch.quality.charts import Series
from albert_batch.quality.charts import escape as _e
from albert_batch.quality.figures import DRIFT_CHECKS, QualityFigures

CURRENT, PREVIOUS = charts.PALETTE[0], "#b9c4d4"

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:70rem;
color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.15rem;border-bottom:1px solid #dde;padding-bottom:.3rem;
margin-top:2.2rem} .sub{color:#5a6475;margin-top:0}
.tiles{display:flex;flex-wrap:wrap;gap:.8rem;margin:1.2rem 0} .tile{background:#f3f5f9;border-radius:8px;
padding:.7rem 1rem;min-width:9rem} .tile b{display:block;font-size:1.4rem} .tile span{color:#5a6475;font-size:.85rem}
.ok{background:#e5f4ea} .warn{background:#fdecea} .none{background:#f3f5f9}
table{border-collapse:collapse;margin:.6rem 0} td,th{padding:.25rem .8rem;border-bottom:1px solid #eef;
text-align:left;font-size:.92rem} th{color:#5a6475;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
.flag{font-weight:700;color:#b3261e} .quiet{color:#2e7d32} .plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots svg{max-width:100%;height:auto;border:1px solid #eef;border-radius:6px} code{font-size:.85rem}
"""


def render(figures: QualityFigures, previous: QualityFigures | None = None) -> str:
    """The report of ``figures``; with ``previous`` (the partition drift was measured against, or any other
    to compare with), its shares are drawn beside the current ones."""
    parts = [_top(figures), _drift(figures), _run(figures)]
    if figures.classification:
        parts.append(_classification(figures.classification, previous.classification if previous else None))
    if figures.entities:
        parts.append(_entities(figures.entities, previous.entities if previous else None))
    parts.append(_lengths_and_throughput(figures))
    title = f"albert-batch · {figures.partition}"
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}"
            f"<p class=sub>Figures: <code>_quality.json</code> beside this page. Drift statistics: see "
            f"<code>albert_batch.quality.figures</code>.</p></body></html>")


# -- sections --------------------------------------------------------------------------------------------
def _top(f: QualityFigures) -> str:
    rows, run = f.rows, f.run
    if f.drift is None:
        drift_tile = _tile("no earlier partition", "drift not measured", "none")
    elif f.shifted:
        drift_tile = _tile("shifted", f"{', '.join(f.shifted)} vs {f.drift['against']}", "warn")
    else:
        drift_tile = _tile("no drift", f"vs {f.drift['against']}", "ok")
    tiles = [
        _tile(f"{rows['input']:,}", "rows in"),
        _tile(f"{rows['processed']:,}", "processed"),
        _tile(f"{rows['rejected']:,}", f"rejected ({f.reject_rate:.2%})", "warn" if rows["rejected"] else ""),
        _tile(f"{run.get('rows_per_second', 0):,.1f}", f"rows/s over {run.get('seconds', 0):,.0f} s"),
    ]
    if f.classification:
        top_label, share = max(f.classification["label_shares"].items(), key=lambda kv: kv[1])
        tiles.append(_tile(f"{share:.0%}", f"labelled {top_label}"))
        tiles.append(_tile(f"{f.classification['mean_score']:.3f}", "mean score"))
    if f.entities:
        tiles.append(_tile(f"{f.entities['mean_per_document']:.2f}", "entities per document"))
    tiles.append(drift_tile)
    return (f"<h1>Partition {_e(f.partition)}</h1><p class=sub>{_e(run.get('output', ''))} · run "
            f"<code>{_e(run.get('run_id', ''))}</code> · finished {_e(run.get('finished_at', ''))}</p>"
            f"<div class=tiles>{''.join(tiles)}</div>")


def _drift(f: QualityFigures) -> str:
    if f.drift is None:
        return ("<h2>Drift</h2><p>No earlier partition of this output has quality figures, so there is nothing "
                "to compare with yet.</p>")
    rows = []
    for check in DRIFT_CHECKS:
        found = f.drift["checks"].get(check.name)
        if found is None:
            continue
        flag = "<span class=flag>shifted</span>" if found["shifted"] else "<span class=quiet>steady</span>"
        rows.append([check.name, check.about, check.statistic, f"{found['value']:.4f}", f"{found['threshold']}", flag])
    return (f"<h2>Drift against {_e(f.drift['against'])}</h2>"
            f"<p>Compared with run <code>{_e(f.drift.get('against_run_id') or '')}</code>; a check is flagged when "
            f"its value exceeds its threshold.</p>"
            + _table(["check", "of", "statistic", "value", "threshold", ""], rows, numeric={3, 4}, raw={5}))


def _run(f: QualityFigures) -> str:
    run, rows = f.run, f.rows
    facts = [
        ["run id", run.get("run_id", "")], ["output", run.get("output", "")], ["precision", run.get("precision", "")],
        ["started", run.get("started_at", "")], ["finished", run.get("finished_at", "")],
        ["duration", f"{run.get('seconds', 0):,.1f} s"], ["throughput", f"{run.get('rows_per_second', 0):,.1f} rows/s"],
    ]
    dedupe = run.get("dedupe") or {}
    if dedupe.get("enabled"):
        facts.append(["repeated texts", f"{dedupe['duplicate_share']:.1%} of the accepted rows "
                                        f"({dedupe['duplicate_rows']:,}) repeated a text already run: not run again"])
    units = run.get("units") or {}
    if units.get("reused"):
        facts.append(["resumed", f"{units['reused']} of {units['total']} units reused from "
                                 f"{', '.join(units.get('reused_from_runs', []))}"])
    models = [[task, m.get("location", ""), (m.get("weights_sha256") or "")[:16]]
              for task, m in sorted(run.get("models", {}).items())]
    rejects = [[reason, f"{count:,}"] for reason, count in rows["rejected_by_reason"].items()] or [["(none)", "0"]]
    return ("<h2>Run</h2>" + _table(["", ""], facts) + "<h3>Models</h3>"
            + _table(["task", "location", "weights sha256"], models)
            + f"<h3>Rows</h3><p>{rows['input']:,} in, {rows['processed']:,} processed, {rows['rejected']:,} "
              "rejected, by reason:</p>" + _table(["reason", "rows"], rejects, numeric={1}) + _cost(run.get("cost")))


def _cost(cost: dict[str, Any] | None) -> str:
    """What the run held: each stage's workers (those it had: a CPU run has no tokenizer actors), their seconds
    and CPU- and GPU-seconds, and per million rows."""
    if not cost:
        return ""
    workers = [[name.replace("_", " "), f"{cost[name]['count']:,}", f"{cost[name]['seconds']:,.1f}",
                f"{cost[name]['cpu_seconds']:,.1f}", f"{cost[name]['gpu_seconds']:,.1f}"]
               for name in ("model_actors", "tokenizer_actors", "read_tasks", "write_tasks")
               if cost.get(name, {}).get("count")]
    workers.append(["all", "", "", f"{cost['cpu_seconds']:,.1f}", f"{cost['gpu_seconds']:,.1f}"])
    per_million = ", ".join(f"{cost[key]:,.4f} {kind}-hours" for key, kind in (
        ("cpu_hours_per_million_rows", "CPU"), ("gpu_hours_per_million_rows", "GPU")) if cost.get(key))
    model = cost.get("model_actors", {})
    busy = model.get("busy_share")
    alive = f"; {model['min']} to {model['max']} model actors alive at once" if model.get("max") else ""
    return ("<h3>Cost</h3>" + _table(["workers", "count", "seconds", "CPU-seconds", "GPU-seconds"], workers,
                                     numeric={1, 2, 3, 4})
            + f"<p>{_e(per_million or 'nothing processed')} per million rows processed by this run"
            + (f"; model actors computing {busy:.0%} of their time" if busy is not None else "") + alive + ".</p>")


def _classification(c: dict[str, Any], before: dict[str, Any] | None) -> str:
    labels = sorted(set(c["label_shares"]) | set((before or {}).get("label_shares", {})))
    shares = _bars("Label distribution", labels, c["label_shares"], (before or {}).get("label_shares"), "share of rows")
    bins = c["score_bins"]
    per_label = [Series(label, [n / (sum(counts) or 1) for n in counts], charts.PALETTE[number % len(charts.PALETTE)])
                 for number, (label, counts) in enumerate(c["score_histograms"].items())]
    scores = charts.lines("Score distribution per label", [(i + 0.5) / bins for i in range(bins)], per_label,
                          xlabel="score", ylabel="share of the label's rows", xlim=(0.0, 1.0), steps=True,
                          mark_x=c["low_confidence_below"], legend=True)
    rows = [[label, f"{c['labels'].get(label, 0):,}", f"{c['label_shares'].get(label, 0):.2%}"]
            for label in sorted(c["labels"])]
    return ("<h2>Classification</h2>"
            f"<p>Mean score {c['mean_score']:.3f}; {c['low_confidence_share']:.2%} of rows scored below "
            f"{c['low_confidence_below']} (low confidence); {c['truncated_share']:.2%} were truncated to the "
            "model's length.</p>"
            f"<div class=plots>{shares}{scores}</div>" + _table(["label", "rows", "share"], rows, numeric={1, 2}))


def _entities(e: dict[str, Any], before: dict[str, Any] | None) -> str:
    types = sorted(set(e["type_shares"]) | set((before or {}).get("type_shares", {})))
    shares = _bars("Entities per type", types, e["type_shares"], (before or {}).get("type_shares"), "share of entities")
    per_doc = e["per_document"]
    counts = [str(i) for i in range(len(per_doc) - 1)] + [f"{len(per_doc) - 1}+"]
    per_document = charts.bars("Entities per document", counts, [Series("documents", per_doc, CURRENT)],
                               xlabel="entities", ylabel="documents")
    tops = "".join(
        f"<div><h3>{_e(label)}</h3>" + _table(["text", "count"], [[text, f"{n:,}"] for text, n in texts],
                                                numeric={1}) + "</div>"
        for label, texts in e["top_texts"].items())
    return ("<h2>Named entities</h2>"
            f"<p>{e['entities']:,} entities, {e['mean_per_document']:.2f} per document; "
            f"{e['documents_without_entities_share']:.2%} of documents have none.</p>"
            f"<div class=plots>{shares}{per_document}</div>"
            f"<h3>Most frequent entity texts per type</h3><div class=plots>{tops}</div>")


def _lengths_and_throughput(f: QualityFigures) -> str:
    edges, counts = f.tokens["edges"], f.tokens["counts"]
    names = [f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)] + [f"{edges[-1]}+"]
    lengths = charts.bars("Text length", names, [Series("documents", counts, CURRENT)], xlabel="tokens",
                          ylabel="documents", rotate=True)
    t = f.throughput
    minutes, rates, since = [], [], ""
    if t["rows"]:
        minutes = [(i * t["bucket_s"]) / 60 for i in range(len(t["rows"]))]
        rates = [n / t["bucket_s"] for n in t["rows"]]
        since = f"minutes after {dt.datetime.fromisoformat(t['start']):%Y-%m-%d %H:%M:%S} UTC"
    throughput = charts.lines("Throughput (rows written, by processing time)", minutes,
                              [Series("rows/s", rates, CURRENT)], xlabel=since, ylabel="rows/s", points=True)
    return (f"<h2>Text length and throughput</h2><p>Mean length {f.tokens['mean']:.1f} tokens.</p>"
            f"<div class=plots>{lengths}{throughput}</div>")


# -- helpers ---------------------------------------------------------------------------------------------
def _bars(title: str, names: Sequence[str], current: dict[str, float], previous: dict[str, float] | None,
          ylabel: str) -> str:
    series = [Series("this partition", [current.get(n, 0.0) for n in names], CURRENT)]
    if previous is not None:
        series.insert(0, Series("compared with", [previous.get(n, 0.0) for n in names], PREVIOUS))
    return charts.bars(title, names, series, ylabel=ylabel, rotate=len(names) > 4, legend=previous is not None)


def _tile(value: str, label: str, kind: str = "") -> str:
    return f'<div class="tile {kind}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: set[int] = frozenset(),
           raw: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{cell if i in raw else _e(cell)}</td>"
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

