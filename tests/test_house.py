"""The package's house rules, read from its source: no module imports itself back through others, and no
module outgrows what a reader holds in mind at once.

Imports are read with `ast`, not run. Those inside functions count as much as those at module level: a
cycle through a function-level import is still a knot, one that merely shows later. Imports under
``if TYPE_CHECKING:`` do not count, since they never run. ``from albert_batch.x import y`` imports the
module ``albert_batch.x.y`` where there is one, else ``albert_batch.x``; relative imports are resolved.
Importing a module also runs its parent packages' ``__init__``, but that is no edge of the graph: a parent
package is always imported before its modules, so only what an ``__init__`` itself imports can close a cycle.
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
PACKAGE = "albert_batch"
MAX_LINES = 400


def module_files(root: Path = SOURCE, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``root``, by its dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements anywhere in ``node``, functions included, but not under ``if TYPE_CHECKING:``."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [node]
    children = list(ast.iter_child_nodes(node))
    if isinstance(node, ast.If) and "TYPE_CHECKING" in {getattr(node.test, "id", None), getattr(node.test, "attr", None)}:
        children = node.orelse
    return [found for child in children for found in _imports(child)]


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """For every module, the modules among ``modules`` that it imports, each with the line that first does."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                base = ".".join(part for part in (base, node.module) if part)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:  # a name in a module, or not ours at all
                    target = target.rpartition(".")[0]
                if target:
                    graph[name].setdefault(target, node.lineno)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str]:
    """The first cycle a depth-first walk of ``graph`` meets, as the modules along it, the first one again
    at the end; empty when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def walk(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return []
        path.append(module)
        for target in sorted(graph[module]):
            if cycle := walk(target):
                return cycle
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        if cycle := walk(module):
            return cycle
    return []


def test_no_module_imports_itself_back_through_others():
    modules = module_files()
    graph = import_graph(modules)
    cycle = find_cycle(graph)
    steps = [f"  {modules[a].relative_to(SOURCE)}:{graph[a][b]} imports {b}" for a, b in pairwise(cycle)]
    assert not cycle, "\n".join([f"import cycle: {' -> '.join(cycle)}", *steps])


def test_the_graph_resolves_relative_and_submodule_imports_and_leaves_out_type_checking_ones(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.sub import helpers\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "helpers.py").write_text("from typing import TYPE_CHECKING\n"
                                                         "if TYPE_CHECKING:\n    from pkg.sub.core import Thing\n")
    (tmp_path / "pkg" / "sub" / "core.py").write_text("def f():\n    from .. import sub\n    from .helpers import g\n"
                                                      "    import pkg.sub.helpers.g\n")
    graph = import_graph(module_files(tmp_path, "pkg"))
    assert graph == {"pkg": {"pkg.sub.helpers": 1}, "pkg.sub": {}, "pkg.sub.core": {"pkg.sub": 2, "pkg.sub.helpers": 3},
                     "pkg.sub.helpers": {}}
    assert find_cycle(graph) == []
    assert find_cycle(graph | {"pkg.sub": {"pkg.sub.core": 1}}) == ["pkg.sub", "pkg.sub.core", "pkg.sub"]


def test_no_module_is_over_400_lines():
    sizes = {path.relative_to(SOURCE): len(path.read_text(encoding="utf-8").splitlines())
             for path in module_files().values()}
    over = {str(path): lines for path, lines in sorted(sizes.items()) if lines > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: " + ", ".join(f"{path} ({n})" for path, n in over.items())
