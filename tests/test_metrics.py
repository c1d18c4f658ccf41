"""A run seen from outside while it runs: its metrics as Prometheus scrapes them from a Ray head's metrics
export port, the dashboard and alert rules that read them, and what the run cost."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from albert_batch.dev.local_ray import LocalRayHead, free_port, start_head
from albert_batch.metrics import METRICS
from albert_batch.pipeline.ledger import HEARTBEAT_S
from dashboards import dashboard_queries, queried_metrics, rules_queries
from support import TRICKY_TEXTS, Samples, manifest, sample_sum, scrape, write_corpus

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "infra/grafana/dashboards/albert-batch.json"
RULES = ROOT / "infra/prometheus/alerts.yml"
REPORTER = Path(__import__("ray").__file__).parent / "dashboard/modules/reporter/reporter_agent.py"
RUN_ID = "watched"
# Exported once what they count happens (a Ray counter starts at its first increment): no storage operation
# of this run is retried.
ON_EVENTS_ONLY = {METRICS["albert_batch_storage_retries"].exported}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the run's series of ``name`` whose labels include ``labels``."""
    return sample_sum(samples, name, run_id=RUN_ID, **labels)


def by(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for found, value in samples.get(name, []):
        if found.get("run_id") == RUN_ID:
            out[found[label]] += value
    return dict(out)


def expected(summary: dict[str, Any]) -> dict[str, Any]:
    """What the scrape must show once the run is over, from its summary."""
    figures: dict[str, Any] = {
        "ray_albert_batch_rows_read_total": summary["input_rows"],
        "ray_albert_batch_rows_staged_total": summary["input_rows"],
        "ray_albert_batch_text_tokens_total": summary["tokens"]["text"],
        "rejects": summary["rejects_by_reason"],
    }
    for task, forward in summary["forward"].items():
        figures[f"processed {task}"] = summary["accepted_rows"]
        figures[f"real {task}"] = forward["real_tokens"]
        figures[f"padding {task}"] = forward["padding_tokens"]
        figures[f"passes {task}"] = forward["passes"]
    return figures


def seen(samples: Samples, summary: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {name: total(samples, name) for name in (
        "ray_albert_batch_rows_read_total", "ray_albert_batch_rows_staged_total", "ray_albert_batch_text_tokens_total")}
    figures["rejects"] = by(samples, "ray_albert_batch_rows_rejected_total", "reason")
    for task in summary["forward"]:
        figures[f"processed {task}"] = total(samples, "ray_albert_batch_rows_processed_total", task=task)
        figures[f"real {task}"] = total(samples, "ray_albert_batch_forward_tokens_total", task=task, kind="real")
        figures[f"padding {task}"] = total(samples, "ray_albert_batch_forward_tokens_total", task=task, kind="padding")
        figures[f"passes {task}"] = total(samples, "ray_albert_batch_forward_seconds_count", task=task)
    return figures


def run_actors(head: LocalRayHead) -> list[dict[str, Any]]:
    """The stage actors Ray started for the run (Ray Data's map workers), from Ray's state API."""
    actors = head.get("/api/v0/actors?detail=1&limit=1000")["data"]["result"]["result"]
    return [a for a in actors if a["class_name"].startswith("MapWorker(")]


def test_a_run_s_metrics_scraped_while_it_runs_and_after_equal_its_summary_and_the_dashboard_reads_only_exported_names(
        tiny_models, tmp_path):
    """A run on a head that exports metrics (every second here): scraped while the run runs, its counters
    are there and growing; once it is over they equal the summary (rows read, staged, processed per task,
    rejects by reason, text tokens, forward tokens and passes per task, units). Every metric the dashboard
    and the alert rules query is in the same scrape (GPU metrics, which a CPU node does not export, are
    declared by Ray's reporter agent). The cost figures match the actors Ray started for the run."""
    port = free_port()
    head = start_head(token=secrets.token_hex(16), log=tmp_path / "head.log",
                      extra_args=["--num-cpus=2", f"--metrics-export-port={port}"],
                      env={"RAY_metrics_report_interval_ms": "1000"})
    try:
        # Distinct texts (none is run once for many rows), enough that the model stage is still at work for
        # seconds after the read, whose counter is exported within a second of it: the scrape below sees it.
        texts = [*(f"{text} (row {i})" for i, text in enumerate(TRICKY_TEXTS * 250)), None, "   ", None]
        (tmp_path / "input").mkdir()
        write_corpus(tmp_path / "input/part.parquet", list(range(len(texts))), texts)
        summary_file = tmp_path / "summary.json"
        run = subprocess.Popen(
            [sys.executable, "-m", "albert_batch.cli", "run", "--input", str(tmp_path / "input"),
             "--output", str(tmp_path / "output"), "--classifier-model", tiny_models["classifier"],
             "--ner-model", tiny_models["ner"], "--partition", "dt=2026-12-01", "--run-id", RUN_ID, "-q",
             "--summary-json", str(summary_file)],
            env={**head.environment(), "RAY_ADDRESS": head.gcs_address}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        during: list[dict[str, Any]] = []
        scraped: set[str] = set()
        while run.poll() is None:
            samples = scrape(port)
            scraped |= set(samples)
            if run.poll() is None:
                during.append({"read": total(samples, "ray_albert_batch_rows_read_total"),
                               "units": by(samples, "ray_albert_batch_units", "state"),
                               "actors": by(samples, "ray_albert_batch_actors", "stage"),
                               "waiting": by(samples, "ray_albert_batch_rows_waiting", "stage")})
            time.sleep(0.5)
        output = run.stdout.read()
        assert run.returncode == 0, output
        summary = json.loads(summary_file.read_text())
        # The driver's gauges go with it; while it ran, they said where it stood.
        assert max(seen["read"] for seen in during) > 0, "the run's rows read were exported while it ran"
        assert {"planned": summary["units"]["total"], "reused": 0} in [
            {k: v for k, v in seen["units"].items() if k != "staged"} for seen in during]
        assert all(0 <= seen["units"].get("staged", 0) <= summary["units"]["total"] for seen in during)
        assert {"model": summary["stages"]["model_actors"], "tokenize": summary["stages"]["tokenizer_actors"]} in [
            seen["actors"] for seen in during], "the actors gauge counted the stages' actors once they lived"
        assert any(set(seen["waiting"]) == {"model", "write"} for seen in during)

        want = expected(summary)
        deadline = time.monotonic() + 60
        while (got := seen(samples := scrape(port), summary)) != want and time.monotonic() < deadline:
            time.sleep(1)
        assert got == want
        scraped |= set(samples)
        assert summary["rejects_by_reason"] == {"null_text": 2, "blank_text": 1}
        busy = by(samples, "ray_albert_batch_model_busy_seconds_total", "WorkerId")
        assert busy and all(seconds > 0 for seconds in busy.values()), "each model actor spent time in forward passes"

        declared = REPORTER.read_text()
        ours = {m.exported for m in METRICS.values()}
        queried = {source: set().union(*(queried_metrics(q) for q in queries)) for source, queries in (
            ("dashboard", dashboard_queries(DASHBOARD)), ("rules", rules_queries(RULES)))}
        gpu_only = {n for n in set().union(*queried.values()) if ("gpu" in n or "gram" in n)
                    and f'"{n.removeprefix("ray_")}"' in declared}  # a node without GPUs does not export these
        # What the endpoint exported at some point of the run (the driver's gauges while it ran), or exports
        # once each of Ray's reporters has reported (every few seconds on a busy machine).
        deadline = time.monotonic() + 60
        while set().union(*queried.values()) - scraped - gpu_only - ON_EVENTS_ONLY and time.monotonic() < deadline:
            time.sleep(1)
            scraped |= set(scrape(port))
        for source, names in queried.items():
            assert names - scraped - gpu_only - ON_EVENTS_ONLY == set(), f"the {source} queries metrics nobody exports"
            if source == "dashboard":
                shown = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in names}
                assert ours <= shown, f"metrics the dashboard does not show: {sorted(ours - shown)}"

        # Its start-up, step by step: each milestone after the one before, all within the run.
        timings = summary["timings"]
        milestones = [timings[name] for name in ("model_actor_s", "models_loaded_s", "first_forward_s", "first_batch_s",
                                                  "total_s")]
        laps = timings["checks_s"] + timings["ray_s"] + timings["reuse_s"]
        assert 0 < laps <= timings["model_actor_s"] and milestones == sorted(milestones), timings

        cost, actors = summary["cost"], [a for a in run_actors(head) if "ModelStage" in a["class_name"]]
        assert cost["model_actors"]["count"] == len(actors) >= 1, actors
        cpus = {a["required_resources"]["CPU"] for a in actors}
        assert len(cpus) == 1 and cost["model_actors"]["cpu_seconds"] == pytest.approx(
            cost["model_actors"]["seconds"] * cpus.pop(), abs=2e-3)
        # Each actor lived within the run's processing, and for at least its first heartbeats.
        assert 0 < cost["model_actors"]["seconds"] <= len(actors) * summary["timings"]["process_s"] + HEARTBEAT_S
        # On CPUs the model actors tokenize: no tokenizer actor was started, none is counted.
        assert not [a for a in run_actors(head) if "TokenizeStage" in a["class_name"]]
        assert cost["tokenizer_actors"] == {"count": 0, "seconds": 0, "cpu_seconds": 0, "gpu_seconds": 0}
        assert "tokenizer_actor_s" not in timings
        assert cost["read_tasks"]["count"] == summary["units"]["total"] and cost["read_tasks"]["cpu_seconds"] > 0
        assert cost["write_tasks"]["count"] >= 1 and cost["gpu_seconds"] == 0
        assert cost["rows"] == summary["input_rows"]
        assert cost["cpu_hours_per_million_rows"] == round(cost["cpu_seconds"] / 3600 / (cost["rows"] / 1e6), 4)
        assert 0 < cost["model_actors"]["busy_share"] <= 1
        assert manifest(tmp_path / "output", "classifications", "dt=2026-12-01")["cost"] == cost
        report = (tmp_path / "output/classifications/dt=2026-12-01/_report.html").read_text()
        assert "<h3>Cost</h3>" in report and f"{cost['cpu_seconds']:,.1f}" in report
        assert "<td>model actors</td>" in report and "tokenizer actors" not in report, "only the workers it had"
        assert "CPU-seconds" in output
    finally:
        head.stop()
