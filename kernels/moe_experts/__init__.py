"""Routed-expert SwiGLU FFN of an MoE layer: permutation by expert, grouped matmuls, weighted un-permutation."""

from kernels.moe_experts.grouped_cpu import moe_experts_grouped_cpu
from kernels.moe_experts.op import (
    moe_backend,
    moe_experts,
    moe_experts_backward_triton,
    moe_experts_forward_triton,
    permute_tokens_triton,
    select_backend,
)
from kernels.moe_experts.reference import moe_experts_reference, permute_tokens_reference

__all__ = [
    "moe_backend",
    "moe_experts",
    "moe_experts_backward_triton",
    "moe_experts_forward_triton",
    "moe_experts_grouped_cpu",
    "moe_experts_reference",
    "permute_tokens_reference",
    "permute_tokens_triton",
    "select_backend",
]
