"""The elastic ultra-sparse MoE model shared by pretraining and the RL learner, and its HF interchange."""

from rl_platform.model.config import MoEModelConfig, SubModel
from rl_platform.model.transformer import ModelOutput, MoETransformer

__all__ = ["MoEModelConfig", "ModelOutput", "MoETransformer", "SubModel"]
