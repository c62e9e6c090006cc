"""Imports flow one way: kernels <- rl_platform <- {rewards, pretrain, actors} <- jobs."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "kernels": set(),
    "rl_platform": {"kernels"},
    "rewards": {"kernels", "rl_platform"},
    "pretrain": {"kernels", "rl_platform"},
    "actors": {"kernels", "rl_platform"},
    "jobs": {"kernels", "rl_platform", "rewards", "pretrain", "actors"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package):
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = (_imports(path) & set(ALLOWED)) - ALLOWED[package] - {package}
        if bad:
            violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("package", ["rl_platform", "rewards", "pretrain", "kernels"])
def test_only_actors_and_jobs_import_ray_at_module_level(package):
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "ray" for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders


def _package_graph(package: str) -> dict[str, set[str]]:
    """module -> modules of the same package it imports anywhere in its source (function bodies too)."""
    graph = {}
    for path in sorted((ROOT / package).glob("*.py")):
        module = f"{package}.{path.stem}"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"{package}."):
                edges.add(node.module)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith(f"{package}.")}
        graph[module] = edges - {module}
    return graph


@pytest.mark.parametrize("package", ["rewards"])
def test_no_import_cycle_inside_the_package(package):
    graph = _package_graph(package)
    cycles = []

    def visit(module, stack):
        if module in stack:
            cycles.append(" -> ".join([*stack[stack.index(module):], module]))
            return
        for nxt in sorted(graph.get(module, ())):
            visit(nxt, [*stack, module])

    for module in graph:
        visit(module, [])
    assert not cycles, "import cycles (deferred imports included):\n" + "\n".join(sorted(set(cycles))[:10])
