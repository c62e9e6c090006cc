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
