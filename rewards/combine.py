"""Rewards made of rewards: a weighted sum (`weighted`) and shadow scoring (`ShadowedReward`).

Weighted: value = sum_i weight_i * value_i. A sample fails if any component fails it, because a partial
sum silently changes the reward's scale (the "silent zero" bug in another form). The per-component values
ride along in `RewardResult.components` for logging.

Shadow: the primary reward is what the loss sees; the shadow scores the same samples and its result is
attached as `RewardResult.shadow`. A failing or crashing shadow never touches the primary value. This is
how a new reward model is A/B-tested on live rollouts before it is trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rewards.base import REWARDS, RewardConfig, RewardInput, RewardResult, config_version
from rewards.shadow import ShadowedReward  # noqa: F401 - re-exported: shadow scoring is documented here
from rewards.verifiers import ArithmeticFormatConfig, ArithmeticVerifierConfig, LengthPenaltyConfig
from rl_platform.config import check


@dataclass(kw_only=True, slots=True)
class WeightedComponent:
    """One term of a weighted reward.

    Example:
        WeightedComponent(weight=0.2, reward=ArithmeticFormatConfig())
    """

    weight: float
    reward: RewardConfig
    label: str | None = None
    """Key in `RewardResult.components` and the metrics; defaults to the reward's registered name."""

    def key(self) -> str:
        return self.label or getattr(type(self.reward), "registered_name", type(self.reward).__name__)


def _default_components() -> tuple[WeightedComponent, ...]:
    return (
        WeightedComponent(weight=1.0, reward=ArithmeticVerifierConfig()),
        WeightedComponent(weight=0.2, reward=ArithmeticFormatConfig()),
        WeightedComponent(weight=1.0, reward=LengthPenaltyConfig()),
    )


@REWARDS.register("weighted")
@dataclass(kw_only=True, slots=True)
class WeightedConfig(RewardConfig):
    """Weighted sum of rewards; a sample fails if any component fails it.

    Example:
        WeightedConfig(components=(WeightedComponent(weight=1.0, reward=ArithmeticVerifierConfig()),
                                   WeightedComponent(weight=0.2, reward=ArithmeticFormatConfig())))
    """

    components: tuple[WeightedComponent, ...] = field(default_factory=_default_components)

    def __post_init__(self) -> None:
        RewardConfig.__post_init__(self)
        check(len(self.components) > 0, "WeightedConfig.components", self.components, "is empty",
              "give at least one WeightedComponent(weight=..., reward=...)")
        keys = [c.key() for c in self.components]
        check(len(set(keys)) == len(keys), "WeightedConfig.components", keys, "has duplicate keys",
              "give each repeated reward its own WeightedComponent.label")
        for component in self.components:
            check(component.reward.shadow is None, f"WeightedConfig.components[{component.key()}].shadow",
                  type(component.reward.shadow).__name__, "is set, but a component's shadow would be ignored",
                  "set `shadow` on the weighted config itself")

    def make_scorer(self) -> WeightedScorer:
        return WeightedScorer(self)


class WeightedScorer:
    """RawScorer of `weighted`: scores each component on the whole batch, then combines per sample."""

    pass_threshold = None

    def __init__(self, config: WeightedConfig) -> None:
        self.name = "weighted"
        self.parts = [(c.key(), c.weight, c.reward.build()) for c in config.components]
        self.version = config_version(config, *(f"{key}={scorer.version}" for key, _, scorer in self.parts))

    def score_batch(self, samples: Sequence[RewardInput]) -> list[RewardResult]:
        per_component = [(key, weight, scorer.score(samples)) for key, weight, scorer in self.parts]
        combined = []
        for i in range(len(samples)):
            values = {key: results[i].value for key, _, results in per_component}
            failures = [f"{key}: {results[i].reason}" for key, _, results in per_component if results[i].failed]
            if failures:
                combined.append(RewardResult(value=None, failed=True, reason="component " + "; ".join(failures),
                                             reward_name=self.name, reward_version=self.version,
                                             components=values))
            else:
                total = sum(weight * results[i].value for _, weight, results in per_component)
                combined.append(RewardResult(value=total, failed=False, reason=None, reward_name=self.name,
                                             reward_version=self.version, components=values))
        return combined
