"""Policy-gradient objectives, one per file, each with its Config (selected with `--set learner.loss=<name>`)."""

from rl_platform.losses.base import LOSSES, LossConfig, PolicyLossInputs, PolicyLossOutput
from rl_platform.losses.grpo import GRPOLossConfig
from rl_platform.losses.gspo import GSPOLossConfig

__all__ = ["LOSSES", "GRPOLossConfig", "GSPOLossConfig", "LossConfig", "PolicyLossInputs", "PolicyLossOutput"]
