"""MkDocs hook: docs/monitoring.md's table of the pipeline's metrics, rendered when the site is built from the
declarations the pipeline records them by (``albert_batch.metrics.METRICS``), with each name as Prometheus
sees it, so the page cannot drift from the code.

The page holds a placeholder, an HTML comment that starts with ``<!-- metrics-reference``; the rendered
Markdown replaces it. `render` is also what tests/test_docs.py compares with the declarations.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from mkdocs.exceptions import PluginError

PAGE = "monitoring.md"
PLACEHOLDER = re.compile(r"<!--\s*metrics-reference\b.*?-->", re.DOTALL)
# The module that declares the metrics. Rename it here if it moves.
MODULE = "albert_batch.metrics"
# Tags Ray adds to every series a process records (beside the run's own).
RAY_TAGS = ("WorkerId", "NodeAddress", "SessionName", "Component", "Version")


def declarations() -> Any:
    try:
        module = importlib.import_module(MODULE)
    except ImportError as error:
        raise PluginError(f"metrics_reference: cannot import {MODULE} ({error}); is albert-batch installed?") from error
    if not getattr(module, "METRICS", None):
        raise PluginError(f"metrics_reference: {MODULE}.METRICS, which declares the pipeline's metrics, is gone; "
                          "name the module that does in docs/hooks/metrics_reference.py (MODULE)")
    return module


def cell(text: str) -> str:
    """Text for a Markdown table cell: code spans kept, everything else shown literally."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part if part.startswith("`") else re.sub(r"([\\*_\[\]|])", r"\\\1", part) for part in parts)


def series(metric: Any) -> list[str]:
    """The names of a metric's series as Prometheus sees them."""
    if metric.kind == "histogram":
        return [f"{metric.exported}_{suffix}" for suffix in ("bucket", "sum", "count")]
    return [metric.exported]


def render(module: Any = None) -> str:
    """The reference, as Markdown: one row per metric, in the order they are declared."""
    module = module or declarations()
    lines = ["| name in Prometheus | kind | tags | what it counts |", "| --- | --- | --- | --- |"]
    for metric in module.METRICS.values():
        names = "<br>".join(f"`{name}`" for name in series(metric))
        tags = ", ".join(f"`{tag}`" for tag in (*module.RUN_TAGS, *metric.tags))
        meaning = cell(" ".join(metric.help.split()))
        if metric.kind == "histogram" and metric.boundaries:
            meaning += " Buckets (`le`): " + ", ".join(f"{b:g}" for b in metric.boundaries) + "."
        lines.append(f"| {names} | {metric.kind} | {tags} | {meaning} |")
    lines += ["", "Every series also carries the tags Ray adds: " + ", ".join(f"`{t}`" for t in RAY_TAGS) + "."]
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if not PLACEHOLDER.search(markdown):
        raise PluginError(f"metrics_reference: docs/{PAGE} has no <!-- metrics-reference --> placeholder")
    reference = render()
    return PLACEHOLDER.sub(lambda _: reference, markdown, count=1)
