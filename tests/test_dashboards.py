"""The Grafana dashboard and the Prometheus alert rules in infra/ query only metrics that exist: those the pipeline
declares (albert_batch/metrics.py, as Prometheus names them) and those Ray exports, with the tags they carry. Also
the PromQL reader these checks rest on (tests/dashboards.py), and the rules' shape: every alert with a `for`, a
severity, a summary and a description, the same on KubeRay as in the local stack, and a promtool test case."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from albert_batch.contract import RejectReason
from albert_batch.metrics import HISTOGRAM, METRICS, RUN_TAGS
from dashboards import dashboard_queries, queried_metrics, rule_groups, rules_queries

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "albert-batch.json"
ALERTS = ROOT / "infra" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "infra" / "prometheus" / "alerts.test.yml"
PROMETHEUS_CONFIG = ROOT / "infra" / "prometheus" / "prometheus.yml"
MONITORING = ROOT / "infra" / "k8s" / "monitoring.yaml"

# Ray's core metrics: recorded by its C++ core, so declared in no Python file Ray ships. Each is queried by
# Ray's own Grafana dashboards (checked below), which is where their names and tags are documented.
RAY_CORE_METRICS = {"ray_tasks", "ray_actors", "ray_resources", "ray_object_store_memory"}
# Tags Ray adds to every series a process records through ray.util.metrics; Prometheus adds instance and job.
RAY_TAGS = {"WorkerId", "NodeAddress", "SessionName", "Component", "Version", "JobId"}
PROMETHEUS_LABELS = {"instance", "job"}
SELECTOR = re.compile(r"(ray_albert_batch_\w+)(\{[^}]*\})?")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"([^\"]*)\"")


def ray_file(*parts: str) -> Path:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def pipeline_series() -> dict[str, str]:
    """Each series name the pipeline's metrics appear under in Prometheus -> the metric's declared name."""
    names = {}
    for metric in METRICS.values():
        suffixes = ("_bucket", "_sum", "_count") if metric.kind == HISTOGRAM else ("",)
        names.update({metric.exported + suffix: metric.name for suffix in suffixes})
    return names


def ray_node_metrics() -> set[str]:
    """The gauges Ray's reporter agent (the metrics agent on every node) declares, as Prometheus names them."""
    text = ray_file("dashboard", "modules", "reporter", "reporter_agent.py").read_text(encoding="utf-8")
    return {f"ray_{name}" for name in re.findall(r"\bGauge\(\s*\"(\w+)\"", text)}


def known_metrics() -> set[str]:
    return set(pipeline_series()) | ray_node_metrics() | RAY_CORE_METRICS


def all_queries() -> list[tuple[str, str]]:
    return ([("dashboard", q) for q in dashboard_queries(DASHBOARD)] + [("alerts.yml", q) for q in rules_queries(ALERTS)])


# ------------------------------------------------------------------------------------------ the reader


@pytest.mark.parametrize(("expr", "names"), [
    ("rate(x[5m])", {"x"}),
    ("x", {"x"}),
    ('sum by (WorkerId) (rate(busy_total{run_id=~"$run_id", stage="model"}[$__rate_interval]))', {"busy_total"}),
    ("sum(rate(x_total[1m])) by (le, task)", {"x_total"}),
    ("histogram_quantile(0.95, sum by (le) (rate(x_bucket[1m])))", {"x_bucket"}),
    ("label_values(x, run_id)", {"x"}),
    ('label_values(x{run_id=~"$run_id"}, partition)', {"x"}),
    ("label_values(run_id)", set()),
    ("a / on (run_id) group_left (partition) b > 0.01 and c offset 10m unless ignoring (kind) d or vector(0)",
     {"a", "b", "c", "d"}),
    ("sum without (WorkerId) (a) * 1024 * 1e3 + b @ start() - Inf", {"a", "b"}),
    ('max_over_time(x{le="0.5", reason!~"a|b"}[1h30m:1m]) # a comment naming y', {"x"}),
    ('count_values("not_a_metric", y) + {__name__="z", job="ray"}', {"y", "z"}),
    ("abs(x) > bool 0", {"x"}),
    ("${datasource}", set()),
])
def test_the_reader_finds_the_metrics_an_expression_reads(expr, names):
    assert queried_metrics(expr) == names


