"""The RL job's config tree (what `jobs/recipes/rl.py` returns)."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.remote import ActorResources
from actors.rollout import RolloutEngineConfig
from rewards.base import RewardConfig
from rewards.verifiers import ArithmeticVerifierConfig
from rl_platform.config import check
from rl_platform.controller import ControllerConfig, SamplingConfig
from rl_platform.learner import LearnerConfig
from rl_platform.run_dir import RunConfig
from rl_platform.tasks.prompts import ArithmeticPromptsConfig
from rl_platform.tasks.sources import PromptSourceConfig


@dataclass(kw_only=True, slots=True)
class BaseModelConfig:
    """Where the policy starts."""

    path: str = ""
    """A Hugging Face directory of a supported MoE architecture (Qwen3MoeForCausalLM, Ernie4_5_MoeForCausalLM,
    OlmoeForCausalLM; docs/bring_your_own_model.md); empty = pretrain `pretrain_recipe` once and reuse it from
    `cache_dir`."""
    pretrain_recipe: str = "pretrain_tiny"
    """Pretraining recipe that produces the base model when `path` is empty."""
    cache_dir: str = "models"
    """Where pretrained base models are kept between runs (keyed by recipe and config hash)."""


@dataclass(kw_only=True, slots=True)
class RLEvalConfig:
    """Held-out evaluation on prompts never seen in pretraining or RL training: greedy pass@1 (`eval/pass_rate`)
    and, when num_samples > 0, pass@1 at the sampling temperature estimated from num_samples samples per prompt
    (`eval/sampled_pass_rate`, mean@k) with a fixed seed, so every evaluation sees the same random numbers."""

    num_prompts: int = 128
    every_steps: int = 10
    """Evaluate every N steps (and always before the first and after the last)."""
    max_tokens: int = 48
    num_samples: int = 4
    """Samples per prompt for the sampled pass rate (0: greedy only)."""
    temperature: float = 1.0
    """Temperature of the sampled pass rate (the rollout's, so it measures the policy being trained)."""


@dataclass(kw_only=True, slots=True)
class RLJobConfig:
    """Everything `python -m jobs.rl` needs."""

    base_model: BaseModelConfig = field(default_factory=BaseModelConfig)
    prompts: PromptSourceConfig = field(default_factory=ArithmeticPromptsConfig)
    """Where prompts come from, by registered name: --set prompts=arithmetic | file | reasoning_gym."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutEngineConfig = field(default_factory=RolloutEngineConfig)
    reward: RewardConfig = field(default_factory=ArithmeticVerifierConfig)
    """The reward, by registered name: --set reward=arithmetic_verifier | reward_model | remote | weighted | ..."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    loop: ControllerConfig = field(default_factory=ControllerConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)
    resources: ActorResources = field(default_factory=ActorResources)
    checkpoint_every: int = 10
    """RL steps between resumable checkpoints (0: only at the end)."""
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check(self.checkpoint_every >= 0, "RLJobConfig.checkpoint_every", self.checkpoint_every, "must be >= 0",
              "use 0 to checkpoint only at the end")
        check(self.rollout.max_model_len >= 64 + self.sampling.max_tokens, "rollout.max_model_len",
              self.rollout.max_model_len, f"must leave room for sampling.max_tokens={self.sampling.max_tokens}",
              "raise rollout.max_model_len")
