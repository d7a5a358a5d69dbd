"""The package's modules import each other without a circle, and the tasks never import the
Python API or what sits above it (raw-text prediction, serving, the CLI). Imports are read from the source with `ast`: those at module
level and those inside functions (they run too, only later); `if TYPE_CHECKING:` ones do not run
and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "bertforge"


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` (a package is its __init__)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module `name` imports when it runs (a `from package import
    x` names module package.x when there is one, else the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit_node(other)
            else:
                visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
                elif base in modules:
                    found.add(base)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    found.discard(name)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    modules = module_files(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"

    def walk(path: list[str]) -> list[str] | None:
        node = path[-1]
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk([start])):
            return cycle
    return None


def test_the_walker_sees_function_level_imports_and_skips_type_checking_ones(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import low\n")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    import pkg.c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                              "from pkg.sub import low\n")
    (pkg / "sub" / "low.py").write_text("import os\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.low"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"},
                     "pkg.c": {"pkg.sub.low"}, "pkg.sub.low": set()}
    assert find_cycle(graph) is None
    (pkg / "c.py").write_text("def g():\n    from pkg import a\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


def test_no_import_circle():
    graph = import_graph(PACKAGE)
    assert "bertforge.api" in graph and "bertforge.tasks.squad" in graph
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_tasks_do_not_import_the_api():
    graph = import_graph(PACKAGE)
    # Raw text is predicted through the API: the CLI calls bertforge.raw_text, never a task.
    above = ("bertforge.api", "bertforge.raw_text", "bertforge.serve", "bertforge.cli")
    assert "bertforge.api" in graph["bertforge.raw_text"]
    upward = {name: sorted(m for m in graph[name] if m.startswith(above))
              for name in graph if name.startswith("bertforge.tasks")}
    assert not {name: found for name, found in upward.items() if found}
    # What both need lies below both.
    for below in ("bertforge.loading", "bertforge.qa"):
        assert below in graph["bertforge.api"] and below in graph["bertforge.tasks.squad"]
        assert not [m for m in graph[below] if m.startswith(above + ("bertforge.tasks",))]
