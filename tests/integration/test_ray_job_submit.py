"""`ray job submit` against a locally started head runs the RL entrypoint to completion."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import subprocess_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = subprocess_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray 2.60 turns on token authentication when a token file exists (~/.ray/auth_token); this head listens
    # on loopback only, so head and client agree to run without it.
    env["RAY_AUTH_MODE"] = "disabled"
    return env


@pytest.fixture
def ray_head(tmp_path):
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "stop", "--force"], env=_env(), capture_output=True, timeout=120)
    start = subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                            "--dashboard-port", "8265", "--num-cpus", "2", "--disable-usage-stats"],
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert start.returncode == 0, start.stderr[-2000:]
    yield ray
    subprocess.run([ray, "stop", "--force"], env=_env(), capture_output=True, timeout=120)


def test_rl_job_runs_to_completion_through_ray_job_submit(ray_head, smoke_base_model, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [ray_head, "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", str(ROOT), "--",
         "python", "-m", "jobs.rl", "--recipe", "grpo_smoke", "--set", f"base_model.path={smoke_base_model}",
         "--run-dir", str(run_dir)],
        env=_env(), capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "succeeded" in result.stdout
    assert "held-out pass rate" in result.stdout
    assert (run_dir / "report" / "rl.md").exists() and (run_dir / "models" / "policy" / "config.json").exists()
    assert sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"reward/mean"' in line) == 2
