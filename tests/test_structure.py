"""The package's layout rules: an acyclic import graph, one-line docstrings on every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ctxext

PACKAGE = Path(ctxext.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()


def _exists(name: str) -> bool:
    return _is_package(name) or (PACKAGE.parent / (name.replace(".", "/") + ".py")).is_file()


def import_graph() -> dict[str, set[str]]:
    """ctxext module -> the ctxext modules it imports, at module level or inside functions."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "ctxext")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "ctxext":
                    continue
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if _exists(submodule) else source)
        targets.discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_of_the_package_is_acyclic():
    graph = import_graph()
    assert {"ctxext", "ctxext.api", "ctxext.methods.dca", "ctxext.eval.runner"} <= set(graph)
    assert "ctxext.registry" in graph["ctxext.methods.dca"]  # the graph sees relative imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_says_what_it_is_for():
    missing = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


def test_the_old_patches_package_is_a_deprecated_alias_of_methods():
    import importlib
    import sys

    for name in [m for m in sys.modules if m == "ctxext.patches" or m.startswith("ctxext.patches.")]:
        del sys.modules[name]
    with pytest.warns(DeprecationWarning, match="ctxext.methods"):
        patches = importlib.import_module("ctxext.patches")
    from ctxext.patches.ntk import ntk_theta
    from ctxext.patches.string_shift import StringConfig

    from ctxext.methods import ntk, string

    assert ntk_theta is ntk.ntk_theta and StringConfig is string.StringConfig and patches.methods is ctxext.methods

