"""The package's import graph: the layers the architecture page describes (docs/architecture.md) hold.

Every `import` counts, at module level, inside functions and under TYPE_CHECKING alike: a lazy import still
makes the two modules one unit to read, test and change.
"""

import ast
import collections
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "mmjax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the mmjax modules it imports (`from pkg import name` counts as pkg.name when that is a module)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmjax":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    graph[name].add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.split(".")[0] == "mmjax")
        graph[name].discard(name)
    return graph


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports_of_package(graph: dict[str, set[str]], package: str) -> set[str]:
    return {_package(dep) for mod, deps in graph.items() if _package(mod) == package for dep in deps} - {package}


def test_layout_sits_below_data_and_models():
    graph = _import_graph()
    assert _imports_of_package(graph, "mmjax.layout") == set()
    assert "mmjax.layout" in _imports_of_package(graph, "mmjax.data")
    assert "mmjax.layout" in _imports_of_package(graph, "mmjax.models")
    assert "mmjax.data" not in _imports_of_package(graph, "mmjax.models")
    assert "mmjax.models" not in _imports_of_package(graph, "mmjax.data")


@pytest.mark.parametrize("package", ["mmjax.nn", "mmjax.layout", "mmjax.models", "mmjax.data", "mmjax.diffusion"])
def test_no_import_cycle_inside_the_library_packages(package):
    graph = _import_graph()
    inside = {m: {d for d in deps if _package(d) == package} for m, deps in graph.items() if _package(m) == package}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(inside.get(module, ())):
            if state.get(dep) == "open":
                pytest.fail(f"import cycle: {' -> '.join([*path[path.index(dep):], dep])}")
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(inside):
        if module not in state:
            visit(module, [module])
    assert inside, f"no modules found in {package}"
