"""Reference (specification and CPU path) for RRAttention block-sparse prefill attention (arXiv:2602.05853).

Shape legend: B batch, H query heads, G kv heads (GQA: query head h reads kv head h // (H // G)), L seq len,
d head dim, S stride, Q number of strides of the padded sequence (= nb * block / S), nb number of blocks.

Algorithm (official PaddleFleet Research/RRAttention, prefill only; decode stays dense):
  1. round-robin query sampling: head h represents stride i by query token i*S + (h mod S);
  2. stride-summed keys: ksum[j] = sum of the S keys of stride j; score = q . ksum / (S sqrt(d)) = q . mean(k)/sqrt(d);
  3. softmax over key strides, causal at stride granularity (key stride <= query stride);
  4. block scores: sum of probabilities over each (block/S) x (block/S) tile -> [B, H, nb, nb];
  5. top-tau selection per (head, query block): sink block 0 and the diagonal always; then blocks in descending
     score order while cumsum_before < tau * row_total; never above the diagonal;
  6. block-sparse causal attention with that mask.
Deliberate choices where the paper/code is silent or differs (each keeps the result safe, none changes the
defaults' behaviour on full blocks):
  a) the sequence is zero-padded to a multiple of `block_size`; a padded key adds 0 to its stride sum (so the
     last partial stride is still divided by S, as the official kernel does); a sampled query token >= L gives
     no probability row;
  b) a query block with no sampled query inside the sequence (only the last, partial block can be one) has no
     estimate, so it is kept dense rather than pruned blindly;
  c) tau >= 1 keeps every causal block exactly; the rule alone could drop a block whose probability rounds to 0
     in the fp32 cumsum, and tau = 1 is the "sparsity off" switch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def num_blocks(seq_len: int, block_size: int) -> int:
    return -(-seq_len // block_size)


def _pad_seq(x_BHLd: Tensor, padded_len: int) -> Tensor:
    return F.pad(x_BHLd, (0, 0, 0, padded_len - x_BHLd.shape[2]))


def stride_key_sums(k_BGLd: Tensor, block_size: int, stride: int) -> Tensor:
    """ksum_BGQd (fp32): sum of the `stride` keys of each stride of the zero-padded sequence."""
    batch, kv_heads, seq_len, head_dim = k_BGLd.shape
    padded_len = num_blocks(seq_len, block_size) * block_size
    k_BGLd = _pad_seq(k_BGLd.float(), padded_len)
    return k_BGLd.reshape(batch, kv_heads, padded_len // stride, stride, head_dim).sum(dim=3)


def sampled_query_tokens(num_heads: int, num_strides: int, stride: int, device=None) -> Tensor:
    """tok_HQ: the query token that head h uses for stride i, i*S + (h mod S) (the round-robin shift)."""
    heads_H = torch.arange(num_heads, device=device)
    return torch.arange(num_strides, device=device)[None, :] * stride + (heads_H % stride)[:, None]


def rr_estimate_reference(q_BHLd: Tensor, k_BGLd: Tensor, block_size: int, stride: int) -> Tensor:
    """block_scores_BHnn (fp32): estimated attention mass of each (query block, key block); zeros above diagonal.

    Each valid row of sampled queries contributes probability 1 in total, so a row of block scores sums to the
    number of sampled queries of that query block that lie inside the sequence.
    """
    batch, num_heads, seq_len, head_dim = q_BHLd.shape
    nb = num_blocks(seq_len, block_size)
    num_strides = nb * block_size // stride
    group = num_heads // k_BGLd.shape[1]
    ksum_BHQd = stride_key_sums(k_BGLd, block_size, stride).repeat_interleave(group, dim=1)
    tok_HQ = sampled_query_tokens(num_heads, num_strides, stride, q_BHLd.device)
    q_BHLd = _pad_seq(q_BHLd.float(), nb * block_size)
    q_BHQd = torch.gather(q_BHLd, 2, tok_HQ[None, :, :, None].expand(batch, -1, -1, head_dim))
    scores_BHQQ = (q_BHQd @ ksum_BHQd.transpose(2, 3)) / (stride * math.sqrt(head_dim))
    causal_QQ = torch.ones(num_strides, num_strides, dtype=torch.bool, device=q_BHLd.device).tril()
    probs_BHQQ = torch.softmax(scores_BHQQ.masked_fill(~causal_QQ, float("-inf")), dim=-1)
    probs_BHQQ = probs_BHQQ * (tok_HQ < seq_len)[None, :, :, None]
    per_block = block_size // stride
    return probs_BHQQ.reshape(batch, num_heads, nb, per_block, nb, per_block).sum(dim=(3, 5))


def select_blocks(block_scores_BHnn: Tensor, tau: float) -> Tensor:
    """block_mask_BHnn (bool): top-tau blocks per (head, query block) plus sink and diagonal; causal.

    Shared by the Triton path and the reference (selection is a sort over nb entries, cheap next to attention).
    """
    nb = block_scores_BHnn.shape[-1]
    device = block_scores_BHnn.device
    causal_nn = torch.ones(nb, nb, dtype=torch.bool, device=device).tril()
    if tau >= 1.0:
        return causal_nn.expand(block_scores_BHnn.shape).clone()
    scores = torch.where(causal_nn, block_scores_BHnn.float(), -1.0)  # probabilities are >= 0: -1 sorts last
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    mass = sorted_scores.clamp(min=0.0)
    cumsum = torch.cumsum(mass, dim=-1)
    row_total = cumsum[..., -1:]
    cumsum_before = cumsum - mass
    keep_sorted = (cumsum_before < tau * row_total) & (sorted_scores >= 0.0)
    mask = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    mandatory_nn = torch.eye(nb, dtype=torch.bool, device=device)
    mandatory_nn[:, 0] = True
    no_estimate = row_total <= 0.0  # choice (b) above: keep such a query block dense
    return (mask | mandatory_nn | no_estimate) & causal_nn


def block_sparsity(block_mask_BHnn: Tensor) -> Tensor:
    """1 - selected / causal-visible blocks over all (batch, head) rows, as reported by the paper (fp32 scalar)."""
    nb = block_mask_BHnn.shape[-1]
    visible = block_mask_BHnn.shape[0] * block_mask_BHnn.shape[1] * nb * (nb + 1) // 2
    return 1.0 - block_mask_BHnn.sum(dtype=torch.float32) / visible


def block_sparse_attention_reference(
    q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_mask_BHnn: Tensor, block_size: int
) -> Tensor:
    """out_BHLd (dtype of q): causal softmax attention where token i sees key j iff j <= i and the block pair is set."""
    seq_len, head_dim = q_BHLd.shape[2], q_BHLd.shape[3]
    group = q_BHLd.shape[1] // k_BGLd.shape[1]
    k_BHLd = k_BGLd.float().repeat_interleave(group, dim=1)
    v_BHLd = v_BGLd.float().repeat_interleave(group, dim=1)
    block_L = torch.arange(seq_len, device=q_BHLd.device) // block_size
    allowed_BHLL = block_mask_BHnn[:, :, block_L][:, :, :, block_L]
    allowed_BHLL = allowed_BHLL & torch.ones(seq_len, seq_len, dtype=torch.bool, device=q_BHLd.device).tril()
    scores_BHLL = (q_BHLd.float() @ k_BHLd.transpose(2, 3)) / math.sqrt(head_dim)
    probs_BHLL = torch.softmax(scores_BHLL.masked_fill(~allowed_BHLL, float("-inf")), dim=-1)
    return (probs_BHLL @ v_BHLd).to(q_BHLd.dtype)


def rr_attention_reference(
    q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_size: int, stride: int, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(out_BHLd, block_mask_BHnn, sparsity): estimate, select, then block-sparse attention, all in PyTorch."""
    block_scores_BHnn = rr_estimate_reference(q_BHLd, k_BGLd, block_size, stride)
    block_mask_BHnn = select_blocks(block_scores_BHnn, tau)
    out_BHLd = block_sparse_attention_reference(q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, block_size)
    return out_BHLd, block_mask_BHnn, block_sparsity(block_mask_BHnn)


def rr_estimate_flops(
    batch: int, num_heads: int, num_kv_heads: int, seq_len: int, head_dim: int, block_size: int, stride: int
) -> dict[str, int]:
    """Multiply-adds of the estimate, counted term by term as the estimate performs them.

    key_sums: one add per key element (O(L d), linear); scores: one multiply-add per (query stride, causal key
    stride, dim) triple, Q(Q+1)/2 * d per head (O(L^2 d / S^2)); softmax_and_block_sum: one exp and one add per
    causal (query stride, key stride) pair. Compare with dense causal attention's ~L(L+1)/2 * d multiply-adds for
    QK^T alone: the ratio is ~1/S^2.
    """
    num_strides = num_blocks(seq_len, block_size) * block_size // stride
    causal_pairs = num_strides * (num_strides + 1) // 2
    counts = {
        "key_sums": batch * num_kv_heads * num_strides * stride * head_dim,
        "scores": batch * num_heads * causal_pairs * head_dim,
        "softmax_and_block_sum": batch * num_heads * causal_pairs * 2,
    }
    counts["total"] = sum(counts.values())
    return counts
