"""GRPO with token-level aggregation and asymmetric clipping (DAPO's clip-higher when clip_high > clip_low).

    r_t = exp(logp_t - old_logp_t)
    L   = - sum_t mask_t * min(r_t A, clip(r_t, 1 - clip_low, 1 + clip_high) A) / num_global_tokens
          + kl_coef * sum_t mask_t * k3(logp_t, ref_logp_t) / num_global_tokens
Token-level (not sequence-mean) aggregation: every response token weighs the same, so long answers are not
down-weighted (DAPO, Dr. GRPO). Dividing by the step's global token count keeps gradient accumulation over
micro-batches equal to one big batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl_platform.config import check
from rl_platform.losses.base import LOSSES, LossConfig, PolicyLossInputs, PolicyLossOutput, kl_k3


@LOSSES.register("grpo")
@dataclass(kw_only=True, slots=True)
class GRPOLossConfig(LossConfig):
    """Token-level clipped surrogate."""

    clip_low: float = 0.2
    """Ratios are clipped at >= 1 - clip_low."""
    clip_high: float = 0.28
    """Ratios are clipped at <= 1 + clip_high (> clip_low is DAPO clip-higher)."""

    def __post_init__(self) -> None:
        check(0.0 < self.clip_low < 1.0, "GRPOLossConfig.clip_low", self.clip_low, "must be in (0, 1)", "use 0.2")
        check(self.clip_high > 0.0, "GRPOLossConfig.clip_high", self.clip_high, "must be > 0", "use 0.28")
        check(self.kl_coef >= 0.0, "GRPOLossConfig.kl_coef", self.kl_coef, "must be >= 0", "use 0 or ~1e-3")

    def loss(self, x: PolicyLossInputs) -> PolicyLossOutput:
        mask = x.mask_BS
        denom = max(1, x.num_global_tokens or int(mask.sum()))
        ratio = torch.exp(x.logprobs_BS - x.old_logprobs_BS)
        adv = x.advantages_B[:, None]
        unclipped = ratio * adv
        clipped = ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high) * adv
        loss = -(torch.minimum(unclipped, clipped) * mask).sum() / denom
        kl = 0.0
        if self.kl_coef > 0 and x.ref_logprobs_BS is not None:
            kl_tokens = (kl_k3(x.logprobs_BS, x.ref_logprobs_BS) * mask).sum() / denom
            loss = loss + self.kl_coef * kl_tokens
            kl = float(kl_tokens.detach())
        with torch.no_grad():
            n = mask.sum().clamp_min(1)
            clip_frac = float(((clipped < unclipped).float() * mask).sum() / n)
            ratio_mean = float((ratio * mask).sum() / n)
        return PolicyLossOutput(loss=loss, clip_frac=clip_frac, kl_to_ref=kl, ratio_mean=ratio_mean)
