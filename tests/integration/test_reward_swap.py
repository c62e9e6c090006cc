"""The same RL recipe with three rewards, changing only the recipe: the rule-based verifier, a trained
reward model, and a remote scorer (HTTP server on loopback). Two real RL steps each."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import subprocess_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _rl(base_model, run_dir, *overrides):
    args = [sys.executable, "-m", "jobs.rl", "--recipe", "grpo_smoke", "--set", f"base_model.path={base_model}",
            "--run-dir", str(run_dir), *[x for o in overrides for x in ("--set", o)]]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT,
                            env=subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert rows and {r["step"] for r in rows} == {0, 1}
    return rows


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("rm")
    result = subprocess.run([sys.executable, "-m", "jobs.train_reward_model", "--recipe", "rm_smoke", "--run-dir",
                             str(run)], capture_output=True, text=True, timeout=900, cwd=ROOT,
                            env=subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out pairwise accuracy" in result.stdout
    return run / "reward_model"


@pytest.fixture
def reward_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rewards.serve", "--reward", "arithmetic_verifier", "--port",
                             str(port)], cwd=ROOT, env=subprocess_env())
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_swap_verifier_reward_model_remote(smoke_base_model, reward_model_dir, reward_server, tmp_path):
    verifier = _rl(smoke_base_model, tmp_path / "verifier")
    model = _rl(smoke_base_model, tmp_path / "model", "reward=reward_model", f"reward.path={reward_model_dir}")
    remote = _rl(smoke_base_model, tmp_path / "remote", "reward=remote", f"reward.url={reward_server}")
    assert {r["reward_name"] for r in verifier} == {"arithmetic_verifier"}
    assert {r["reward_name"] for r in model} == {"reward_model"}
    # the remote client passes the server's provenance through: the served reward and its version
    served = httpx.get(f"{reward_server}/health", timeout=5.0).json()
    expected = {(served["reward_name"], served["reward_version"])}
    assert {(r["reward_name"], r["reward_version"]) for r in remote} == expected
    for rows in (verifier, model, remote):
        assert len({r["reward_version"] for r in rows}) == 1 and rows[0]["reward_version"]
        assert all(r["failed"] or r["reward"] is not None for r in rows)
    assert len({r["reward"] for r in model}) > 1  # a learned reward scores on a continuum
