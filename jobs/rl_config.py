"""The RL job's config tree (what `jobs/recipes/rl.py` returns)."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.remote import ActorResources
from actors.rollout import RolloutEngineConfig
from rewards.base import RewardConfig
from rewards.verifiers import ArithmeticVerifierConfig
from rl_platform.checkpointing import CheckpointConfig
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
    pretrain_overrides: tuple[str, ...] = ()
    """`--set` overrides for that recipe, comma-separated (e.g. `run.seed=1,loop.num_steps=300`); they are part
    of the cache key, so each combination is pretrained once."""
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

    def __post_init__(self) -> None:
        check(self.num_prompts >= 1, "RLEvalConfig.num_prompts", self.num_prompts, "must be >= 1", "use 128-1024")
        check(self.every_steps >= 0 and self.num_samples >= 0, "RLEvalConfig.every_steps/num_samples",
              (self.every_steps, self.num_samples), "must be >= 0", "use 0 to turn either off")


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
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """How many checkpoints are kept and how a resume verifies them (docs/fault_tolerance.md)."""
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check(self.checkpoint_every >= 0, "RLJobConfig.checkpoint_every", self.checkpoint_every, "must be >= 0",
              "use 0 to checkpoint only at the end")

    def validate(self) -> None:
        """Rules across sections, checked once after every override (so their order never matters) by the CLI
        and `--dry-run`, before the base model, Ray or any engine starts."""
        s = self.sampling
        check(s.temperature > 0, "sampling.temperature", s.temperature,
              "must be > 0 for RL training (at 0 every sample of a group is the same, so no group carries a "
              "learning signal, and the loss scores tokens at this temperature)",
              "use 1.0; greedy held-out pass@1 is measured by every run anyway")
        check(s.num_samples_per_prompt >= 2, "sampling.num_samples_per_prompt", s.num_samples_per_prompt,
              "must be >= 2 for training (group-relative advantages need a group)", "use 4-16")
        longest = max(s.max_tokens, self.eval.max_tokens)
        check(self.rollout.max_model_len >= 64 + longest, "rollout.max_model_len", self.rollout.max_model_len,
              f"must leave room for a prompt and max(sampling.max_tokens, eval.max_tokens)={longest}",
              f"raise rollout.max_model_len to at least {64 + longest}")
        check(self.eval.num_samples == 0 or self.eval.temperature > 0, "eval.temperature", self.eval.temperature,
              f"must be > 0 when eval.num_samples={self.eval.num_samples} (sampled pass@1)",
              "use 1.0, or eval.num_samples=0 for greedy evaluation only")
        rows = self.loop.num_prompts_per_step * s.num_samples_per_prompt
        check(self.learner.num_minibatches <= rows, "learner.num_minibatches", self.learner.num_minibatches,
              f"must be <= the rollouts per step ({rows} = loop.num_prompts_per_step x "
              "sampling.num_samples_per_prompt)", "use 1 (on-policy) or a few")
