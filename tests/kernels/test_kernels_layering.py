"""`kernels` is the bottom layer: importing every kernel module (benches included) loads nothing else of ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
OUR_OTHER_PACKAGES = {"rl_platform", "pretrain", "actors", "rewards", "jobs", "tests"}


def test_kernels_import_nothing_else_of_ours():
    modules = sorted(
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for path in (REPO_ROOT / "kernels").rglob("*.py")
        if path.name != "__init__.py"
    )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )  # fmt: skip
    leaked = OUR_OTHER_PACKAGES & set(result.stdout.split())
    assert not leaked, (f"kernels imported {sorted(leaked)}; kernels must stay the bottom layer "
                        "(docs/contributing.md, 'Layers')")
