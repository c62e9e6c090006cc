"""Policy-gradient objectives: composed pieces (ratio, clip, correction, aggregation) and named presets
(`--set learner.loss=<grpo|dr_grpo|gspo|gspo_icepop|misc>`). docs/rl_algorithms.md, 'RL objectives'."""

from rl_platform.losses.aggregation import AGGREGATIONS, ConstantNormaliser, SeqMeanTokenMean, TokenMean
from rl_platform.losses.base import LOSSES, LossConfig, PolicyLossInputs, PolicyLossOutput
from rl_platform.losses.clipping import CLIPS, ClipHigher, DualClip, SymmetricClip
from rl_platform.losses.corrections import (
    CORRECTIONS,
    IcePopCorrection,
    NoCorrection,
    SeqIcePopCorrection,
    TISCorrection,
)
from rl_platform.losses.grpo import DrGRPOLossConfig, GRPOLossConfig
from rl_platform.losses.gspo import GSPOIcePopLossConfig, GSPOLossConfig, MISCLossConfig
from rl_platform.losses.policy import PolicyLossConfig
from rl_platform.losses.ratio import RATIOS, SequenceRatio, TokenRatio

__all__ = [
    "AGGREGATIONS", "CLIPS", "CORRECTIONS", "LOSSES", "RATIOS", "ClipHigher", "ConstantNormaliser",
    "DrGRPOLossConfig", "DualClip", "GRPOLossConfig", "GSPOIcePopLossConfig", "GSPOLossConfig", "IcePopCorrection",
    "LossConfig", "MISCLossConfig", "NoCorrection", "PolicyLossConfig", "PolicyLossInputs", "PolicyLossOutput",
    "SeqIcePopCorrection", "SeqMeanTokenMean", "SequenceRatio", "SymmetricClip", "TISCorrection", "TokenMean",
    "TokenRatio",
]
