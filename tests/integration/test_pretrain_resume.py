"""Resuming pretraining from a checkpoint gives the same next losses as not stopping (CPU, fixed seed)."""

import dataclasses

import pytest

from jobs.recipes.pretrain import pretrain_smoke
from pretrain.data.pipeline import build_tokenizer
from pretrain.trainer import PretrainTrainer

pytestmark = pytest.mark.slow


def test_resume_gives_the_same_next_losses(tmp_path):
    config = pretrain_smoke()
    config = dataclasses.replace(config, loop=dataclasses.replace(config.loop, num_steps=4, checkpoint_every=0))
    tokenizer = build_tokenizer(config.data, config.run.seed)
    straight = PretrainTrainer(config, tokenizer, tmp_path / "a", lambda *_: None)
    losses_straight = [straight.train_step()["train/loss"] for _ in range(4)]

    stopped = PretrainTrainer(config, tokenizer, tmp_path / "b", lambda *_: None)
    [stopped.train_step() for _ in range(2)]
    stopped.save_checkpoint()
    resumed = PretrainTrainer(config, tokenizer, tmp_path / "b", lambda *_: None)
    assert resumed.try_resume() and resumed.step == 2
    losses_resumed = [resumed.train_step()["train/loss"] for _ in range(2)]
    assert losses_resumed == pytest.approx(losses_straight[2:], abs=1e-6)
    assert resumed.clipper.state_dict()["step"] == 4


class _StopAfter:
    """Stands for a GracefulStop that received SIGTERM during step `step` (the signal path itself is tested
    in tests/unit/test_checkpointing.py)."""

    reason = "received SIGTERM"

    def __init__(self, trainer, step):
        self.trainer, self.step = trainer, step

    @property
    def requested(self):
        return self.trainer.step >= self.step


def test_stop_signal_checkpoints_and_the_resume_continues_without_duplicate_rows(tmp_path):
    import json

    from rl_platform.run_dir import RunConfig, RunDir

    config = pretrain_smoke()
    config = dataclasses.replace(config, loop=dataclasses.replace(config.loop, num_steps=4, checkpoint_every=0,
                                                                  log_every=1))
    tokenizer = build_tokenizer(config.data, config.run.seed)
    run = RunDir.create(RunConfig(run_dir=str(tmp_path / "run"), use_wandb=False), "pretrain_smoke", config)
    try:
        stopped = PretrainTrainer(config, tokenizer, run.path, run.log_metrics, run_files=run)
        stopped.train(stop=_StopAfter(stopped, 2))
        assert stopped.stopped_by == "received SIGTERM" and stopped.step == 2
        assert (run.path / "checkpoints" / "pretrain" / "step-00000002" / "manifest.json").exists()
        run.log_metrics(3, {"train/loss": 9.9})  # a row written after the checkpoint, as by a crash
        resumed = PretrainTrainer(config, tokenizer, run.path, run.log_metrics, run_files=run)
        resumed.train(resume=True)
    finally:
        run.close()
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["train/loss"] != 9.9  # the stray row was cut, the real step 3 logged once
