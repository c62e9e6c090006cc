"""Reference (specification and CPU path) for the routed-expert FFN block of an MoE layer.

Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim, N = T * K token copies.

y_TD[t] = sum_k topk_weights_TK[t, k] * FFN_{topk_ids_TK[t, k]}(x_TD[t]),
FFN_e(x) = w_down_EDF[e] @ (silu(w_gate_EFD[e] @ x) * (w_up_EFD[e] @ x))   (weights stored like nn.Linear: [out, in]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def permute_tokens_reference(topk_ids_TK: Tensor, num_experts: int) -> tuple[Tensor, Tensor]:
    """Returns (copy_ids_N, tokens_per_expert_E): the flat copy index t*K + k of each row after grouping by expert.

    Stable: within an expert, copies keep token order (the Triton op must reproduce this order exactly).
    """
    flat_ids_N = topk_ids_TK.reshape(-1)
    copy_ids_N = torch.sort(flat_ids_N, stable=True).indices
    tokens_per_expert_E = torch.bincount(flat_ids_N, minlength=num_experts)
    return copy_ids_N, tokens_per_expert_E


def moe_experts_reference(
    x_TD: Tensor,
    topk_ids_TK: Tensor,
    topk_weights_TK: Tensor,
    w_gate_EFD: Tensor,
    w_up_EFD: Tensor,
    w_down_EDF: Tensor,
) -> Tensor:
    """Returns y_TD (dtype of x_TD): the obviously-correct loop over experts, fp32 inside.

    Differentiable w.r.t. x_TD, topk_weights_TK and the three weight tensors through ordinary autograd.
    """
    # Group the T*K token copies by expert with one stable sort, run each expert on its contiguous slice, and
    # scatter-add once: the same sum as a per-expert loop with index_add, without E full-size copies of y.
    num_tokens, top_k = topk_ids_TK.shape
    copy_ids_N, tokens_per_expert_E = permute_tokens_reference(topk_ids_TK, w_gate_EFD.shape[0])
    token_N = copy_ids_N // top_k
    x_ND = x_TD.float()[token_N]
    out_chunks = []
    start = 0
    for expert, count in enumerate(tokens_per_expert_E.tolist()):
        if count == 0:
            continue
        rows = x_ND[start:start + count]
        hidden = F.silu(rows @ w_gate_EFD[expert].float().T) * (rows @ w_up_EFD[expert].float().T)
        out_chunks.append(hidden @ w_down_EDF[expert].float().T)
        start += count
    if not out_chunks:
        return torch.zeros_like(x_TD)
    weight_N = topk_weights_TK.reshape(-1)[copy_ids_N].float()
    out_ND = torch.cat(out_chunks) * weight_N[:, None]
    y_TD = torch.zeros(num_tokens, x_TD.shape[1], dtype=torch.float32, device=x_TD.device).index_add(
        0, token_N, out_ND)
    return y_TD.to(x_TD.dtype)
