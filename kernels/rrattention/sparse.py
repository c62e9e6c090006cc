"""RRAttention's block-sparse attention in Triton: forward, block-sparse backward, and their custom op.

Shape legend: B batch, H query heads, G kv heads, L seq len, d head dim, nb = ceil(L / block_size) blocks.

`block_sparse_attention_triton` is differentiable through the custom op `kernels::rr_block_sparse_attention`
(forward kernel saves the per-row log-sum-exp; the backward kernels recompute probabilities block by block:
memory O(L d), work proportional to the selected blocks). It runs on any CUDA GPU and, for tests, on CPU
tensors in the Triton interpreter. Where FlexAttention is available, op.py prefers flex.py (faster on Hopper).
"""

from __future__ import annotations

import math

import torch
import triton
from torch import Tensor

from kernels._dispatch import launcher
from kernels.rrattention.flex import ascending_lists
from kernels.rrattention.kernel import (
    block_sparse_attention_dkdv_kernel,
    block_sparse_attention_dq_kernel,
    block_sparse_attention_kernel,
)
from kernels.rrattention.reference import num_blocks

# 64 x 64 sub-tiles of a 128 block: the FlashAttention-2 Triton tutorial's tile for d = 128 on Hopper-class GPUs
# (a 128 x 128 fp32 score tile plus a 128 x 128 accumulator would spill registers).
SUB_TILE = 64


def dot_precision(tensor: Tensor) -> str:
    # fp32 inputs get exact fp32 dots (fp32 models are test models; keeps them comparable to the reference at
    # 1e-5). bf16 inputs: tf32 for the fp32 estimate dot (a bf16 query is exact in tf32; only ksum rounds) and
    # native bf16 tensor-core dots in the attention (the precision flag only affects fp32 operands).
    return "ieee" if tensor.dtype == torch.float32 else "tf32"


def block_lists(block_mask_BHnn: Tensor) -> tuple[Tensor, Tensor]:
    """(block_ids_BHnn int32 selected key blocks ascending then the rest, block_counts_BHn int32)."""
    counts, indices = ascending_lists(block_mask_BHnn)
    return indices, counts


def _common_args(q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_size: int) -> tuple:
    heads, seq_len, head_dim = q_BHLd.shape[1:]
    return (heads, heads // k_BGLd.shape[1], seq_len, num_blocks(seq_len, block_size), head_dim,
            *q_BHLd.stride()[:3], *k_BGLd.stride()[:3], *v_BGLd.stride()[:3])  # fmt: skip


def _tiles(q_BHLd: Tensor, block_size: int) -> dict:
    sub = min(SUB_TILE, block_size)
    return dict(BLOCK=block_size, BLOCK_M=sub, BLOCK_N=sub, BLOCK_D=max(16, triton.next_power_of_2(q_BHLd.shape[3])),
                PRECISION=dot_precision(q_BHLd))  # fmt: skip


def _unit_stride(*tensors: Tensor) -> list[Tensor]:
    return [t if t.stride(-1) == 1 else t.contiguous() for t in tensors]


