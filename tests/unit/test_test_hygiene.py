"""The suite's own rules: `make test` fails when pytest collects nothing, every test has a timeout, and no
test stops a Ray instance it did not start or listens on a fixed port."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(("pytest_exit", "make_fails"), [(0, False), (1, True), (5, True)])
def test_make_test_fails_when_pytest_collects_no_test(tmp_path, pytest_exit, make_fails):
    # The real Makefile, run in a scratch folder with a stand-in for the venv's python (no install, no tests).
    fake = tmp_path / "fakepy"
    fake.write_text(f"#!/bin/sh\nexit {pytest_exit}\n")
    fake.chmod(0o755)
    (tmp_path / "pyproject.toml").write_text("")
    stamp = tmp_path / "stamp"
    stamp.write_text("")
    os.utime(tmp_path / "pyproject.toml", (1, 1))
    result = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "test", f"PY={fake}", f"STAMP={stamp}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (result.returncode != 0) == make_fails, result.stderr
    if pytest_exit == 5:
        assert "collected no tests" in result.stderr


def test_every_collected_test_gets_a_timeout(request):
    assert request.node.get_closest_marker("timeout") is not None
    assert request.config.getini("timeout")


def _test_sources():
    return sorted(p for p in (ROOT / "tests").rglob("*.py") if p != Path(__file__).resolve())


def test_no_test_stops_ray_globally():
    offenders = [str(p.relative_to(ROOT)) for p in _test_sources()
                 if re.search(r"""["']stop["'],\s*["']--force["']|ray stop --force""", p.read_text())]
    assert not offenders, f"`ray stop` stops every Ray instance of the machine: {offenders}"


def test_integration_tests_use_free_ports():
    fixed = re.compile(r"""["']--(?:dashboard-)?port["'],\s*["']\d+["']|127\.0\.0\.1:8265""")
    offenders = [str(p.relative_to(ROOT)) for p in _test_sources() if fixed.search(p.read_text())]
    assert not offenders, f"fixed ports collide with other runs on the machine: {offenders}"
