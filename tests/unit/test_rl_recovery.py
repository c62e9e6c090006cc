"""The RL job's learner-failure policy, on fakes: stop with the checkpoint and the --resume command, or
restart from the checkpoint up to loop.auto_resume times (the real kill is in tests/integration/test_faults.py)."""

from __future__ import annotations

import pytest

import jobs.rl as rl_job
from jobs.recipes.rl import grpo_smoke
from jobs.rl_recovery import GuardedTrainer, LearnerFailed, RLCheckpoints
from rl_platform.run_dir import RunConfig, RunDir
from rl_platform.shutdown import GracefulStop


class _DeadLearner:
    def train_step(self, rollouts, advantages):
        raise ConnectionError("The actor died unexpectedly before finishing this task")


def test_guarded_trainer_turns_any_learner_error_into_learner_failed():
    trainer = GuardedTrainer(_DeadLearner())
    trainer.step = 6
    with pytest.raises(LearnerFailed, match="during step 7: ConnectionError: The actor died"):
        trainer.train_step([], [])


@pytest.fixture
def run_dir(tmp_path):
    run = RunDir.create(RunConfig(run_dir=str(tmp_path / "run"), use_wandb=False), "grpo_smoke", {})
    yield run
    run.close()


def _checkpoint(run, step):
    def write(staging, tag):
        (staging / tag).mkdir()
        (staging / tag / "state.pt").write_bytes(b"s")

    RLCheckpoints(run, grpo_smoke().checkpoint).store.save(step, write, meta={"step": step, "run_files": {}})


def test_without_auto_resume_the_job_stops_naming_the_checkpoint_and_the_command(run_dir, monkeypatch, capsys):
    _checkpoint(run_dir, 4)
    calls = []

    def failing_train(config, run, base, resume, stop, checkpoints):
        calls.append(resume)
        raise LearnerFailed(5, RuntimeError("CUDA error: an illegal memory access"))

    monkeypatch.setattr(rl_job, "_train", failing_train)
    monkeypatch.setattr("sys.argv", ["jobs.rl", "--recipe", "grpo_smoke", "--run-dir", str(run_dir.path)])
    code = rl_job._train_with_restarts(grpo_smoke(), run_dir, None, False, GracefulStop())
    err = capsys.readouterr().err
    assert code == 1 and calls == [False]
    assert "the learner failed during step 6: RuntimeError: CUDA error" in err
    assert f"the last checkpoint is {run_dir.path / 'checkpoints' / 'rl' / 'step-00000004'} (after step 4)" in err
    assert f"python -m jobs.rl --recipe grpo_smoke --run-dir {run_dir.path} --resume" in err


def test_auto_resume_restarts_from_the_checkpoint_then_gives_up(run_dir, monkeypatch, capsys):
    _checkpoint(run_dir, 2)
    config = grpo_smoke()
    config.loop.auto_resume = 2
    calls = []

    def train(config, run, base, resume, stop, checkpoints):
        calls.append(resume)
        raise LearnerFailed(len(calls), RuntimeError("killed"))

    monkeypatch.setattr(rl_job, "_train", train)
    assert rl_job._train_with_restarts(config, run_dir, None, False, GracefulStop()) == 1
    assert calls == [False, True, True]  # the first run, then two restarts that resume from the checkpoint
    assert "--resume" in capsys.readouterr().err


def test_an_actor_fault_supervision_cannot_repair_stops_the_job_like_a_learner_failure(run_dir, monkeypatch, capsys):
    from rl_platform.supervision import EngineFailed

    _checkpoint(run_dir, 3)

    def train(config, run, base, resume, stop, checkpoints):
        raise EngineFailed("rollout engine 1: engine_lost (poll: ActorDiedError) after 3 restarts "
                           "(resources.supervision.max_restarts=3)")

    monkeypatch.setattr(rl_job, "_train", train)
    monkeypatch.setattr("sys.argv", ["jobs.rl", "--recipe", "grpo_smoke", "--run-dir", str(run_dir.path)])
    assert rl_job._train_with_restarts(grpo_smoke(), run_dir, None, False, GracefulStop()) == 1
    err = capsys.readouterr().err
    assert "rollout engine 1: engine_lost" in err and "max_restarts=3" in err
    assert "(after step 3)" in err and "--resume" in err