def sparse_forward(q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, block_size) -> tuple[Tensor, Tensor]:
    """(out_BHLd, lse_BHL fp32 base-2 log-sum-exp of the log2-scaled scores)."""
    q_BHLd, k_BGLd, v_BGLd = _unit_stride(q_BHLd, k_BGLd, v_BGLd)
    batch, heads, seq_len, head_dim = q_BHLd.shape
    block_ids_BHnn, block_counts_BHn = block_lists(block_mask_BHnn)
    out_BHLd = torch.empty(q_BHLd.shape, dtype=q_BHLd.dtype, device=q_BHLd.device)
    lse_BHL = torch.empty(batch, heads, seq_len, dtype=torch.float32, device=q_BHLd.device)
    tiles = _tiles(q_BHLd, block_size)
    grid = (num_blocks(seq_len, block_size) * (block_size // tiles["BLOCK_M"]), batch * heads)
    launcher(block_sparse_attention_kernel, q_BHLd)[grid](
        q_BHLd, k_BGLd, v_BGLd, out_BHLd, lse_BHL, block_ids_BHnn, block_counts_BHn,
        *_common_args(q_BHLd, k_BGLd, v_BGLd, block_size), math.log2(math.e) / math.sqrt(head_dim), **tiles,
        **({"num_warps": 4} if q_BHLd.is_cuda else {}),
    )  # fmt: skip
    return out_BHLd, lse_BHL


def sparse_backward(grad_out_BHLd, q_BHLd, k_BGLd, v_BGLd, out_BHLd, lse_BHL, block_mask_BHnn, block_size):
    """(grad_q_BHLd, grad_k_BGLd, grad_v_BGLd) over the selected blocks only."""
    q_BHLd, k_BGLd, v_BGLd = _unit_stride(q_BHLd, k_BGLd, v_BGLd)
    grad_out_BHLd = grad_out_BHLd.contiguous()
    batch, heads, seq_len, head_dim = q_BHLd.shape
    delta_BHL = (grad_out_BHLd.float() * out_BHLd.float()).sum(dim=-1)
    tiles = _tiles(q_BHLd, block_size)
    scales = (math.log2(math.e) / math.sqrt(head_dim), 1.0 / math.sqrt(head_dim))
    common = _common_args(q_BHLd, k_BGLd, v_BGLd, block_size)
    options = {"num_warps": 4} if q_BHLd.is_cuda else {}
    nb = num_blocks(seq_len, block_size)
    grad_q_BHLd = torch.empty(q_BHLd.shape, dtype=q_BHLd.dtype, device=q_BHLd.device)
    block_ids_BHnn, block_counts_BHn = block_lists(block_mask_BHnn)
    launcher(block_sparse_attention_dq_kernel, q_BHLd)[(nb * (block_size // tiles["BLOCK_M"]), batch * heads)](
        q_BHLd, k_BGLd, v_BGLd, grad_out_BHLd, lse_BHL, delta_BHL, grad_q_BHLd, block_ids_BHnn, block_counts_BHn,
        *common, *scales, **tiles, **options,
    )  # fmt: skip
    grad_k_BGLd, grad_v_BGLd = (torch.empty(k_BGLd.shape, dtype=k_BGLd.dtype, device=k_BGLd.device) for _ in range(2))
    q_block_ids_BHnn, q_block_counts_BHn = block_lists(block_mask_BHnn.transpose(-1, -2))
    grid = (nb * (block_size // tiles["BLOCK_N"]), batch * k_BGLd.shape[1])
    launcher(block_sparse_attention_dkdv_kernel, q_BHLd)[grid](
        q_BHLd, k_BGLd, v_BGLd, grad_out_BHLd, lse_BHL, delta_BHL, grad_k_BGLd, grad_v_BGLd, q_block_ids_BHnn,
        q_block_counts_BHn, *common, *scales, **tiles, **options,
    )  # fmt: skip
    return grad_q_BHLd, grad_k_BGLd, grad_v_BGLd


@torch.library.custom_op("kernels::rr_block_sparse_attention", mutates_args=())
def _sparse_op(q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_mask_BHnn: Tensor,
               block_size: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    return sparse_forward(q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, block_size)


@_sparse_op.register_fake
def _(q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, block_size):
    return torch.empty_like(q_BHLd), q_BHLd.new_empty(q_BHLd.shape[:3], dtype=torch.float32)


@torch.library.custom_op("kernels::rr_block_sparse_attention_backward", mutates_args=())
def _sparse_backward_op(grad_out_BHLd: Tensor, q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, out_BHLd: Tensor,
                        lse_BHL: Tensor, block_mask_BHnn: Tensor,
                        block_size: int) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return sparse_backward(grad_out_BHLd, q_BHLd, k_BGLd, v_BGLd, out_BHLd, lse_BHL, block_mask_BHnn, block_size)


@_sparse_backward_op.register_fake
def _(grad_out_BHLd, q_BHLd, k_BGLd, v_BGLd, out_BHLd, lse_BHL, block_mask_BHnn, block_size):
    return torch.empty_like(q_BHLd), torch.empty_like(k_BGLd), torch.empty_like(v_BGLd)


def _setup_context(ctx, inputs, output) -> None:
    q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, block_size = inputs
    out_BHLd, lse_BHL = output
    ctx.mark_non_differentiable(lse_BHL)
    ctx.save_for_backward(q_BHLd, k_BGLd, v_BGLd, out_BHLd, lse_BHL, block_mask_BHnn)
    ctx.block_size = block_size


def _backward(ctx, grad_out_BHLd, _grad_lse):
    q_BHLd, k_BGLd, v_BGLd, out_BHLd, lse_BHL, block_mask_BHnn = ctx.saved_tensors
    grads = _sparse_backward_op(grad_out_BHLd, q_BHLd, k_BGLd, v_BGLd, out_BHLd, lse_BHL, block_mask_BHnn,
                                ctx.block_size)  # fmt: skip
    return *grads, None, None


_sparse_op.register_autograd(_backward, setup_context=_setup_context)


def block_sparse_attention_triton(
    q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_mask_BHnn: Tensor, block_size: int
) -> Tensor:
    """out_BHLd via the Triton kernels; same contract as block_sparse_attention_reference; differentiable."""
    return _sparse_op(q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, int(block_size))[0]
