"""RRAttention prefill op: Triton estimate -> top-tau block selection -> Triton block-sparse attention.

Shape legend: B batch, H query heads, G kv heads, L seq len, d head dim, nb = ceil(L / block_size) blocks.

`rr_attention` is what the model calls for long-context prefill (decode stays dense). On CUDA (or inside
`kernels.force_triton()`) it runs the custom op `kernels::rr_attention`; elsewhere it is
`rr_attention_reference`, so the CPU path is bit-exact with the spec by construction. RRAttention is a prefill
method; the Triton forward is block-sparse, but the backward (for a model that trains through it) re-runs the
reference block-masked attention under autograd with the forward's mask held fixed: exact gradients, but
O(L^2) memory per (batch, head). TODO(kernels): a block-sparse Triton backward (FlashAttention-2 style dq/dk/dv
over the same block lists) would make training through it as cheap as the forward.
"""

from __future__ import annotations

import math

import torch
import triton
from torch import Tensor

from kernels._dispatch import launcher, use_triton
from kernels.rrattention.kernel import block_sparse_attention_kernel, rr_estimate_kernel
from kernels.rrattention.reference import (
    block_sparse_attention_reference,
    block_sparsity,
    num_blocks,
    rr_attention_reference,
    select_blocks,
    stride_key_sums,
)

# Official defaults (PaddleFleet RRAttention README): block 128, stride 8, tau 0.95.
DEFAULT_BLOCK_SIZE = 128
DEFAULT_STRIDE = 8
DEFAULT_TAU = 0.95


def validate_rr_inputs(q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_size: int, stride: int, tau: float):
    """Raises ValueError naming the argument, the value and the fix."""
    where = "kernels.rrattention"
    if q_BHLd.dim() != 4 or k_BGLd.dim() != 4 or k_BGLd.shape != v_BGLd.shape:
        raise ValueError(
            f"{where}: expected q [B, H, L, d] and k, v [B, G, L, d] with equal shapes; got q {tuple(q_BHLd.shape)}, "
            f"k {tuple(k_BGLd.shape)}, v {tuple(v_BGLd.shape)}; transpose [B, L, H, d] inputs with .transpose(1, 2)."
        )
    (batch, heads, seq_len, head_dim), (kv_batch, kv_heads, kv_len, kv_dim) = q_BHLd.shape, k_BGLd.shape
    if seq_len < 1:
        raise ValueError(f"{where}: got an empty sequence (L=0) in q {tuple(q_BHLd.shape)}; skip attention for it.")
    if (batch, seq_len, head_dim) != (kv_batch, kv_len, kv_dim) or kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"{where}: q {tuple(q_BHLd.shape)} and k/v {tuple(k_BGLd.shape)} must share B, L, d and the number of "
            f"query heads must be a multiple of kv heads (GQA); prefill is self-attention over one sequence."
        )
    per_block = block_size // stride if stride > 0 else 0
    if stride < 1 or block_size % stride or per_block & (per_block - 1):
        raise ValueError(
            f"{where}: block_size={block_size} must be stride={stride} times a power of two (block/S strides per "
            f"block are tiled by the estimate kernel); use the defaults {DEFAULT_BLOCK_SIZE}/{DEFAULT_STRIDE}, or "
            f"e.g. 32/8 or 16/4 for small models."
        )
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"{where}: block_size={block_size} must be a power of two >= 16 (tl.dot tile); try 128.")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"{where}: tau={tau} must be in [0, 1]; 0.95 is the paper default, 1.0 disables sparsity.")


def _dot_precision(tensor: Tensor) -> str:
    # fp32 inputs get exact fp32 dots (fp32 models are test models; keeps them comparable to the reference at
    # 1e-5). bf16 inputs: tf32 for the fp32 estimate dot (a bf16 query is exact in tf32; only ksum rounds) and
    # native bf16 tensor-core dots in the attention (the precision flag only affects fp32 operands).
    return "ieee" if tensor.dtype == torch.float32 else "tf32"


def rr_estimate_triton(q_BHLd: Tensor, k_BGLd: Tensor, block_size: int, stride: int) -> Tensor:
    """block_scores_BHnn (fp32) computed by the Triton estimate kernel; same contract as rr_estimate_reference."""
    batch, heads, seq_len, head_dim = q_BHLd.shape
    nb = num_blocks(seq_len, block_size)
    per_block = block_size // stride
    ksum_BGQd = stride_key_sums(k_BGLd, block_size, stride).contiguous()
    num_strides = ksum_BGQd.shape[2]
    scores_BHnn = torch.zeros(batch, heads, nb, nb, dtype=torch.float32, device=q_BHLd.device)
    r_tile = max(per_block, 16)  # >= 16 rows for tl.dot; whole query blocks per program
    c_tile = max(per_block, 64)  # 64 key strides per step: fewer loop trips, still a small [r_tile, 64] tile
    grid = (triton.cdiv(num_strides, r_tile), batch * heads)
    launcher(rr_estimate_kernel, q_BHLd)[grid](
        q_BHLd, ksum_BGQd, scores_BHnn, heads, heads // k_BGLd.shape[1], seq_len, num_strides, nb, head_dim,
        *q_BHLd.stride(), math.log2(math.e) / (stride * math.sqrt(head_dim)),
        STRIDE=stride, R=per_block, R_TILE=r_tile, C_TILE=c_tile,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)), PRECISION=_dot_precision(q_BHLd),
    )  # fmt: skip
    return scores_BHnn


