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
