"""Vocab-chunked per-token logprobs and entropy from hidden states and the LM head (forward and backward)."""

from kernels.fused_logprobs.op import fused_logprobs, fused_logprobs_backward_triton, fused_logprobs_forward_triton
from kernels.fused_logprobs.reference import fused_logprobs_reference

__all__ = [
    "fused_logprobs",
    "fused_logprobs_backward_triton",
    "fused_logprobs_forward_triton",
    "fused_logprobs_reference",
]