def block_lists(block_mask_BHnn: Tensor) -> tuple[Tensor, Tensor]:
    """(block_ids_BHnn int32 selected key blocks ascending then the rest, block_counts_BHn int32)."""
    nb = block_mask_BHnn.shape[-1]
    cols = torch.arange(nb, device=block_mask_BHnn.device)
    order_key = torch.where(block_mask_BHnn, cols, cols + nb)  # unique keys: selected first, ascending
    block_ids = torch.sort(order_key, dim=-1).indices.to(torch.int32)
    return block_ids.contiguous(), block_mask_BHnn.sum(dim=-1, dtype=torch.int32).contiguous()


def block_sparse_attention_triton(
    q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_mask_BHnn: Tensor, block_size: int
) -> Tensor:
    """out_BHLd via the Triton block-sparse kernel; same contract as block_sparse_attention_reference."""
    q_BHLd, k_BGLd, v_BGLd = (t if t.stride(-1) == 1 else t.contiguous() for t in (q_BHLd, k_BGLd, v_BGLd))
    batch, heads, seq_len, head_dim = q_BHLd.shape
    nb = num_blocks(seq_len, block_size)
    block_ids_BHnn, block_counts_BHn = block_lists(block_mask_BHnn)
    out_BHLd = torch.empty(q_BHLd.shape, dtype=q_BHLd.dtype, device=q_BHLd.device)
    # 64 x 64 sub-tiles of a 128 block: the FlashAttention-2 Triton tutorial's tile for d = 128 on Hopper-class GPUs
    # (a 128 x 128 fp32 score tile plus a 128 x 128 accumulator would spill registers). Not swept here yet.
    block_m, block_n = min(64, block_size), min(64, block_size)
    launcher(block_sparse_attention_kernel, q_BHLd)[(nb * (block_size // block_m), batch * heads)](
        q_BHLd, k_BGLd, v_BGLd, out_BHLd, block_ids_BHnn, block_counts_BHn, heads, heads // k_BGLd.shape[1],
        seq_len, nb, head_dim, *q_BHLd.stride()[:3], *k_BGLd.stride()[:3], *v_BGLd.stride()[:3],
        math.log2(math.e) / math.sqrt(head_dim), BLOCK=block_size, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)), PRECISION=_dot_precision(q_BHLd), num_warps=4,
    )  # fmt: skip
    return out_BHLd


@torch.library.custom_op("kernels::rr_attention", mutates_args=())
def _rr_attention_op(
    q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_size: int, stride: int, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    block_mask_BHnn = select_blocks(rr_estimate_triton(q_BHLd, k_BGLd, block_size, stride), tau)
    out_BHLd = block_sparse_attention_triton(q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, block_size)
    return out_BHLd, block_mask_BHnn, block_sparsity(block_mask_BHnn)


@_rr_attention_op.register_fake
def _(q_BHLd, k_BGLd, v_BGLd, block_size, stride, tau):
    nb = num_blocks(q_BHLd.shape[2], block_size)
    block_mask = q_BHLd.new_empty(q_BHLd.shape[0], q_BHLd.shape[1], nb, nb, dtype=torch.bool)
    return torch.empty_like(q_BHLd), block_mask, q_BHLd.new_empty((), dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    q_BHLd, k_BGLd, v_BGLd, block_size, _, _ = inputs
    ctx.save_for_backward(q_BHLd, k_BGLd, v_BGLd, output[1])
    ctx.block_size = block_size


def _backward(ctx, grad_out_BHLd, _grad_mask, _grad_sparsity):
    q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q_BHLd, k_BGLd, v_BGLd)]
        out_BHLd = block_sparse_attention_reference(*leaves, block_mask_BHnn, ctx.block_size)
        grads = torch.autograd.grad(out_BHLd, leaves, grad_out_BHLd)
    return *grads, None, None, None


_rr_attention_op.register_autograd(_backward, setup_context=_setup_context)


def rr_attention(
    q_BHLd: Tensor,
    k_BGLd: Tensor,
    v_BGLd: Tensor,
    block_size: int = DEFAULT_BLOCK_SIZE,
    stride: int = DEFAULT_STRIDE,
    tau: float = DEFAULT_TAU,
) -> tuple[Tensor, Tensor, Tensor]:
    """RRAttention causal prefill. Returns (out_BHLd, block_mask_BHnn bool, sparsity fp32 0-dim tensor).

    q [B, H, L, d], k/v [B, G, L, d] with H a multiple of G (GQA). sparsity = 1 - selected / causal-visible
    blocks over the whole batch. tau = 1.0 selects every causal block (dense causal attention).
    """
    validate_rr_inputs(q_BHLd, k_BGLd, v_BGLd, block_size, stride, tau)
    if use_triton(q_BHLd):
        return _rr_attention_op(q_BHLd, k_BGLd, v_BGLd, int(block_size), int(stride), float(tau))
    return rr_attention_reference(q_BHLd, k_BGLd, v_BGLd, block_size, stride, tau)