def test_the_reader_reads_what_the_dashboard_and_the_rules_query():
    dashboard = dashboard_queries(DASHBOARD)
    panels = [t for p in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"] for t in p.get("targets", [])]
    variables = [v for v in json.loads(DASHBOARD.read_text(encoding="utf-8"))["templating"]["list"] if v["type"] == "query"]
    assert len(dashboard) == len(panels) + 2 * len(variables)  # each variable's query and its definition
    assert "label_values(ray_albert_batch_rows_read_total, run_id)" in dashboard
    rules = rules_queries(ALERTS)
    assert len(rules) == sum(len(group["rules"]) for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"])


# ------------------------------------------------------------------------------- names that exist


def test_ray_declares_the_metrics_the_checks_take_as_ray_s():
    node = ray_node_metrics()
    assert {"ray_node_cpu_utilization", "ray_node_mem_used", "ray_node_gpus_utilization", "ray_node_gram_used",
            "ray_cluster_active_nodes"} <= node
    ray_dashboards = "".join(p.read_text(encoding="utf-8")
                             for p in ray_file("dashboard", "modules", "metrics", "dashboards").glob("*.py"))
    for name in RAY_CORE_METRICS:
        assert re.search(rf"\b{name}\{{", ray_dashboards), f"Ray's own dashboards do not query {name}"
    assert not {n for n in node | RAY_CORE_METRICS if n.startswith("ray_albert_batch_")}


@pytest.mark.parametrize("source", ["dashboard", "alerts.yml"])
def test_every_metric_queried_is_declared_by_albert_batch_or_ray(source):
    queried = {name for where, expr in all_queries() if where == source for name in queried_metrics(expr)}
    assert queried, source
    assert queried <= known_metrics(), f"{source} queries {sorted(queried - known_metrics())}, which nothing exports"


def test_the_dashboard_shows_every_metric_the_pipeline_records():
    queried = {name for expr in dashboard_queries(DASHBOARD) for name in queried_metrics(expr)}
    shown = {pipeline_series()[name] for name in queried if name in pipeline_series()}
    assert shown == set(METRICS)


def test_the_dashboard_shows_ray_s_node_resources():
    queried = {name for expr in dashboard_queries(DASHBOARD) for name in queried_metrics(expr)}
    assert {"ray_node_cpu_utilization", "ray_node_mem_used", "ray_node_gpus_utilization", "ray_node_gram_used",
            "ray_object_store_memory"} <= queried


def test_selectors_match_only_tags_the_metric_carries_and_reasons_that_exist():
    series = pipeline_series()
    for where, expr in all_queries():
        for name, matchers in SELECTOR.findall(expr):
            metric = METRICS[series[name]]
            allowed = {*RUN_TAGS, *metric.tags, *RAY_TAGS, *PROMETHEUS_LABELS} | ({"le"} if name.endswith("_bucket") else set())
            for label, value in MATCHER.findall(matchers):
                assert label in allowed, f"{where}: {name} has no tag {label}: {expr}"
                if label == "reason" and not value.startswith("$"):
                    assert set(value.split("|")) <= {r.value for r in RejectReason}, f"{where}: {expr}"


def test_the_pipeline_s_series_are_grouped_by_tags_they_carry():
    carried = {*RUN_TAGS, *RAY_TAGS, *PROMETHEUS_LABELS, "le"} | {tag for m in METRICS.values() for tag in m.tags}
    for where, expr in all_queries():
        names = queried_metrics(expr)
        if names and names <= set(pipeline_series()):
            for labels in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
                grouped = {label.strip() for label in labels.split(",") if label.strip()}
                assert grouped <= carried, f"{where}: no metric carries {sorted(grouped - carried)}: {expr}"


def test_dashboard_panels_follow_the_run_and_partition_variables():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in RUN_TAGS:
        assert variables[name]["definition"].startswith("label_values(ray_albert_batch_")
        assert variables[name]["definition"].endswith(f", {name})")
    for target in (t for p in dashboard["panels"] for t in p.get("targets", [])):
        assert target["datasource"]["uid"] == "${datasource}"
        for _, matchers in SELECTOR.findall(target["expr"]):
            assert 'run_id=~"$run_id"' in matchers and 'partition=~"$partition"' in matchers, target["expr"]
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"]


# ---------------------------------------------------------------------------------------------- rules


def test_every_alert_has_a_for_a_severity_a_summary_and_a_description():
    rules = [rule for group in rule_groups(ALERTS) for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= {"AlbertBatchNoProgress", "AlbertBatchProcessingErrors",
                                                 "AlbertBatchModelActorsIdle", "AlbertBatchStorageRetries"}
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_local_prometheus_loads_the_rules_and_scrapes_the_ray_nodes_metrics_port():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert [(PROMETHEUS_CONFIG.parent / f).resolve() for f in config["rule_files"]] == [ALERTS]
    compose = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text(encoding="utf-8"))["services"]
    ports = {name: next(a.split("=")[1] for a in compose[name]["command"] if str(a).startswith("--metrics-export-port="))
             for name in ("ray-head", "ray-worker")}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ray-head"]["static_configs"][0]["targets"] == [f"ray-head:{ports['ray-head']}"]
    assert jobs["ray-workers"]["dns_sd_configs"][0]["names"] == ["ray-worker"]
    assert str(jobs["ray-workers"]["dns_sd_configs"][0]["port"]) == ports["ray-worker"]
    assert "./prometheus:/etc/prometheus:ro" in compose["prometheus"]["volumes"]


def test_kuberay_gets_the_same_rules_as_the_local_stack():
    assert rule_groups(MONITORING) == rule_groups(ALERTS)


def test_kuberay_scrapes_the_metrics_port_of_head_and_workers():
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(MONITORING.read_text(encoding="utf-8"))}
    head, workers = docs["ServiceMonitor"]["spec"], docs["PodMonitor"]["spec"]
    assert head["selector"]["matchLabels"]["ray.io/node-type"] == "head"
    assert workers["selector"]["matchLabels"]["ray.io/node-type"] == "worker"
    assert [e["port"] for e in head["endpoints"]] == [e["port"] for e in workers["podMetricsEndpoints"]] == ["metrics"]
    cluster = yaml.safe_load((ROOT / "infra" / "k8s" / "raycluster.yaml").read_text(encoding="utf-8"))["spec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        [container] = group["template"]["spec"]["containers"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        assert group["rayStartParams"]["metrics-export-port"] == str(port)


def test_every_alert_has_a_promtool_test_case():
    alerts = {rule["alert"] for group in rule_groups(ALERTS) for rule in group["rules"]}
    cases = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    assert cases["rule_files"] == [ALERTS.name]
    tested = {case["alertname"] for test in cases["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert alerts <= tested, f"no promtool case shows {sorted(alerts - tested)} firing"
