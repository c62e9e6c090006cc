"""Reward-model training recipes."""

from __future__ import annotations

from jobs.recipes import recipe
from jobs.train_reward_model import RewardModelJobConfig
from rewards.train_rm import LoraSettings, TrainRewardModelConfig


@recipe("train_reward_model")
def rm_arithmetic_tiny() -> RewardModelJobConfig:
    """A ~0.2 M-parameter classifier on 4000 arithmetic preference pairs (CPU, a few minutes)."""
    return RewardModelJobConfig(train=TrainRewardModelConfig())


@recipe("train_reward_model")
def rm_arithmetic_tiny_lora() -> RewardModelJobConfig:
    """The same with LoRA adapters (peft), merged into the saved model."""
    return RewardModelJobConfig(train=TrainRewardModelConfig(lora=LoraSettings(rank=8, alpha=16)))


@recipe("train_reward_model")
def rm_smoke() -> RewardModelJobConfig:
    """Seconds-long training for tests (accuracy is not the point)."""
    return RewardModelJobConfig(train=TrainRewardModelConfig(num_train_pairs=256, num_eval_pairs=64, max_steps=30))
