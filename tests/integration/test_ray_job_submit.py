"""`ray job submit` against a head this test starts (and alone stops): the RL entrypoint is stopped by
`ray job stop` mid-run (it finishes the step, checkpoints and exits 0), then resubmitted with `--resume` and
runs to completion with every step logged exactly once."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
ROOT = Path(__file__).resolve().parents[2]
STEPS = 10  # about 1 s each: enough that `ray job stop` (a CLI that takes seconds to start) lands mid-run


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env():
    env = subprocess_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray 2.60 turns on token authentication when a token file exists (~/.ray/auth_token); this head listens
    # on loopback only, so head and client agree to run without it.
    env["RAY_AUTH_MODE"] = "disabled"
    # `ray job stop` sends SIGTERM, then SIGKILL after this many seconds (default 3): room for a step + checkpoint
    env["RAY_JOB_STOP_WAIT_TIME_S"] = "300"
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def ray_head():
    """A private head on free ports, in its own process group: stopping it touches no other Ray instance on
    this machine (no `ray stop`, which stops every head of the machine)."""
    ray = str(Path(sys.executable).parent / "ray")
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix sockets live below it
    dashboard = _free_port()
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(_free_port()),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--ray-client-server-port",
         str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()), "--num-cpus", "2",
         "--temp-dir", temp_dir, "--disable-usage-stats"],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 300
    while subprocess.run([ray, "job", "list", "--address", address], env=_env(), capture_output=True).returncode:
        assert head.poll() is None, "ray start --head exited"
        assert time.monotonic() < deadline, "the head's job server did not come up in 300 s"
        time.sleep(2)
    yield ray, address
    os.killpg(head.pid, signal.SIGTERM)  # our head's process group only
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(30)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r["step"] for r in rows if "reward/mean" in r]


def test_ray_job_stop_checkpoints_and_resubmit_resumes(ray_head, smoke_base_model, tmp_path):
    ray, address = ray_head
    run_dir = tmp_path / "run"
    entry = ["python", "-m", "jobs.rl", "--recipe", "grpo_smoke", "--set", f"base_model.path={smoke_base_model}",
             "--set", f"loop.num_steps={STEPS}", "--set", "eval.num_samples=0", "--run-dir", str(run_dir)]
    submit = [ray, "job", "submit", "--address", address, "--working-dir", str(ROOT)]
    started = subprocess.run([*submit, "--no-wait", "--", *entry], env=_env(), capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
    assert started.returncode == 0, started.stderr[-2000:]
    job_id = re.search(r"raysubmit_\w+", started.stdout).group(0)
    deadline = time.monotonic() + 900
    while 1 not in _steps(run_dir):
        assert time.monotonic() < deadline, "no step finished within 900 s"
        time.sleep(0.5)
    # the same request `ray job stop` sends, without the seconds the CLI takes to start on a loaded machine
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    assert client.stop_job(job_id)
    deadline = time.monotonic() + 400
    while client.get_job_status(job_id) not in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED):
        assert time.monotonic() < deadline, "the stopped job did not end within 400 s"
        time.sleep(1)
    assert client.get_job_status(job_id) == JobStatus.STOPPED
    logs = subprocess.run([ray, "job", "logs", "--address", address, job_id], env=_env(), capture_output=True,
                          text=True, timeout=120).stdout
    assert "SIGTERM received: finishing the current step" in logs
    stopped = re.search(r"stopped after step (\d+) \(received SIGTERM\); checkpoint", logs)
    assert stopped and int(stopped.group(1)) < STEPS, logs[-3000:]
    assert "Traceback" not in logs

    finished = subprocess.run([*submit, "--", *entry, "--resume"], env=_env(), capture_output=True, text=True,
                              timeout=1200, cwd=ROOT)
    assert finished.returncode == 0, (finished.stdout[-3000:], finished.stderr[-3000:])
    assert "succeeded" in finished.stdout and "resumed at step" in finished.stdout
    assert (run_dir / "report" / "rl.md").exists() and (run_dir / "models" / "policy" / "config.json").exists()
    assert _steps(run_dir) == list(range(1, STEPS + 1))  # the stopped step is not counted twice
