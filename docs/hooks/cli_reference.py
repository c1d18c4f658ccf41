"""MkDocs hook: docs/cli.md's reference of every command and flag, rendered when the site is built from the
parser that ``albert-batch`` itself builds (its flags are the settings' fields and their help text), so the
page cannot drift from the command.

The page holds a placeholder, an HTML comment that starts with ``<!-- cli-reference``; the rendered Markdown
replaces it. `render` is also what tests/test_docs.py compares with the parser.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Callable
from typing import Any

from mkdocs.exceptions import PluginError

PAGE = "cli.md"
PLACEHOLDER = re.compile(r"<!--\s*cli-reference\b.*?-->", re.DOTALL)
# The one function that returns the `albert-batch` parser. Rename it here if it moves.
BUILDER = ("albert_batch.cli", "build_parser")
USAGE_WIDTH = 100


def parser_builder() -> Callable[[], argparse.ArgumentParser]:
    module_name, name = BUILDER
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PluginError(f"cli_reference: cannot import {module_name} ({error}); is albert-batch installed?") from error
    build = getattr(module, name, None)
    if not callable(build):
        raise PluginError(f"cli_reference: {module_name}.{name}, which builds the albert-batch parser, is gone; "
                          "name the function that does in docs/hooks/cli_reference.py (BUILDER)")
    return build


def build_parser() -> argparse.ArgumentParser:
    return parser_builder()()


def commands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Each sub-command as (name, one-line help, its parser), in the order the parser declares them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The flags of one command, in declaration order, without argparse's own -h/--help."""
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def escape(text: str) -> str:
    """Text for a Markdown table cell: code spans kept as written, everything else shown literally."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(part)
        else:
            out.append(re.sub(r"([\\*_\[\]|])", r"\\\1", part).replace("<", "&lt;").replace(">", "&gt;"))
    return " ".join("".join(out).split("\n"))


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own %(default)s, %(prog)s, ... expansions
        text = parser._get_formatter()._expand_help(action)
    return text


def value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.metavar:
        return f"`{action.metavar}`"
    if action.choices:
        return " or ".join(f"`{choice}`" for choice in action.choices)
    return f"`{action.dest.upper()}`"


def notes(parser: argparse.ArgumentParser, action: argparse.Action) -> list[str]:
    said = []
    if action.required:
        said.append("**Required.**")
    if action.choices and action.metavar:
        said.append("One of " + ", ".join(f"`{choice}`" for choice in action.choices) + ".")
    if isinstance(action, argparse._AppendAction):
        said.append("Repeatable.")
    if action.default not in (None, False, argparse.SUPPRESS, []):
        said.append(f"Default: `{action.default}`.")
    for group in parser._mutually_exclusive_groups:
        if action in group._group_actions:
            others = [other.option_strings[-1] for other in group._group_actions if other is not action]
            said.append("Not with " + ", ".join(f"`{o}`" for o in others) + ".")
    return said


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def anchor(name: str, prog: str) -> str:
    """The heading id of a command's section (GitHub's and the site's slugs agree on it)."""
    return re.sub(r"[^\w\- ]", "", f"{prog} {name}".lower()).replace(" ", "-")


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The reference, as Markdown: a table of the commands, then each command's usage and flags."""
    parser = parser or build_parser()
    subcommands = commands(parser)
    if not subcommands:
        raise PluginError("cli_reference: the albert-batch parser has no sub-commands")
    lines = ["| command | what it does |", "| --- | --- |"]
    lines += [f"| [`{parser.prog} {name}`](#{anchor(name, parser.prog)}) | {escape(summary)} |"
              for name, summary, _ in subcommands]
    for name, summary, sub in subcommands:
        lines += ["", f"## `{parser.prog} {name}`", ""]
        lines += [escape(summary[:1].upper() + summary[1:]) + "." if summary else ""]
        if sub.description:
            lines += ["", escape(sub.description)]
        lines += ["", "```text", usage(sub), "```", "", "| flag | value | what it sets |", "| --- | --- | --- |"]
        for action in flags(sub):
            names = ", ".join(f"`{option}`" for option in action.option_strings)
            description = escape(help_text(sub, action)).strip()
            if said := notes(sub, action):
                description = " ".join([description + ("" if description.endswith((".", "!", "?")) else "."), *said])
            lines.append(f"| {names} | {value(action)} | {description} |")
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if not PLACEHOLDER.search(markdown):
        raise PluginError(f"cli_reference: docs/{PAGE} has no <!-- cli-reference --> placeholder")
    reference = render()
    return PLACEHOLDER.sub(lambda _: reference, markdown, count=1)
