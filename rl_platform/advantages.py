"""Group-relative advantage estimators (`--set loop.advantage=<name>`): each completion is compared with the
other samples of its prompt.

    grpo     A_i = (r_i - mean(r)) / (std(r) + eps)                GRPO, arXiv:2402.03300
    dr_grpo  A_i =  r_i - mean(r)                                  Dr. GRPO, arXiv:2503.20783 (no std: no
                                                                   difficulty bias toward near-solved groups)
    rloo     A_i =  r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean)  RLOO, arXiv:2402.14740 (leave-one-out)

Failed samples (reward None) take no part: they are excluded from the group statistics and get no advantage
(the learner masks them out of the loss). A group whose rewards are all equal gives zero advantages (no
learning signal), which the caller counts. docs/rl_algorithms.md, 'Advantage estimators'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rl_platform.config import Registry, check

ADVANTAGES = Registry("advantage estimator")


@dataclass(kw_only=True, slots=True)
class AdvantageConfig:
    """Base of the estimators; `group()` maps one group's rewards to advantages."""

    @classmethod
    def registry(cls) -> dict[str, type]:
        return ADVANTAGES.classes()

    def group(self, rewards: Sequence[float | None]) -> list[float | None]:
        raise NotImplementedError

    def batch(self, rewards: Sequence[float | None], num_samples_per_prompt: int) -> list[float | None]:
        """Advantages of a flat batch made of consecutive groups of `num_samples_per_prompt`."""
        out: list[float | None] = []
        for start in range(0, len(rewards), num_samples_per_prompt):
            out += self.group(rewards[start:start + num_samples_per_prompt])
        return out


@ADVANTAGES.register("grpo")
@dataclass(kw_only=True, slots=True)
class GRPOAdvantage(AdvantageConfig):
    """Mean-centred and std-normalised within the group."""

    eps: float = 1e-6
    """Added to the std so a near-flat group does not blow up."""

    def __post_init__(self) -> None:
        check(self.eps > 0, "GRPOAdvantage.eps", self.eps, "must be > 0", "use 1e-6")

    def group(self, rewards: Sequence[float | None]) -> list[float | None]:
        return group_advantages(rewards, normalize_std=True, eps=self.eps)


@ADVANTAGES.register("dr_grpo")
@dataclass(kw_only=True, slots=True)
class DrGRPOAdvantage(AdvantageConfig):
    """Mean-centred only."""

    def group(self, rewards: Sequence[float | None]) -> list[float | None]:
        return group_advantages(rewards, normalize_std=False)


@ADVANTAGES.register("rloo")
@dataclass(kw_only=True, slots=True)
class RLOOAdvantage(AdvantageConfig):
    """Leave-one-out baseline: each sample against the mean of the others (unbiased REINFORCE baseline)."""

    def group(self, rewards: Sequence[float | None]) -> list[float | None]:
        valid = [r for r in rewards if r is not None]
        if len(valid) < 2:
            return [None if r is None else 0.0 for r in rewards]
        total = sum(valid)
        return [None if r is None else r - (total - r) / (len(valid) - 1) for r in rewards]


def group_advantages(rewards: Sequence[float | None], *, normalize_std: bool = True,
                     eps: float = 1e-6) -> list[float | None]:
    valid = [r for r in rewards if r is not None]
    if not valid:
        return [None] * len(rewards)
    mean = sum(valid) / len(valid)
    std = math.sqrt(sum((r - mean) ** 2 for r in valid) / len(valid))
    scale = (std + eps) if normalize_std else 1.0
    return [None if r is None else (r - mean) / scale for r in rewards]
