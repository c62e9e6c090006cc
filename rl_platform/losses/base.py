"""What every policy loss consumes and returns. Shapes: B sequences, S positions (target-aligned: position t
holds the log-probability of token t+1)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rl_platform.config import Registry

LOSSES = Registry("policy loss")


@dataclass(kw_only=True, slots=True)
class LossConfig:
    """Base of the policy-loss variants."""

    kl_coef: float = 0.0
    """Weight of the k3 KL estimate to the reference policy; 0 skips the reference forward entirely."""

    @classmethod
    def registry(cls) -> dict[str, type]:
        return LOSSES.classes()

    def loss(self, inputs: PolicyLossInputs) -> PolicyLossOutput:
        raise NotImplementedError


@dataclass
class PolicyLossInputs:
    logprobs_BS: Tensor
    """Current policy (with grad)."""
    old_logprobs_BS: Tensor
    """Learner's old policy (no grad), the importance-ratio denominator."""
    advantages_B: Tensor
    mask_BS: Tensor
    """1.0 at response positions of non-failed samples."""
    ref_logprobs_BS: Tensor | None = None
    num_global_tokens: int = 0
    """Response tokens in the whole optimizer step (token-level aggregation across micro-batches)."""


@dataclass
class PolicyLossOutput:
    loss: Tensor
    clip_frac: float
    kl_to_ref: float
    ratio_mean: float


def kl_k3(logprobs_BS: Tensor, ref_logprobs_BS: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - pi) - (ref - pi) - 1 (>= 0, unbiased)."""
    delta = ref_logprobs_BS - logprobs_BS
    return delta.exp() - delta - 1.0
