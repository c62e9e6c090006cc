"""Rewards: a registry of typed reward configs whose scorers are batched, guarded and versioned.

Swapping a reward is a change of recipe: every reward is a `RewardConfig` registered by name (see
`rewards.base`). Built-ins:

    arithmetic_verifier  arithmetic_format  length_penalty      rule-based (rewards.verifiers)
    python_function                                             a user's TRL-style fn (rewards.python_function)
    weighted                                                    weighted sum (rewards.combine)
    reward_model                                                HF sequence classifier (rewards.reward_model)
    remote                                                      HTTP client of rewards.serve (rewards.remote)
    python_code_verifier                                        runs code in rewards.sandbox

Heavy dependencies (torch, transformers, httpx) are imported when a scorer is built, not here.
"""

from rewards.base import REWARDS, Failure, RewardConfig, RewardInput, RewardResult, Scorer, config_version
from rewards.code_verifier import PythonCodeVerifierConfig
from rewards.combine import ShadowedReward, WeightedComponent, WeightedConfig
from rewards.metrics import reward_metrics
from rewards.python_function import CallableReward, PythonFunctionConfig
from rewards.remote import RemoteRewardConfig
from rewards.reward_model import RewardModelConfig
from rewards.verifiers import ArithmeticFormatConfig, ArithmeticVerifierConfig, LengthPenaltyConfig

__all__ = [
    "REWARDS",
    "ArithmeticFormatConfig",
    "ArithmeticVerifierConfig",
    "CallableReward",
    "Failure",
    "LengthPenaltyConfig",
    "PythonCodeVerifierConfig",
    "PythonFunctionConfig",
    "RemoteRewardConfig",
    "RewardConfig",
    "RewardInput",
    "RewardModelConfig",
    "RewardResult",
    "Scorer",
    "ShadowedReward",
    "WeightedComponent",
    "WeightedConfig",
    "config_version",
    "reward_metrics",
]
