"""The reward protocol: typed configs in a registry, batched scorers, and per-sample results with provenance.

A reward is chosen by config, never by code: every reward is a `RewardConfig` subclass registered under a
name in `REWARDS`, so a recipe field typed `RewardConfig` accepts `--set reward=arithmetic_verifier`. Its
`build()` returns a `Scorer` whose one method is batched:

    scorer = ArithmeticVerifierConfig().build()
    results = scorer.score([RewardInput(prompt="Q: 2+2=?\\nA:", completion=" 2+2=4; so 4\\n#### 4")])
    results[0].value, results[0].failed, results[0].reward_name, results[0].reward_version

Two things every user of verl/TRL has been bitten by are settled here, once, for every reward:

- *silent zero rewards*: a reward that raises, times out or returns a non-finite value does not produce
  0.0; it produces `RewardResult(value=None, failed=True, reason=...)`, which the loss excludes and the
  metrics count (`reward/failed_count`). `build()` always wraps the concrete scorer in that guard
  (`rewards.guard.GuardedScorer`), so a new reward cannot opt out of it.
- *unversioned rewards*: every result names the reward and its version, a hash of the config, of the
  source of the module implementing it and, for a learned model, of its weights.

Concrete rewards implement `make_scorer()` returning a `RawScorer`: an object with `name`, `version`,
`pass_threshold` and `score_batch(samples) -> list[float | Failure | RewardResult]`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar

from rewards.core import REWARDS, Failure, RawScorer, Scorer, config_version
from rewards.guard import GuardedScorer
from rewards.shadow import ShadowedReward
from rl_platform.config import check
from rl_platform.types import RewardInput, RewardResult

# Modules whose import registers the built-in rewards; `RewardConfig.registry()` imports them so a config
# tree can resolve `reward=<name>` even if the caller only imported `rewards.base`.
_BUILTIN_MODULES = (
    "rewards.verifiers",
    "rewards.python_function",
    "rewards.combine",
    "rewards.reward_model",
    "rewards.remote",
    "rewards.code_verifier",
    "rewards.answer_match",
    "rewards.reasoning_gym",
)


@dataclass(kw_only=True, slots=True)
class RewardConfig:
    """Base of every reward config; pick a subclass by registered name (`--set reward=<name>`).

    Example:
        scorer = REWARDS.get("arithmetic_verifier")().build()
    """

    registered_name: ClassVar[str]

    timeout_s: float | None = 60.0
    """Per-batch wall-clock limit; a batch that takes longer has every sample failed ("timeout"). None: no limit."""
    shadow: RewardConfig | None = None
    """A second reward that scores every sample for comparison only (metrics `reward/shadow_*`)."""

    def __post_init__(self) -> None:
        where = f"{type(self).__name__}.timeout_s"
        check(self.timeout_s is None or self.timeout_s > 0, where, self.timeout_s, "must be > 0 or None",
              "give a positive number of seconds, or None for no limit")

    @classmethod
    def registry(cls) -> dict[str, type]:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        return REWARDS.classes()

    def make_scorer(self) -> RawScorer:
        raise NotImplementedError(f"{type(self).__name__} must implement make_scorer()")

    def build(self) -> Scorer:
        """The guarded scorer (and its shadow, if configured); see the module docstring for why always guarded."""
        scorer: Scorer = GuardedScorer(self.make_scorer(), timeout_s=self.timeout_s)
        if self.shadow is not None:
            scorer = ShadowedReward(primary=scorer, shadow=self.shadow.build())
        return scorer


__all__ = [
    "REWARDS",
    "Failure",
    "RawScorer",
    "RewardConfig",
    "RewardInput",
    "RewardResult",
    "Scorer",
    "config_version",
]
