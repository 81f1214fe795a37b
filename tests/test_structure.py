"""The layout rules: the package's import graph is acyclic and goes down the layers, every module (of the
package and of tests/support/) has a docstring, and no test module imports another test module or conftest."""

from __future__ import annotations

import ast
from pathlib import Path

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
                return path[path.index(target) :] + [target]
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
    assert {"ctxext", "ctxext.model.extend", "ctxext.methods.dca", "ctxext.eval.runner"} <= set(graph)
    assert "ctxext.core.registry" in graph["ctxext.methods.dca"]  # the graph sees relative imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The layers, lowest first: a module imports only from its own layer or the ones below it.
LAYERS = (
    ("ctxext.errors", "ctxext.version", "ctxext.core"),
    ("ctxext.model", "ctxext.methods", "ctxext.checkpoint", "ctxext.auto", "ctxext.serving"),
    ("ctxext.eval", "ctxext.recipes", "ctxext.openai_server"),
    ("ctxext.cli",),
)


def layer_of(module: str) -> int | None:
    """The layer of a module (None for the package's own ``__init__``, the facade above every layer)."""
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        level = layer_of(module)
        for target in sorted(targets):
            target_level = layer_of(target)
            if level is not None and (target_level is None or target_level > level):
                found.append(f"{module} -> {target}")
    return found


def test_imports_only_go_down_the_layers():
    graph = import_graph()
    assert all(layer_of(m) is not None for m in graph if m != "ctxext"), "a module outside every layer"
    assert upward_imports(graph) == []


def test_the_layer_check_sees_an_upward_import():
    assert upward_imports({"ctxext.core.plan": {"ctxext.eval.runner"}, "ctxext.cli.eval": {"ctxext.core.plan"}}) == [
        "ctxext.core.plan -> ctxext.eval.runner"
    ]
    assert upward_imports({"ctxext.model.extend": {"ctxext"}}) == ["ctxext.model.extend -> ctxext"]


def test_help_needs_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = (
        "import sys; from ctxext.cli import build_parser; build_parser(only=''); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_module_says_what_it_is_for():
    missing = [
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not missing, f"modules without a docstring: {missing}"


def test_the_lm_eval_task_functions_import_ctxext_absolutely():
    """lm-eval loads ``lm_eval_tasks/*.py`` as plain modules, outside the package: a relative import fails there."""
    folder = PACKAGE / "eval" / "lm_eval_tasks"
    relative = [
        f"{p.name}:{node.lineno}"
        for p in folder.glob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level
    ]
    assert relative == []


# -- the tests: shared helpers live in tests/support/, fixtures in conftest.py ----------------------

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support"


def _is_test_module(name: str) -> bool:
    """``conftest`` or a test module (``test_*``, at any depth of a dotted name's first part)."""
    top = name.split(".")[0]
    return top == "conftest" or top.startswith("test_")


def imports_of_test_modules(sources: dict[str, str]) -> list[str]:
    """``file: module`` for every import of a test module or of conftest (at module level or inside a function)
    in the given sources (file name -> Python source). Tests take what they share from ``support``."""
    found = []
    for file, source in sorted(sources.items()):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module] if node.module else [alias.name for alias in node.names]
            else:
                continue
            found += [f"{file}: {name}" for name in names if _is_test_module(name)]
    return found


def _test_sources() -> dict[str, str]:
    return {str(p.relative_to(TESTS)): p.read_text() for p in sorted(TESTS.rglob("*.py"))}


def test_no_test_module_imports_another_test_module_or_conftest():
    sources = _test_sources()
    assert "support/method_cases.py" in sources and "test_guard_eval.py" in sources
    assert imports_of_test_modules(sources) == []


def test_the_test_import_check_sees_a_planted_violation():
    planted = {
        "test_a.py": "from conftest import NATIVE\nimport ctxext\n",
        "test_b.py": "def helper():\n    from test_serving import EXPECTED\n    return EXPECTED\n",
        "support/c.py": "import test_cli, json\n",
        "test_d.py": "from support.models import NATIVE\nfrom support import cli_harness\nimport pytest\n",
    }
    assert imports_of_test_modules(planted) == [
        "support/c.py: test_cli",
        "test_a.py: conftest",
        "test_b.py: test_serving",
    ]


def test_the_tests_directory_holds_only_test_modules_and_conftest():
    """A helper module beside the tests would be imported by them: helpers go to tests/support/."""
    others = sorted(p.name for p in TESTS.glob("*.py") if p.name != "conftest.py" and not p.name.startswith("test_"))
    assert others == [], f"move these into tests/support/: {others}"


def test_every_support_module_says_what_it_is_for():
    modules = sorted(SUPPORT.glob("*.py"))
    assert {"__init__.py", "models.py", "method_cases.py", "cli_harness.py"} <= {p.name for p in modules}
    missing = [p.name for p in modules if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"support modules without a docstring: {missing}"
