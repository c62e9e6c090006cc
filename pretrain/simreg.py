"""SimReg: similarity regularisation of final-layer hidden states (arXiv:2605.08809, docs/algorithms.md, 'SimReg').

Tokens with the same next-token label inside one document are pulled together and tokens with different
labels pushed apart. The paper's exact loss is not published; both candidate forms are here behind a flag:
- `supcon`:  -1/|A| sum_t 1/|P(t)| sum_{p in P(t)} log( exp(cos(h_t,h_p)/T) / sum_{a != t} exp(cos(h_t,h_a)/T) ),
             P(t) = other tokens of t's group with t's label, A = tokens with |P(t)| > 0;
- `cosine`:  mean over same-label pairs of (1 - cos) + mean over different-label pairs of max(0, cos).
A group is one document of one packed row, further cut into chunks of `chunk_size` positions for the
chunked variant (SimReg-chunk); chunk_size >= seq_len is the full variant. Total loss: CE + lambda * L_sim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rl_platform.config import check

IGNORE_INDEX = -100


@dataclass(kw_only=True, slots=True)
class SimRegConfig:
    """The SimReg auxiliary loss."""

    weight: float = 0.0
    """lambda; 0 disables SimReg (no extra compute)."""
    form: Literal["supcon", "cosine"] = "supcon"
    temperature: float = 0.1
    """SupCon temperature T."""
    chunk_size: int = 0
    """Positions per chunk (SimReg-chunk); 0 = the whole row (full variant)."""

    def __post_init__(self) -> None:
        check(self.weight >= 0, "SimRegConfig.weight", self.weight, "must be >= 0", "use 0 to disable")
        check(self.temperature > 0, "SimRegConfig.temperature", self.temperature, "must be > 0", "use 0.1")
        check(self.chunk_size >= 0, "SimRegConfig.chunk_size", self.chunk_size, "must be >= 0",
              "use 0 for the full variant")


def _chunk(x: Tensor, size: int, fill) -> Tensor:
    """[B, S, ...] -> [B * ceil(S/size), size, ...], padding the last chunk with `fill`."""
    b, s = x.shape[:2]
    n = -(-s // size)
    if n * size != s:
        pad = x.new_full((b, n * size - s, *x.shape[2:]), fill)
        x = torch.cat([x, pad], dim=1)
    return x.reshape(b * n, size, *x.shape[2:])


def simreg_loss(hidden_BSD: Tensor, labels_BS: Tensor, doc_ids_BS: Tensor | None, config: SimRegConfig) -> Tensor:
    """SimReg loss averaged over the anchors that have a positive (0 when none has)."""
    s = hidden_BSD.shape[1]
    size = config.chunk_size if 0 < config.chunk_size < s else s
    if doc_ids_BS is None:
        doc_ids_BS = torch.zeros_like(labels_BS)
    h = _chunk(F.normalize(hidden_BSD.float(), dim=-1), size, 0.0)
    labels = _chunk(labels_BS, size, IGNORE_INDEX)
    docs = _chunk(doc_ids_BS, size, -1)
    valid = labels != IGNORE_INDEX
    cos = h @ h.transpose(1, 2)                                   # [N, C, C]
    eye = torch.eye(size, dtype=torch.bool, device=h.device)[None]
    group = valid[:, :, None] & valid[:, None, :] & (docs[:, :, None] == docs[:, None, :]) & ~eye
    positive = group & (labels[:, :, None] == labels[:, None, :])
    negative = group & ~positive
    if config.form == "cosine":
        pull = ((1.0 - cos) * positive).sum() / positive.sum().clamp_min(1)
        push = (cos.clamp_min(0.0) * negative).sum() / negative.sum().clamp_min(1)
        return pull + push
    # A large finite fill instead of -inf: a row with no group member would otherwise give NaN gradients
    # through logsumexp (exp(-inf - -inf)); such rows are not anchors, so the fill value never matters.
    logits = (cos / config.temperature).masked_fill(~group, -1e9)
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    num_pos = positive.sum(-1)
    anchor = num_pos > 0
    per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(-1) / num_pos.clamp_min(1)
    return per_anchor[anchor].sum() / anchor.sum().clamp_min(1)


@torch.no_grad()
def label_cosine_stats(hidden_BSD: Tensor, labels_BS: Tensor, doc_ids_BS: Tensor) -> tuple[float, float]:
    """(mean cosine of same-label pairs, mean cosine of different-label pairs) within documents."""
    h = F.normalize(hidden_BSD.float(), dim=-1)
    cos = h @ h.transpose(1, 2)
    valid = labels_BS != IGNORE_INDEX
    eye = torch.eye(h.shape[1], dtype=torch.bool, device=h.device)[None]
    group = valid[:, :, None] & valid[:, None, :] & (doc_ids_BS[:, :, None] == doc_ids_BS[:, None, :]) & ~eye
    same = group & (labels_BS[:, :, None] == labels_BS[:, None, :])
    diff = group & ~same
    return float((cos * same).sum() / same.sum().clamp_min(1)), float((cos * diff).sum() / diff.sum().clamp_min(1))
