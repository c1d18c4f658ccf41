"""What the Grafana dashboard and the Prometheus rules in infra/ query: the metric names in their PromQL, found
without a Prometheus. Used by tests/test_dashboards.py, which checks each name against the metrics the pipeline
declares (albert_batch/metrics.py) and those Ray exports, and by checks against a live scrape."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# One PromQL token: a comment, a string, a Grafana variable ($name, ${name...}, [[name]]), a number or duration,
# an identifier, or any other single character.
TOKEN = re.compile(r"""
    (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<space>\s+)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)
# Words that are PromQL's own where a metric name could stand: binary operators, modifiers, the values Inf and NaN.
KEYWORDS = frozenset({"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"})
# Followed by a parenthesised list of label names, not of expressions.
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
# Grafana's template-variable queries whose arguments are not all expressions: `label_values(label)`,
# `label_values(metric{...}, label)`, `label_names()`, `metrics(regex)`, `query_result(expr)`.
GRAFANA_LABEL_QUERIES = frozenset({"label_values", "label_names", "metrics"})
CLOSING = {"(": ")", "{": "}", "[": "]"}


def tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) for each token of ``text``, without spaces and comments."""
    return [(m.lastgroup or "", m.group()) for m in TOKEN.finditer(text) if m.lastgroup not in ("space", "comment")]


def _matching(found: list[tuple[str, str]], start: int) -> int:
    """The index of the bracket that closes the one at ``start``."""
    opening = found[start][1]
    depth = 0
    for i in range(start, len(found)):
        kind, text = found[i]
        if kind == "other" and text == opening:
            depth += 1
        elif kind == "other" and text == CLOSING[opening]:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opening!r} in PromQL")


def _arguments(found: list[tuple[str, str]], opening: int, closing: int) -> list[list[tuple[str, str]]]:
    """The top-level, comma-separated arguments between the brackets at ``opening`` and ``closing``."""
    args: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for kind, text in found[opening + 1:closing]:
        if kind == "other" and text in CLOSING:
            depth += 1
        elif kind == "other" and text in CLOSING.values():
            depth -= 1
        if kind == "other" and text == "," and depth == 0:
            args.append([])
        else:
            args[-1].append((kind, text))
    return [a for a in args if a]


def _names(found: list[tuple[str, str]]) -> set[str]:
    names: set[str] = set()
    i = 0
    while i < len(found):
        kind, text = found[i]
        following = found[i + 1] if i + 1 < len(found) else ("", "")
        if kind == "other" and text == "{":  # label matchers; a metric named by __name__="..." counts
            end = _matching(found, i)
            inside = found[i + 1:end]
            for j in range(len(inside) - 2):
                if inside[j] == ("name", "__name__") and inside[j + 1][1] == "=" and inside[j + 2][0] == "string":
                    names.add(inside[j + 2][1][1:-1])
            i = end + 1
        elif kind == "other" and text == "[":  # a range or subquery: durations and Grafana's $__rate_interval
            i = _matching(found, i) + 1
        elif kind == "name" and following == ("other", "("):
            end = _matching(found, i + 1)
            if text in GROUPING:  # by (le), on (run_id): label names
                i = end + 1
                continue
            if text in GRAFANA_LABEL_QUERIES:  # only label_values(metric{...}, label) names a metric, first
                args = _arguments(found, i + 1, end)
                if text == "label_values" and len(args) == 2:
                    names |= _names(args[0])
                i = end + 1
                continue
            i += 1  # a function or aggregation: its arguments are read as they come
        elif kind == "name" and following in (("name", "by"), ("name", "without")):
            i += 1  # an aggregation with its grouping first: sum by (le) (...)
        elif kind == "name" and text.lower() not in KEYWORDS and text not in GROUPING:
            names.add(text)
            i += 1
        else:
            i += 1
    return names


def queried_metrics(text: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana variable query such as ``label_values(x, run_id)``)
    reads: identifiers outside label matchers, ranges, label lists and strings that are neither functions nor
    PromQL's own words."""
    return _names(tokens(text))


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def dashboard_queries(path: Path) -> list[str]:
    """Every query of a Grafana dashboard: each panel's targets' ``expr`` (rows' panels included), and each
    query variable's ``query`` and ``definition``."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    found = [target["expr"] for node in _walk(dashboard.get("panels", []))
             for target in node.get("targets", []) if target.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        found += [q for q in (query, variable.get("definition")) if isinstance(q, str) and q]
    return found


def rule_groups(path: Path) -> list[dict[str, Any]]:
    """The rule groups of a Prometheus rules file, or of the PrometheusRule resources in a Kubernetes manifest."""
    groups = []
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "PrometheusRule":
            groups += doc["spec"]["groups"]
        elif "groups" in doc:
            groups += doc["groups"]
    return groups


def rules_queries(path: Path) -> list[str]:
    """Every ``expr`` of a rules file's alerting and recording rules."""
    return [rule["expr"] for group in rule_groups(path) for rule in group["rules"]]
