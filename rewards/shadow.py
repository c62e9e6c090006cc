"""Shadow scoring: the primary reward is what the loss sees; the shadow scores the same samples and its
result rides along as `RewardResult.shadow`. A failing or crashing shadow never touches the primary value.
This is how a new reward model is A/B-tested on live rollouts before it is trained on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rewards.core import RewardInput, RewardResult, Scorer


class ShadowedReward:
    """A primary scorer plus a shadow whose result is attached to each primary result, never mixed in.

    Example:
        scorer = ShadowedReward(primary=ArithmeticVerifierConfig().build(),
                                shadow=RewardModelConfig(path=Path("models/rm")).build())
        [r.shadow_value for r in scorer.score(samples)]
    """

    def __init__(self, primary: Scorer, shadow: Scorer) -> None:
        self.primary = primary
        self.shadow = shadow
        self.name = primary.name
        self.version = primary.version
        self.pass_threshold = primary.pass_threshold

    def score(self, samples: Sequence[RewardInput]) -> list[RewardResult]:
        primary = self.primary.score(samples)
        # Guarded scorers do not raise; this catch is for a hand-written Scorer passed in directly, whose
        # crash must not take the primary reward down with it.
        try:
            shadow = self.shadow.score(samples)
        except Exception as exc:  # noqa: BLE001
            shadow = [RewardResult(value=None, failed=True, reason=f"error: {type(exc).__name__}: {exc}",
                                   reward_name=self.shadow.name, reward_version=self.shadow.version)
                      for _ in samples]
        return [replace(p, shadow=s) for p, s in zip(primary, shadow, strict=True)]
