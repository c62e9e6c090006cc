"""RRAttention (arXiv:2602.05853): round-robin stride estimate, top-tau block selection, block-sparse prefill."""

from kernels.rrattention.flex import block_sparse_attention_flex, flex_block_mask
from kernels.rrattention.op import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DENSE_BELOW,
    DEFAULT_STRIDE,
    DEFAULT_TAU,
    attention_backend,
    rr_attention,
    rr_estimate_triton,
    select_attention_backend,
)
from kernels.rrattention.reference import (
    block_sparse_attention_reference,
    block_sparsity,
    rr_attention_reference,
    rr_estimate_flops,
    rr_estimate_reference,
    select_blocks,
)
from kernels.rrattention.sparse import block_sparse_attention_triton

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_DENSE_BELOW",
    "DEFAULT_STRIDE",
    "DEFAULT_TAU",
    "attention_backend",
    "block_sparse_attention_flex",
    "block_sparse_attention_reference",
    "block_sparse_attention_triton",
    "block_sparsity",
    "flex_block_mask",
    "rr_attention",
    "rr_attention_reference",
    "rr_estimate_flops",
    "rr_estimate_reference",
    "rr_estimate_triton",
    "select_attention_backend",
    "select_blocks",
]
