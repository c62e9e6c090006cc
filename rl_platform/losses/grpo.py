"""GRPO-family presets: token-level ratios.

    grpo     token ratio, DAPO clip-higher [1 - 0.2, 1 + 0.28], token-mean aggregation (DAPO, arXiv:2503.14476;
             GRPO, arXiv:2402.03300). Token-level aggregation: every response token weighs the same, so long
             answers are not down-weighted.
    dr_grpo  token ratio, symmetric clip 0.2, sums normalised by a constant per sequence (Dr. GRPO,
             arXiv:2503.20783); pair it with the `dr_grpo` advantage (no std normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rl_platform.losses.aggregation import AggregationConfig, ConstantNormaliser
from rl_platform.losses.base import LOSSES
from rl_platform.losses.clipping import ClipConfig, SymmetricClip
from rl_platform.losses.policy import PolicyLossConfig


@LOSSES.register("grpo")
@dataclass(kw_only=True, slots=True)
class GRPOLossConfig(PolicyLossConfig):
    """Token-level clipped surrogate with clip-higher and token-mean aggregation (the defaults of the base)."""


@LOSSES.register("dr_grpo")
@dataclass(kw_only=True, slots=True)
class DrGRPOLossConfig(PolicyLossConfig):
    """Dr. GRPO: no length normalisation (constant normaliser), symmetric PPO clip."""

    clip: ClipConfig = field(default_factory=SymmetricClip)
    aggregation: AggregationConfig = field(default_factory=ConstantNormaliser)
