"""Reference (specification and CPU path) for per-token log-probabilities and entropy from an LM head.

Shape legend: T tokens, D model dim, V vocab.

This materialises the full [T, V] logits in fp32; that is exactly what the Triton path avoids, and exactly why
this version is the obviously-correct spec it is compared against.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fused_logprobs_reference(
    hidden_TD: Tensor, lm_head_VD: Tensor, targets_T: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Returns (logprobs_T, entropy_T), both fp32, of softmax(hidden_TD @ lm_head_VD.T / temperature).

    logprobs_T[t] = log p_t(targets_T[t]); entropy_T[t] = -sum_v p_t(v) log p_t(v). Computed in fp32 whatever the
    input dtype, because RL ratios exp(trainer_logprobs - generator_logprobs) amplify logit rounding.
    Differentiable w.r.t. hidden_TD and lm_head_VD through ordinary autograd.
    """
    logits_TV = (hidden_TD.float() @ lm_head_VD.float().T) / temperature
    logp_TV = torch.log_softmax(logits_TV, dim=-1)
    logprobs_T = logp_TV.gather(1, targets_T.long()[:, None]).squeeze(1)
    entropy_T = -(logp_TV.exp() * logp_TV).sum(dim=-1)
    return logprobs_T, entropy_T
