"""RRAttention (arXiv:2602.05853): round-robin stride estimate, top-tau block selection, block-sparse prefill."""

from kernels.rrattention.op import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_STRIDE,
    DEFAULT_TAU,
    block_sparse_attention_triton,
    rr_attention,
    rr_estimate_triton,
)
from kernels.rrattention.reference import (
    block_sparse_attention_reference,
    block_sparsity,
    rr_attention_reference,
    rr_estimate_flops,
    rr_estimate_reference,
    select_blocks,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_STRIDE",
    "DEFAULT_TAU",
    "block_sparse_attention_reference",
    "block_sparse_attention_triton",
    "block_sparsity",
    "rr_attention",
    "rr_attention_reference",
    "rr_estimate_flops",
    "rr_estimate_reference",
    "rr_estimate_triton",
    "select_blocks",
]
