"""RRAttention prefill op: Triton estimate -> top-tau block selection -> block-sparse attention (or dense).

Shape legend: B batch, H query heads, G kv heads, L seq len, d head dim, nb = ceil(L / block_size) blocks.

`rr_attention` is what the model calls for long-context prefill (decode stays dense). On CUDA (or inside
`kernels.force_triton()`):
  1. the Triton estimate kernel scores every (query block, key block) (custom op `kernels::rr_estimate`);
  2. `select_blocks` keeps the top-tau blocks (plus sink and diagonal);
  3. if fewer than `dense_below` of the causal blocks were dropped, skipping does not pay (a sparse kernel is
     slower per block than FlashAttention): dense causal SDPA runs instead and the returned mask is the full
     causal one (sparsity 0). This reads the sparsity on the host: one sync per call; dense_below=0 avoids it.
  4. otherwise the block-sparse attention runs with the mask, through FlexAttention where it is available
     (flex.py: CUDA, block_size >= 128) or the Triton kernels (sparse.py). Both have a block-sparse backward.
Elsewhere it is `rr_attention_reference`, so the CPU path is bit-exact with the spec by construction.
Rules and measured speeds: docs/kernels.md, 'RRAttention'.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from kernels._dispatch import launcher, use_triton
from kernels.rrattention.flex import block_sparse_attention_flex, flex_available
from kernels.rrattention.kernel import rr_estimate_kernel
from kernels.rrattention.reference import (
    block_sparsity,
    num_blocks,
    rr_attention_reference,
    select_blocks,
    stride_key_sums,
)
from kernels.rrattention.sparse import block_sparse_attention_triton, dot_precision

# Official defaults (PaddleFleet RRAttention README): block 128, stride 8, tau 0.95.
DEFAULT_BLOCK_SIZE = 128
DEFAULT_STRIDE = 8
DEFAULT_TAU = 0.95
# Below this share of skipped causal blocks the op runs dense SDPA. Break-even measured on an H200: the sparse
# kernels run at ~0.7x FlashAttention's speed per block (Flex), so skipping pays from ~30 % on (docs/kernels.md).
DEFAULT_DENSE_BELOW = 0.3

ATTENTION_BACKENDS: dict[str, Callable[..., Tensor]] = {
    "flex": block_sparse_attention_flex,
    "triton": block_sparse_attention_triton,
}
_state = threading.local()


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Forces the block-sparse attention backend ("flex" or "triton") for this thread (benchmarks and tests)."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"kernels.rrattention.attention_backend: unknown backend {name!r}; choose one of "
                         f"{sorted(ATTENTION_BACKENDS)}.")  # fmt: skip
    previous = getattr(_state, "backend", None)
    _state.backend = name
    try:
        yield
    finally:
        _state.backend = previous


def select_attention_backend(q_BHLd: Tensor, block_size: int) -> str:
    """A forced backend, else flex where it can run these inputs, else triton."""
    forced = getattr(_state, "backend", None)
    if forced is not None:
        return forced
    return "flex" if flex_available(q_BHLd, block_size) else "triton"


def validate_rr_inputs(q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_size: int, stride: int, tau: float,
                       dense_below: float = 0.0):  # fmt: skip
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
    if not 0.0 <= dense_below <= 1.0:
        raise ValueError(f"{where}: dense_below={dense_below} must be in [0, 1]; use {DEFAULT_DENSE_BELOW} "
                         f"(measured break-even) or 0 to never fall back to dense attention.")  # fmt: skip


def rr_estimate_triton(q_BHLd: Tensor, k_BGLd: Tensor, block_size: int, stride: int) -> Tensor:
    """block_scores_BHnn (fp32) computed by the Triton estimate kernel; same contract as rr_estimate_reference."""
    return _rr_estimate_op(q_BHLd, k_BGLd, int(block_size), int(stride))


@torch.library.custom_op("kernels::rr_estimate", mutates_args=())
def _rr_estimate_op(q_BHLd: Tensor, k_BGLd: Tensor, block_size: int, stride: int) -> Tensor:
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
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)), PRECISION=dot_precision(q_BHLd),
    )  # fmt: skip
    return scores_BHnn


@_rr_estimate_op.register_fake
def _(q_BHLd, k_BGLd, block_size, stride):
    nb = num_blocks(q_BHLd.shape[2], block_size)
    return q_BHLd.new_empty(q_BHLd.shape[0], q_BHLd.shape[1], nb, nb, dtype=torch.float32)


def _dense_causal(q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Dense causal SDPA (FlashAttention/cuDNN on a GPU), reported as the full causal mask with sparsity 0."""
    out_BHLd = F.scaled_dot_product_attention(q_BHLd, k_BGLd, v_BGLd, is_causal=True,
                                              enable_gqa=q_BHLd.shape[1] != k_BGLd.shape[1])  # fmt: skip
    nb = num_blocks(q_BHLd.shape[2], block_size)
    causal_nn = torch.ones(nb, nb, dtype=torch.bool, device=q_BHLd.device).tril()
    mask_BHnn = causal_nn.expand(q_BHLd.shape[0], q_BHLd.shape[1], nb, nb)
    return out_BHLd, mask_BHnn, q_BHLd.new_zeros((), dtype=torch.float32)


def rr_attention(
    q_BHLd: Tensor,
    k_BGLd: Tensor,
    v_BGLd: Tensor,
    block_size: int = DEFAULT_BLOCK_SIZE,
    stride: int = DEFAULT_STRIDE,
    tau: float = DEFAULT_TAU,
    dense_below: float = DEFAULT_DENSE_BELOW,
) -> tuple[Tensor, Tensor, Tensor]:
    """RRAttention causal prefill. Returns (out_BHLd, block_mask_BHnn bool, sparsity fp32 0-dim tensor).

    q [B, H, L, d], k/v [B, G, L, d] with H a multiple of G (GQA). sparsity = 1 - selected / causal-visible
    blocks over the whole batch, of the mask actually applied. tau = 1.0 selects every causal block (dense
    causal attention). dense_below: on the GPU path, run dense attention when the selection skips fewer than
    this share of blocks (costs one host sync; 0 never falls back). Differentiable w.r.t. q, k, v (the mask is
    a selection, not differentiated).
    """
    validate_rr_inputs(q_BHLd, k_BGLd, v_BGLd, block_size, stride, tau, dense_below)
    if not use_triton(q_BHLd):
        return rr_attention_reference(q_BHLd, k_BGLd, v_BGLd, block_size, stride, tau)
    with torch.no_grad():
        block_mask_BHnn = select_blocks(rr_estimate_triton(q_BHLd, k_BGLd, block_size, stride), tau)
        sparsity = block_sparsity(block_mask_BHnn)
    if dense_below > 0 and float(sparsity) < dense_below:
        return _dense_causal(q_BHLd, k_BGLd, v_BGLd, block_size)
    attend = ATTENTION_BACKENDS[select_attention_backend(q_BHLd, block_size)]
    return attend(q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, block_size), block_mask_BHnn, sparsity
