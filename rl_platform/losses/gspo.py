"""GSPO-family presets: the sequence-level, length-normalised importance ratio (GSPO, arXiv:2507.18071)

    s_i = exp( mean_t (logp_it - old_logp_it) ),   J = mean_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)
    gspo         clip [1 - 3e-4, 1 + 4e-4] (the paper's), sequence-mean of token-means
    gspo_icepop  gspo with the sequence-level IcePop mask on the train-inference ratio (ERNIE 5.0 Eq. 2)
    misc         gspo with the token-level IcePop mask (ERNIE 5.0 Eq. 3, MISC / "Mixed-IcePop",
                 arXiv:2602.04705): a token outside [alpha, beta] drops out, its sequence keeps training
ERNIE 5.0 does not publish alpha, beta or eps; the defaults are IcePop's [0.5, 5.0] and GSPO's clip range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rl_platform.losses.aggregation import AggregationConfig, SeqMeanTokenMean
from rl_platform.losses.base import LOSSES
from rl_platform.losses.clipping import ClipConfig, ClipHigher
from rl_platform.losses.corrections import CorrectionConfig, IcePopCorrection, SeqIcePopCorrection
from rl_platform.losses.policy import PolicyLossConfig
from rl_platform.losses.ratio import RatioConfig, SequenceRatio


def _gspo_clip() -> ClipHigher:
    return ClipHigher(low=3e-4, high=4e-4)


@LOSSES.register("gspo")
@dataclass(kw_only=True, slots=True)
class GSPOLossConfig(PolicyLossConfig):
    """Sequence-level clipped surrogate."""

    ratio: RatioConfig = field(default_factory=SequenceRatio)
    clip: ClipConfig = field(default_factory=_gspo_clip)
    aggregation: AggregationConfig = field(default_factory=SeqMeanTokenMean)


@LOSSES.register("gspo_icepop")
@dataclass(kw_only=True, slots=True)
class GSPOIcePopLossConfig(GSPOLossConfig):
    """GSPO with a sequence-level train-inference mask."""

    correction: CorrectionConfig = field(default_factory=SeqIcePopCorrection)


@LOSSES.register("misc")
@dataclass(kw_only=True, slots=True)
class MISCLossConfig(GSPOLossConfig):
    """MISC: GSPO's sequence ratio times a token-level train-inference mask."""

    correction: CorrectionConfig = field(default_factory=IcePopCorrection)
