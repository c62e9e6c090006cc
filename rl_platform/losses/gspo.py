"""GSPO (arXiv:2507.18071): the sequence-level, length-normalised importance ratio
    s_i = exp( mean_t (logp_t - old_logp_t) ),   L = - mean_i min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i)
Clip ranges are ~3 orders of magnitude tighter than GRPO's (paper: 3e-4 / 4e-4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl_platform.config import check
from rl_platform.losses.base import LOSSES, LossConfig, PolicyLossInputs, PolicyLossOutput, kl_k3


@LOSSES.register("gspo")
@dataclass(kw_only=True, slots=True)
class GSPOLossConfig(LossConfig):
    """Sequence-level clipped surrogate."""

    clip_low: float = 3e-4
    clip_high: float = 4e-4

    def __post_init__(self) -> None:
        check(0.0 < self.clip_low < 1.0, "GSPOLossConfig.clip_low", self.clip_low, "must be in (0, 1)", "use 3e-4")
        check(self.clip_high > 0.0, "GSPOLossConfig.clip_high", self.clip_high, "must be > 0", "use 4e-4")

    def loss(self, x: PolicyLossInputs) -> PolicyLossOutput:
        mask = x.mask_BS
        lengths = mask.sum(-1).clamp_min(1)
        seq_log_ratio = ((x.logprobs_BS - x.old_logprobs_BS) * mask).sum(-1) / lengths
        s = torch.exp(seq_log_ratio)
        adv = x.advantages_B
        unclipped = s * adv
        clipped = s.clamp(1.0 - self.clip_low, 1.0 + self.clip_high) * adv
        has_tokens = (mask.sum(-1) > 0).float()
        num_seqs = has_tokens.sum().clamp_min(1)
        loss = -(torch.minimum(unclipped, clipped) * has_tokens).sum() / num_seqs
        kl = 0.0
        if self.kl_coef > 0 and x.ref_logprobs_BS is not None:
            kl_tokens = (kl_k3(x.logprobs_BS, x.ref_logprobs_BS) * mask).sum() / mask.sum().clamp_min(1)
            loss = loss + self.kl_coef * kl_tokens
            kl = float(kl_tokens.detach())
        with torch.no_grad():
            clip_frac = float(((clipped < unclipped).float() * has_tokens).sum() / num_seqs)
        return PolicyLossOutput(loss=loss, clip_frac=clip_frac, kl_to_ref=kl, ratio_mean=float(s.mean()))
