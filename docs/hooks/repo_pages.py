"""MkDocs hook: the repository's Markdown that lives outside docs/ shown in the site, and every link that
leaves docs/ checked.

The pages under docs/ link repository files as GitHub resolves them (`../BENCHMARKS.md#memory`,
`../pipelines/configs/example.yaml`), so they read right where they are stored. In the site:

- the files of `PAGES` (BENCHMARKS.md, infra/README.md) are pages of their own, and links to them lead there;
- a link to any other file of the repository leads to it under `repo_url`, where mkdocs.yml sets one, and is
  plain text otherwise (the site has no copy of the code);
- a link to a file that does not exist, or to a heading that a Markdown file lacks, is a warning: an error
  under `mkdocs build --strict`. Links inside docs/ are MkDocs' own to check (mkdocs.yml's `validation`).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files

log = get_plugin_logger(__name__)

# Repository file -> the site page it becomes.
PAGES = {"BENCHMARKS.md": "benchmarks.md", "infra/README.md": "infra.md"}

# A code span (left as it is) or an inline link or image, whose text may hold code spans and line breaks.
LINK = re.compile(r"(?P<code>`+)(?:.|\n)*?(?P=code)|(?P<image>!?)\[(?P<text>(?:`[^`]*`|[^\[\]`])*)\]"
                  r"\((?P<target>[^()\s]+)(?P<title>\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def docs_prefix(config: Any) -> str:
    return Path(config.docs_dir).resolve().relative_to(root(config)).as_posix()


def github_slug(heading: str) -> str:
    """A heading's anchor as GitHub writes it (and as mkdocs.yml's toc slugify writes it)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown file's headings (outside code blocks), duplicates numbered as GitHub does."""
    found: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not fenced:
            slug = base = github_slug(heading.group(1))
            n = 0
            while slug in found:
                n += 1
                slug = f"{base}-{n}"
            found.add(slug)
    return found


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    for source, uri in PAGES.items():
        path = root(config) / source
        if not path.is_file():
            log.warning("%s, published as %s, does not exist", source, uri)
            continue
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_serve(server: Any, config: Any, builder: Any, **kwargs: Any) -> Any:
    for source in PAGES:
        server.watch(str(root(config) / source))
    return server


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files, **kwargs: Any) -> str:
    src_uri = page.file.src_uri
    sources = {uri: source for source, uri in PAGES.items()}
    docs = docs_prefix(config)
    # Where the page's Markdown lives in the repository: its links are relative to that folder.
    stored_at = sources.get(src_uri) or f"{docs}/{src_uri}"
    here = posixpath.dirname(stored_at)
    site_here = posixpath.dirname(src_uri)
    repo_url = (config.repo_url or "").rstrip("/")

    def from_page(uri: str) -> str:
        return posixpath.relpath(uri, site_here or ".")

    def rewrite(match: re.Match[str]) -> str:
        if match.group("code"):
            return match.group(0)
        target = match.group("target")
        if SCHEME.match(target) or target.startswith(("#", "/")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(here, unquote(path)))
        fragment = f"#{anchor}" if anchor else ""
        link = match.group(0)
        if resolved.startswith("../"):
            log.warning("%s links %s, which is outside the repository", stored_at, target)
            return link
        if resolved == docs or resolved.startswith(f"{docs}/"):
            if src_uri in sources:  # a page from outside docs/: make the link relative to its place in the site
                return link.replace(f"({target}", f"({from_page(resolved[len(docs) + 1:])}{fragment}", 1)
            return link  # MkDocs checks these
        if resolved in PAGES:
            return link.replace(f"({target}", f"({from_page(PAGES[resolved])}{fragment}", 1)
        file = root(config) / resolved
        if not file.exists():
            log.warning("%s links %s, which does not exist", stored_at, resolved)
            return link
        if anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            log.warning("%s links %s#%s, but %s has no such heading", stored_at, resolved, anchor, resolved)
        if match.group("image"):
            log.warning("%s shows %s, which is outside %s/: the site cannot show it", stored_at, resolved, docs)
            return link
        if repo_url:
            return link.replace(f"({target}", f"({repo_url}/blob/HEAD/{resolved}{fragment}", 1)
        return match.group("text")

    out, block, fenced = [], [], False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line):
            if not fenced:
                out.append(LINK.sub(rewrite, "".join(block)))
                block = []
            fenced = not fenced
            out.append(line)
            continue
        (out if fenced else block).append(line)
    out.append(LINK.sub(rewrite, "".join(block)))
    return "".join(out)
