"""LoRA on the routed-expert stacks, one low-rank pair per expert, applied to the tokens routed to it.

Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim, N = T * K token copies, R LoRA rank.

Our routed experts are three 3-D parameters per MoE layer (w_gate_EFD, w_up_EFD [E, F, D], w_down_EDF
[E, D, F]); peft's `nn.Linear` LoRA cannot target them. Expert e computes, with s = alpha / R (or alpha / sqrt(R)
with rsLoRA) and dropout on the LoRA input only:

    [gate | up](x) = [W_gate[e] | W_up[e]] x + s * B_gu[e] A_gu[e] drop(x)       A_gu [E, R, D], B_gu [E, 2F, R]
    down(h)        = W_down[e] h + s * B_d[e] A_d[e] drop(h)                      A_d  [E, R, F], B_d  [E, D, R]

gate and up share one pair on their concatenation, as peft does on Hugging Face's fused `experts.gate_up_proj`,
so the exported adapter is exactly that layout (rl_platform/lora_export.py). B starts at zero: at step 0 the
adapted model is the base model.

Why per-expert pairs on the routed tokens, and not peft's `target_parameters` (which parametrises the stack as
W + s * B A and runs the unchanged expert op): the parametrisation materialises a full [E, F, D] effective stack
per matrix on every forward and keeps it for the backward, and computes the weight gradient of the whole stack;
here the low-rank terms cost N * R * (D + F) and the frozen stacks get no gradient. It also allows LoRA dropout,
which peft's parameter wrapper refuses, and it leaves the MoE module unwrapped (peft's wrapper hides the
module's router and aux-loss attributes the decoder reads). Measured in benchmarks/lora_expert_targeting.py;
docs/lora_and_elastic_rl.md, 'Routed experts'.

All matmuls are `torch._grouped_mm` over the expert-sorted token copies, fp32 inside (the routed-expert op's CPU
path does the same).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.moe_experts.reference import permute_tokens_reference
from rl_platform.model.moe import routed_experts


class ExpertLoRA(nn.Module):
    """Per-expert LoRA pairs of one MoE layer; attach as `moe.expert_adapter` (rl_platform/model/moe.py).

    Example:
        moe.expert_adapter = ExpertLoRA(num_experts=32, dim=128, ffn_dim=64, rank=8, alpha=16.0)
        y_TD, routing = moe(x_TD)     # routed experts now include the low-rank terms
    """

    def __init__(self, *, num_experts: int, dim: int, ffn_dim: int, rank: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False) -> None:
        super().__init__()
        e, d, f, r = num_experts, dim, ffn_dim, rank
        self.rank = rank
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.A_gu_ERD = nn.Parameter(torch.empty(e, r, d))
        self.B_gu_E2FR = nn.Parameter(torch.zeros(e, 2 * f, r))
        self.A_d_ERF = nn.Parameter(torch.empty(e, r, f))
        self.B_d_EDR = nn.Parameter(torch.zeros(e, d, r))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        """False runs the frozen base experts only (the KL reference)."""
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # peft's default: A ~ kaiming-uniform(a=sqrt(5)) per [R, in] matrix, B = 0
        for A in (self.A_gu_ERD, self.A_d_ERF):
            for e in range(A.shape[0]):
                nn.init.kaiming_uniform_(A[e], a=math.sqrt(5))
        self.B_gu_E2FR.zero_()
        self.B_d_EDR.zero_()

    def delta_stacks(self) -> tuple[Tensor, Tensor, Tensor]:
        """(dW_gate_EFD, dW_up_EFD, dW_down_EDF): s * B A per expert, in float32 (what merging adds)."""
        gu = torch.bmm(self.B_gu_E2FR.float(), self.A_gu_ERD.float()) * self.scaling
        f = gu.shape[1] // 2
        return gu[:, :f], gu[:, f:], torch.bmm(self.B_d_EDR.float(), self.A_d_ERF.float()) * self.scaling

    def forward(self, x_TD: Tensor, topk_ids_TK: Tensor, gates_TK: Tensor, moe: nn.Module) -> Tensor:
        """y_TD of the routed experts of `moe` (its frozen stacks plus this layer's low-rank terms)."""
        if not self.enabled:  # the base model exactly as it computes without adapters (the KL reference)
            return routed_experts(x_TD, topk_ids_TK, gates_TK, moe.w_gate_EFD, moe.w_up_EFD, moe.w_down_EDF)
        return grouped_routed_experts(x_TD, topk_ids_TK, gates_TK, moe, self)


def grouped_routed_experts(x_TD: Tensor, topk_ids_TK: Tensor, gates_TK: Tensor, moe: nn.Module,
                           lora: ExpertLoRA | None = None) -> Tensor:
    """y_TD = sum_k gate * FFN_e(x) over the expert-sorted token copies, with `lora`'s low-rank terms if given."""
    ids_TK = topk_ids_TK.clamp_min(0)  # unused slots (-1, a smaller k) carry gate 0, as in the base op
    num_tokens, top_k = ids_TK.shape
    copy_ids_N, tokens_per_expert_E = permute_tokens_reference(ids_TK, moe.w_gate_EFD.shape[0])
    ends_E = torch.cumsum(tokens_per_expert_E, 0).to(torch.int32)
    token_N = copy_ids_N // top_k
    x_ND = x_TD.float()[token_N]

    def grouped(a_NM: Tensor, w_EPM: Tensor) -> Tensor:  # rows of expert e times w[e].T
        return torch._grouped_mm(a_NM, w_EPM.float().transpose(1, 2), offs=ends_E)

    gate_NF = grouped(x_ND, moe.w_gate_EFD)
    up_NF = grouped(x_ND, moe.w_up_EFD)
    if lora is not None:
        delta_N2F = grouped(grouped(lora.dropout(x_ND), lora.A_gu_ERD), lora.B_gu_E2FR) * lora.scaling
        gate_NF = gate_NF + delta_N2F[:, : gate_NF.shape[1]]
        up_NF = up_NF + delta_N2F[:, gate_NF.shape[1]:]
    hidden_NF = F.silu(gate_NF) * up_NF
    out_ND = grouped(hidden_NF, moe.w_down_EDF)
    if lora is not None:
        out_ND = out_ND + grouped(grouped(lora.dropout(hidden_NF), lora.A_d_ERF), lora.B_d_EDR) * lora.scaling
    # the product also makes the gradient reaching the grouped matmuls contiguous (their CPU backward rejects an
    # expanded one)
    weight_N = gates_TK.reshape(-1)[copy_ids_N].float()
    y_TD = torch.zeros(num_tokens, x_TD.shape[1], dtype=torch.float32, device=x_TD.device).index_add(
        0, token_N, out_ND * weight_N[:, None])
    return y_TD.to(x_TD.dtype)
