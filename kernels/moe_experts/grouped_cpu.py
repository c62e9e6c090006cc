"""The routed-expert FFN on CPU through `torch._grouped_mm`: the reference's math without its per-expert loop.

Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim, N = T * K token copies.

Why it exists: the reference runs one Python iteration per expert and, in the backward, every slice
`x_ND[start:start + count]` materialises a full [N, D] gradient. Both grow with E, so at 128-256 fine-grained
experts the reference costs seconds per layer (forward + backward) where the work itself is a few milliseconds
(measured in `benchmarks/moe_cpu_experts.py`). The grouped matmul runs all experts in one call and its
backward touches each row once.

The data flow is the reference's step for step (same stable permutation, fp32 inside, one matmul per
expert, same weighted scatter-add); only the GEMM routine behind each expert's matmul may differ, so outputs
and gradients agree with the reference to float32 rounding (bit-exact at the pretraining shapes, a few ulp
at odd small shapes; tests/kernels/test_moe_experts_grouped_cpu.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.moe_experts.reference import permute_tokens_reference


def grouped_mm_available() -> bool:
    """Whether this torch build has the CPU grouped matmul (torch >= 2.8 has `torch._grouped_mm`)."""
    return hasattr(torch, "_grouped_mm")


def moe_experts_grouped_cpu(
    x_TD: Tensor,
    topk_ids_TK: Tensor,
    topk_weights_TK: Tensor,
    w_gate_EFD: Tensor,
    w_up_EFD: Tensor,
    w_down_EDF: Tensor,
) -> Tensor:
    """Returns y_TD (dtype of x_TD): `moe_experts_reference` to float32 rounding; fp32 inside."""
    num_tokens, top_k = topk_ids_TK.shape
    copy_ids_N, tokens_per_expert_E = permute_tokens_reference(topk_ids_TK, w_gate_EFD.shape[0])
    # group e owns rows [ends[e-1], ends[e]); an expert without tokens is an empty group
    group_ends_E = torch.cumsum(tokens_per_expert_E, 0).to(torch.int32)
    token_N = copy_ids_N // top_k
    x_ND = x_TD.float()[token_N]
    gate_NF = torch._grouped_mm(x_ND, w_gate_EFD.float().transpose(1, 2), offs=group_ends_E)
    up_NF = torch._grouped_mm(x_ND, w_up_EFD.float().transpose(1, 2), offs=group_ends_E)
    hidden_NF = F.silu(gate_NF) * up_NF
    out_ND = torch._grouped_mm(hidden_NF, w_down_EDF.float().transpose(1, 2), offs=group_ends_E)
    # The product makes the gradient reaching the grouped matmuls a fresh contiguous tensor: the CPU grouped
    # matmul's backward rejects an expanded (stride-0) gradient.
    weight_N = topk_weights_TK.reshape(-1)[copy_ids_N].float()
    y_TD = torch.zeros(num_tokens, x_TD.shape[1], dtype=torch.float32, device=x_TD.device).index_add(
        0, token_N, out_ND * weight_N[:, None])
    return y_TD.to(x_TD.dtype)
