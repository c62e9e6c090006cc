"""Importance-ratio level: which ratio each response token's surrogate uses (`--set learner.loss.ratio=<name>`).

    token     r_it = pi(y_it) / pi_old(y_it)                                  (PPO / GRPO)
    sequence  s_i  = exp( mean_t log r_it )                                   (GSPO, arXiv:2507.18071)
              written per token as s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)]   (GSPO-token form)
The GSPO-token form has the value s_i at every token and, for a sequence-level advantage, the same gradient
as s_i itself (d s_it / d log pi(y_it) = s_i, and the per-token terms are averaged over the sequence). It is
written per token so a per-token weight (MISC's token mask) can switch a single token's gradient off while the
sequence keeps one ratio: a masked token then gets exactly zero gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rl_platform.config import Registry

RATIOS = Registry("importance-ratio level")


@dataclass(kw_only=True, slots=True)
class RatioConfig:
    """Base of the ratio levels."""

    @classmethod
    def registry(cls) -> dict[str, type]:
        return RATIOS.classes()

    def ratio(self, logprobs_BS: Tensor, old_logprobs_BS: Tensor, mask_BS: Tensor) -> Tensor:
        """[B, S] ratio at every position (only the masked-in positions are used)."""
        raise NotImplementedError


@RATIOS.register("token")
@dataclass(kw_only=True, slots=True)
class TokenRatio(RatioConfig):
    """Per-token ratio r_it (PPO, arXiv:1707.06347; GRPO, arXiv:2402.03300)."""

    def ratio(self, logprobs_BS: Tensor, old_logprobs_BS: Tensor, mask_BS: Tensor) -> Tensor:
        return torch.exp(logprobs_BS - old_logprobs_BS)


@RATIOS.register("sequence")
@dataclass(kw_only=True, slots=True)
class SequenceRatio(RatioConfig):
    """GSPO's length-normalised sequence ratio s_i in its per-token form (arXiv:2507.18071)."""

    def ratio(self, logprobs_BS: Tensor, old_logprobs_BS: Tensor, mask_BS: Tensor) -> Tensor:
        lengths_B = mask_BS.sum(-1).clamp_min(1)
        seq_log_ratio_B = ((logprobs_BS - old_logprobs_BS) * mask_BS).sum(-1) / lengths_B
        s_B1 = torch.exp(seq_log_ratio_B).detach()[:, None]
        return s_B1 * torch.exp(logprobs_BS - logprobs_BS.detach())
