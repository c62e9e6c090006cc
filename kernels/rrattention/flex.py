"""RRAttention's block-sparse attention through PyTorch FlexAttention (forward and block-sparse backward).

Shape legend: B batch, H query heads, G kv heads, L seq len, d head dim, nb blocks.

The RR block mask becomes a FlexAttention `BlockMask` without materialising anything of size L x L:
  full blocks     every selected block left of the diagonal: computed without evaluating a mask function;
  partial blocks  the diagonal block only, where the token causal mask `q >= k` applies.
Blocks left of the diagonal are complete (all their keys precede all their queries), and the last, possibly
short key block only ever appears as a diagonal block, so causal `mask_mod` on partial blocks is exact. The
mask_mod is a plain module-level function (no captured tensors), so one compiled kernel serves every mask.

FlexAttention runs compiled (`torch.compile(flex_attention)`; the first call of a new shape compiles for
tens of seconds on a GPU, automatic dynamic shapes then cover further lengths). Its backward walks the same
block lists (BlockMask's transposed q-lists), so training through RRAttention costs the sparse work only.
API used: `BlockMask.from_kv_blocks(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices,
BLOCK_SIZE, mask_mod, seq_lengths)` and `flex_attention(q, k, v, block_mask=, enable_gqa=, kernel_options=)`,
both present with these keywords from torch 2.6 through 2.13.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

# Default FlexAttention tiles need the sparse block to be a multiple of theirs (128 x 64 on Hopper for d 128).
MIN_FLEX_BLOCK = 128
# Extra FlexAttention kernel options (e.g. {"USE_TMA": True} or block sizes): empty = its own autotuned
# defaults. `python -m kernels.rrattention.bench --flex-options` times alternatives.
KERNEL_OPTIONS: dict = {}


def flex_available(q_BHLd: Tensor, block_size: int) -> bool:
    """Whether the Flex path can run these inputs: CUDA, FlexAttention importable, a block its tiles divide."""
    if not q_BHLd.is_cuda or block_size < MIN_FLEX_BLOCK:
        return False
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def causal(batch, head, q_idx, kv_idx):
    """FlexAttention mask_mod for the diagonal (partial) blocks."""
    return q_idx >= kv_idx


def ascending_lists(mask_BHnn: Tensor) -> tuple[Tensor, Tensor]:
    """(counts_BHn int32, indices_BHnn int32): set blocks of each row in ascending order, then the others."""
    nb = mask_BHnn.shape[-1]
    cols = torch.arange(nb, device=mask_BHnn.device)
    order_key = torch.where(mask_BHnn, cols, cols + nb)  # unique keys: set blocks first, ascending
    indices = torch.sort(order_key, dim=-1).indices.to(torch.int32)
    return mask_BHnn.sum(dim=-1, dtype=torch.int32).contiguous(), indices.contiguous()


def flex_block_mask(block_mask_BHnn: Tensor, block_size: int, seq_len: int):
    """The FlexAttention BlockMask of an RR mask (selected blocks, causal, diagonal always selected)."""
    from torch.nn.attention.flex_attention import BlockMask

    batch, heads, nb, _ = block_mask_BHnn.shape
    device = block_mask_BHnn.device
    diagonal_nn = torch.eye(nb, dtype=torch.bool, device=device)
    full_counts, full_indices = ascending_lists(block_mask_BHnn & ~diagonal_nn)
    partial_counts = torch.ones(batch, heads, nb, dtype=torch.int32, device=device)
    partial_indices = torch.zeros(batch, heads, nb, nb, dtype=torch.int32, device=device)
    partial_indices[..., 0] = torch.arange(nb, dtype=torch.int32, device=device)
    return BlockMask.from_kv_blocks(
        partial_counts, partial_indices, full_counts, full_indices, BLOCK_SIZE=block_size, mask_mod=causal,
        seq_lengths=(seq_len, seq_len),
    )  # fmt: skip


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def block_sparse_attention_flex(q_BHLd: Tensor, k_BGLd: Tensor, v_BGLd: Tensor, block_mask_BHnn: Tensor,
                                block_size: int) -> Tensor:  # fmt: skip
    """out_BHLd: block_sparse_attention_reference's contract, through compiled FlexAttention (differentiable)."""
    block_mask = flex_block_mask(block_mask_BHnn, block_size, q_BHLd.shape[2])
    gqa = q_BHLd.shape[1] != k_BGLd.shape[1]
    options = dict(KERNEL_OPTIONS) or None
    return _compiled_flex_attention()(q_BHLd, k_BGLd, v_BGLd, block_mask=block_mask, enable_gqa=gqa,
                                      kernel_options=options)  # fmt: skip
