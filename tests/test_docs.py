"""The documentation: README.md is the front door (small, and one click from every page under docs/), every link
it holds leads to a file and a heading, the site builds with every link and anchor checked, and the CLI
reference lists every flag of every command, as the parser declares them (and the metrics reference every metric,
as albert_batch.metrics declares them)."""

from __future__ import annotations

import argparse
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from support import ROOT

README = ROOT / "README.md"
README_LIMIT = 15 * 1024  # bytes: the reference lives in docs/
DOCS = ROOT / "docs"
# Repository files that the site shows as pages of their own (docs/hooks/repo_pages.py).
PAGES_FROM_THE_REPOSITORY = ("BENCHMARKS.md", "infra/README.md")

LINK = re.compile(r"`+[^`]*`+|!?\[(?:`[^`]*`|[^\[\]`])*\]\((?P<target>[^()\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def load_hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_hooks_{name}", DOCS / "hooks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(markdown: str) -> str:
    """The Markdown outside fenced code blocks."""
    kept, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


def links(markdown: str) -> list[str]:
    """The targets of the inline links and images outside code."""
    return [m.group("target") for m in LINK.finditer(prose(markdown)) if m.group("target")]


def anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown file's headings, as GitHub and the site write them (the site's own hook)."""
    return load_hook("repo_pages").anchors(markdown)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_the_site_builds_with_every_link_and_anchor_checked(site: Path):
    assert (site / "index.html").is_file()
    assert (site / "quality-report.png").is_file(), "the quality page shows docs/quality-report.png"


def test_the_readme_is_a_front_door_not_the_reference():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size:,} bytes (at most {README_LIMIT:,}): move reference into docs/"


def test_every_relative_link_of_the_readme_leads_to_a_file_and_its_heading():
    markdown = README.read_text(encoding="utf-8")
    targets = [t for t in links(markdown) if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", t)]
    assert len(targets) > 10
    for target in targets:
        path, _, anchor = target.partition("#")
        file = (ROOT / path).resolve() if path else README
        assert file.exists(), f"README.md links {target}: {path} does not exist"
        assert file.is_relative_to(ROOT), f"README.md links {target}, outside the repository"
        if anchor:
            assert file.suffix == ".md", f"README.md links {target}: only Markdown files have headings to link"
            assert anchor in anchors(file.read_text(encoding="utf-8")), f"README.md links {target}: no such heading"


def test_every_page_is_one_click_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README.read_text(encoding="utf-8"))}
    pages = [*sorted(DOCS.glob("*.md")), *(ROOT / p for p in PAGES_FROM_THE_REPOSITORY)]
    missing = [p.relative_to(ROOT).as_posix() for p in pages if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_no_page_lists_flags_by_hand():
    """A usage synopsis (`albert-batch run --input URI [--tasks ...]`) drifts from the parser: the CLI reference
    is generated instead."""
    for path in [README, *sorted(DOCS.glob("*.md"))]:
        synopses = [line for line in path.read_text(encoding="utf-8").splitlines() if re.search(r"\[--[a-z]", line)]
        assert not synopses, f"{path.relative_to(ROOT)} lists flags by hand: {synopses[0]}"


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_the_cli_reference_lists_every_flag_of_every_command():
    hook = load_hook("cli_reference")
    parser = hook.build_parser()
    reference = hook.render(parser)
    sections = dict(re.findall(r"^## `albert-batch (\w+)`\n(.*?)(?=^## |\Z)", reference, re.MULTILINE | re.DOTALL))
    assert set(sections) == set(commands(parser)) == {"run", "finetune", "pretrain", "report"}
    for name, sub in commands(parser).items():
        rows = {row.split(" | ")[0].strip("| "): row for row in sections[name].splitlines() if row.startswith("| `-")}
        declared = flags(sub)
        assert len(rows) == len(declared), f"{name}: {sorted(rows)}"
        for action in declared:
            row = rows[", ".join(f"`{option}`" for option in action.option_strings)]
            if action.metavar:
                assert f"`{action.metavar}`" in row, (name, action.dest)
            assert all(f"`{choice}`" in row for choice in action.choices or ()), (name, action.dest)
            first_words = hook.escape(action.help or "").split(";")[0][:30]
            assert first_words in row, (name, action.dest)
            assert ("**Required.**" in row) == bool(action.required), (name, action.dest)


def test_the_built_cli_page_holds_the_reference(site: Path):
    page = html.unescape(re.sub(r"<[^>]+>", "", (site / "cli" / "index.html").read_text(encoding="utf-8")))
    hook = load_hook("cli_reference")
    parser = hook.build_parser()
    for name, sub in commands(parser).items():
        assert f"albert-batch {name}" in page
        for action in flags(sub):
            assert all(option in page for option in action.option_strings), (name, action.dest)
    assert "<!-- cli-reference" not in (site / "cli" / "index.html").read_text(encoding="utf-8"), "the placeholder is left"


def test_the_metrics_reference_lists_every_metric_as_prometheus_names_it():
    from albert_batch.metrics import METRICS, RUN_TAGS

    reference = load_hook("metrics_reference").render()
    rows = [row for row in reference.splitlines() if row.startswith("| `ray_")]
    assert len(rows) == len(METRICS)
    for metric, row in zip(METRICS.values(), rows, strict=True):
        assert f"`{metric.exported}" in row and f"| {metric.kind} |" in row, metric.name
        assert all(f"`{tag}`" in row for tag in (*RUN_TAGS, *metric.tags)), metric.name
        if metric.kind == "histogram":
            assert all(f"`{metric.exported}_{suffix}`" in row for suffix in ("bucket", "sum", "count")), metric.name


def test_the_built_monitoring_page_holds_the_metrics_reference(site: Path):
    from albert_batch.metrics import METRICS

    built = (site / "monitoring" / "index.html").read_text(encoding="utf-8")
    assert "<!-- metrics-reference" not in built, "the placeholder is left"
    page = html.unescape(re.sub(r"<[^>]+>", "", built))
    assert all(metric.exported in page for metric in METRICS.values())
