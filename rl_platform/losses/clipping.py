"""Trust-region clipping of the surrogate (`--set learner.loss.clip=<name>`), per token, to be maximised:

    symmetric    min(r A, clip(r, 1 - eps, 1 + eps) A)                             PPO, arXiv:1707.06347
    clip_higher  min(r A, clip(r, 1 - low, 1 + high) A), high > low                DAPO, arXiv:2503.14476
    dual_clip    clip_higher, and for A < 0 additionally max(., c A), c > 1        arXiv:1912.09729
Dual clip bounds the loss of a negative-advantage token whose ratio has exploded (r >> 1): without it the
surrogate r A grows without bound and one stale token can dominate the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rl_platform.config import Registry, check

CLIPS = Registry("ratio clipping")


@dataclass(kw_only=True, slots=True)
class ClipConfig:
    """Base of the clipping variants."""

    @classmethod
    def registry(cls) -> dict[str, type]:
        return CLIPS.classes()

    def objective(self, ratio_BS: Tensor, adv_B1: Tensor) -> tuple[Tensor, Tensor]:
        """(surrogate_BS to maximise, clipped_BS: True where a clipping bound is the active branch)."""
        raise NotImplementedError


def _ppo(ratio_BS: Tensor, adv_B1: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    unclipped = ratio_BS * adv_B1
    clipped = ratio_BS.clamp(1.0 - low, 1.0 + high) * adv_B1
    return torch.minimum(unclipped, clipped), (clipped < unclipped).detach()


def _check_range(where: str, low: float, high: float, low_hint: str) -> None:
    check(0.0 < low < 1.0, f"{where}.low", low, "must be in (0, 1)", f"use {low_hint}")
    check(high > 0.0, f"{where}.high", high, "must be > 0", "use a value close to low (or above it: clip-higher)")


@CLIPS.register("symmetric")
@dataclass(kw_only=True, slots=True)
class SymmetricClip(ClipConfig):
    """PPO clipping with one range (default 0.2, the PPO paper's)."""

    eps: float = 0.2
    """Ratios are clipped to [1 - eps, 1 + eps]."""

    def __post_init__(self) -> None:
        check(0.0 < self.eps < 1.0, "SymmetricClip.eps", self.eps, "must be in (0, 1)", "use 0.2")

    def objective(self, ratio_BS: Tensor, adv_B1: Tensor) -> tuple[Tensor, Tensor]:
        return _ppo(ratio_BS, adv_B1, self.eps, self.eps)


@CLIPS.register("clip_higher")
@dataclass(kw_only=True, slots=True)
class ClipHigher(ClipConfig):
    """Asymmetric range: a higher upper bound lets low-probability tokens grow (DAPO's defaults 0.2 / 0.28)."""

    low: float = 0.2
    """Ratios are clipped at >= 1 - low."""
    high: float = 0.28
    """Ratios are clipped at <= 1 + high."""

    def __post_init__(self) -> None:
        _check_range("ClipHigher", self.low, self.high, "0.2 (GSPO: 3e-4)")

    def objective(self, ratio_BS: Tensor, adv_B1: Tensor) -> tuple[Tensor, Tensor]:
        return _ppo(ratio_BS, adv_B1, self.low, self.high)


@CLIPS.register("dual_clip")
@dataclass(kw_only=True, slots=True)
class DualClip(ClipConfig):
    """clip_higher plus the lower bound c * A for negative advantages (dual-clip PPO, c = 3 as in the paper)."""

    low: float = 0.2
    high: float = 0.28
    c: float = 3.0
    """For A < 0 the surrogate is at least c * A (c > 1)."""

    def __post_init__(self) -> None:
        _check_range("DualClip", self.low, self.high, "0.2")
        check(self.c > 1.0, "DualClip.c", self.c, "must be > 1", "use 3.0")

    def objective(self, ratio_BS: Tensor, adv_B1: Tensor) -> tuple[Tensor, Tensor]:
        surrogate, clipped = _ppo(ratio_BS, adv_B1, self.low, self.high)
        floor = self.c * adv_B1
        dual = (adv_B1 < 0) & (surrogate < floor)
        return torch.where(dual, floor.expand_as(surrogate), surrogate), clipped | dual.detach()
