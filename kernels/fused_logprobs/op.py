"""Per-token logprobs and entropy from an LM head without materialising [T, V] logits.

Shape legend: T tokens, D model dim, V vocab, C vocab chunk.

`fused_logprobs` is what the learner calls. On CUDA (or inside `kernels.force_triton()`) it runs the custom op
`kernels::fused_logprobs`: for each vocab chunk, a matmul produces logits_TC in fp32 and a Triton kernel folds it
into online-logsumexp statistics, so peak extra memory is [T, C] instead of [T, V]. The backward recomputes each
chunk's logits (one more matmul per chunk), turns them into dlogits in place with a second Triton kernel, and
accumulates grad_hidden += dlogits @ W_C and grad_lm_head[C] = dlogits.T @ hidden. Elsewhere (CPU) it is the
reference itself, so the CPU path is bit-exact with the spec by construction.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from kernels._dispatch import launcher, use_triton
from kernels.fused_logprobs.kernel import logits_grad_kernel, online_softmax_stats_kernel
from kernels.fused_logprobs.reference import fused_logprobs_reference

# 4096 vocab columns x T tokens x 4 B is 16 MiB per 1K tokens: large enough that each chunk's matmul saturates the
# GPU, small enough that [T, C] stays far below [T, V] for 150K-token vocabularies.
DEFAULT_CHUNK_SIZE = 4096
# 16 rows x 512 columns per program (8K fp32 values, 32 per thread at 8 warps: no register spill); 16 rows keep the
# grid at >= 256 programs for 4K+ tokens. Not swept yet on an H200 (TODO(kernels): sweep BLOCK_T/BLOCK_V in bench.py).
_BLOCK_T = 16
_BLOCK_V = 512
_NUM_WARPS = 8


def _validate(hidden_TD: Tensor, lm_head_VD: Tensor, targets_T: Tensor, temperature: float, chunk_size: int) -> None:
    where = "kernels.fused_logprobs"
    if hidden_TD.dim() != 2 or lm_head_VD.dim() != 2 or hidden_TD.shape[1] != lm_head_VD.shape[1]:
        raise ValueError(
            f"{where}: expected hidden [T, D] and lm_head [V, D] with the same D; got hidden {tuple(hidden_TD.shape)}"
            f" and lm_head {tuple(lm_head_VD.shape)}; flatten batch and sequence into T before calling."
        )
    if targets_T.shape != (hidden_TD.shape[0],) or targets_T.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"{where}: targets must be an int32/int64 tensor of shape [T]=({hidden_TD.shape[0]},); got "
            f"{targets_T.dtype} {tuple(targets_T.shape)}; pass the next-token ids aligned with hidden."
        )
    if not temperature > 0.0:
        raise ValueError(f"{where}: temperature must be > 0, got {temperature}; use 1.0 for the plain softmax.")
    if chunk_size < 1:
        raise ValueError(f"{where}: chunk_size must be >= 1, got {chunk_size}; the default is {DEFAULT_CHUNK_SIZE}.")


def _chunk_logits(hidden_TD: Tensor, lm_head_CD: Tensor) -> Tensor:
    """fp32 logits of one vocab chunk; bf16 inputs keep tensor-core speed with an fp32 output where supported."""
    if hidden_TD.dtype == torch.float32:
        return hidden_TD @ lm_head_CD.T
    try:
        return torch.mm(hidden_TD, lm_head_CD.T, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        # TODO(kernels): older builds lack mm(out_dtype); fp32 upcast is exact but ~8x slower on tensor cores.
        return hidden_TD.float() @ lm_head_CD.float().T


def _grid(num_tokens: int) -> tuple[int]:
    return (triton.cdiv(num_tokens, _BLOCK_T),)


def fused_logprobs_forward_triton(
    hidden_TD: Tensor, lm_head_VD: Tensor, targets_T: Tensor, temperature: float, chunk_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (logprobs_T, entropy_T, lse_T) in fp32 via the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1)."""
    num_tokens, vocab = hidden_TD.shape[0], lm_head_VD.shape[0]
    stats = torch.zeros(4, num_tokens, dtype=torch.float32, device=hidden_TD.device)
    run_max_T, run_sum_T, run_sumz_T, target_z_T = stats.unbind(0)
    run_max_T.fill_(float("-inf"))
    targets_T = targets_T.long().contiguous()
    for vocab_start in range(0, vocab, chunk_size):
        logits_TC = _chunk_logits(hidden_TD, lm_head_VD[vocab_start : vocab_start + chunk_size])
        launcher(online_softmax_stats_kernel, hidden_TD)[_grid(num_tokens)](
            logits_TC, targets_T, run_max_T, run_sum_T, run_sumz_T, target_z_T,
            num_tokens, logits_TC.shape[1], vocab_start, logits_TC.stride(0), 1.0 / temperature,
            BLOCK_T=_BLOCK_T, BLOCK_V=min(_BLOCK_V, triton.next_power_of_2(logits_TC.shape[1])), num_warps=_NUM_WARPS,
        )  # fmt: skip
    lse_T = run_max_T + torch.log(run_sum_T)
    entropy_T = lse_T - run_sumz_T / run_sum_T
    return target_z_T - lse_T, entropy_T, lse_T


def fused_logprobs_backward_triton(
    grad_logprobs_T: Tensor, grad_entropy_T: Tensor, hidden_TD: Tensor, lm_head_VD: Tensor, targets_T: Tensor,
    lse_T: Tensor, entropy_T: Tensor, temperature: float, chunk_size: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Returns (grad_hidden_TD, grad_lm_head_VD), recomputing one vocab chunk of logits at a time."""
    num_tokens, vocab = hidden_TD.shape[0], lm_head_VD.shape[0]
    grad_hidden_TD = torch.zeros(hidden_TD.shape, dtype=torch.float32, device=hidden_TD.device)
    grad_lm_head_VD = torch.empty_like(lm_head_VD)
    mean_z_T = (lse_T - entropy_T).contiguous()
    targets_T = targets_T.long().contiguous()
    grad_logprobs_T = grad_logprobs_T.float().contiguous()
    grad_entropy_T = grad_entropy_T.float().contiguous()
    for vocab_start in range(0, vocab, chunk_size):
        lm_head_CD = lm_head_VD[vocab_start : vocab_start + chunk_size]
        dlogits_TC = _chunk_logits(hidden_TD, lm_head_CD)
        launcher(logits_grad_kernel, hidden_TD)[_grid(num_tokens)](
            dlogits_TC, targets_T, lse_T, mean_z_T, grad_logprobs_T, grad_entropy_T,
            num_tokens, dlogits_TC.shape[1], vocab_start, dlogits_TC.stride(0), 1.0 / temperature,
            BLOCK_T=_BLOCK_T, BLOCK_V=min(_BLOCK_V, triton.next_power_of_2(dlogits_TC.shape[1])), num_warps=_NUM_WARPS,
        )  # fmt: skip
        # bf16 matmuls take dlogits rounded to the input dtype (as every bf16 training step does); fp32 stays fp32.
        dlogits_TC = dlogits_TC.to(hidden_TD.dtype)
        grad_hidden_TD += (dlogits_TC @ lm_head_CD).float()
        grad_lm_head_VD[vocab_start : vocab_start + chunk_size] = dlogits_TC.T @ hidden_TD
    return grad_hidden_TD.to(hidden_TD.dtype), grad_lm_head_VD


@torch.library.custom_op("kernels::fused_logprobs", mutates_args=())
def _fused_logprobs_op(
    hidden_TD: Tensor, lm_head_VD: Tensor, targets_T: Tensor, temperature: float, chunk_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    return fused_logprobs_forward_triton(hidden_TD, lm_head_VD, targets_T, temperature, chunk_size)


@_fused_logprobs_op.register_fake
def _(hidden_TD, lm_head_VD, targets_T, temperature, chunk_size):
    out_T = hidden_TD.new_empty(hidden_TD.shape[0], dtype=torch.float32)
    return out_T, torch.empty_like(out_T), torch.empty_like(out_T)


@torch.library.custom_op("kernels::fused_logprobs_backward", mutates_args=())
def _fused_logprobs_backward_op(
    grad_logprobs_T: Tensor, grad_entropy_T: Tensor, hidden_TD: Tensor, lm_head_VD: Tensor, targets_T: Tensor,
    lse_T: Tensor, entropy_T: Tensor, temperature: float, chunk_size: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    return fused_logprobs_backward_triton(
        grad_logprobs_T, grad_entropy_T, hidden_TD, lm_head_VD, targets_T, lse_T, entropy_T, temperature, chunk_size
    )


@_fused_logprobs_backward_op.register_fake
def _(grad_logprobs_T, grad_entropy_T, hidden_TD, lm_head_VD, targets_T, lse_T, entropy_T, temperature, chunk_size):
    return torch.empty_like(hidden_TD), torch.empty_like(lm_head_VD)


def _setup_context(ctx, inputs, output) -> None:
    hidden_TD, lm_head_VD, targets_T, temperature, chunk_size = inputs
    _, entropy_T, lse_T = output
    ctx.save_for_backward(hidden_TD, lm_head_VD, targets_T, lse_T, entropy_T)
    ctx.temperature, ctx.chunk_size = temperature, chunk_size


def _backward(ctx, grad_logprobs_T, grad_entropy_T, _grad_lse_T):
    hidden_TD, lm_head_VD, targets_T, lse_T, entropy_T = ctx.saved_tensors
    # An output that did not reach the loss arrives as None; it contributes nothing.
    grad_logprobs_T = torch.zeros_like(lse_T) if grad_logprobs_T is None else grad_logprobs_T
    grad_entropy_T = torch.zeros_like(lse_T) if grad_entropy_T is None else grad_entropy_T
    grad_hidden_TD, grad_lm_head_VD = _fused_logprobs_backward_op(
        grad_logprobs_T, grad_entropy_T, hidden_TD, lm_head_VD, targets_T, lse_T, entropy_T,
        ctx.temperature, ctx.chunk_size,
    )  # fmt: skip
    return grad_hidden_TD, grad_lm_head_VD, None, None, None


_fused_logprobs_op.register_autograd(_backward, setup_context=_setup_context)


def fused_logprobs(
    hidden_TD: Tensor,
    lm_head_VD: Tensor,
    targets_T: Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Returns (logprobs_T, entropy_T) in fp32 of softmax(hidden_TD @ lm_head_VD.T / temperature).

    Differentiable w.r.t. hidden_TD and lm_head_VD. The Triton path never holds more than [T, chunk_size] logits;
    the CPU path is `fused_logprobs_reference` (full [T, V] logits), bit-exact with the spec. targets_T must lie in
    [0, V): the Triton path does not range-check them (a host sync), an out-of-range id reads as logit 0.
    """
    _validate(hidden_TD, lm_head_VD, targets_T, temperature, chunk_size)
    if use_triton(hidden_TD) and hidden_TD.shape[0] > 0:  # an empty batch needs no launch
        logprobs_T, entropy_T, _ = _fused_logprobs_op(
            hidden_TD.contiguous(), lm_head_VD.contiguous(), targets_T, float(temperature), int(chunk_size)
        )
        return logprobs_T, entropy_T
    return fused_logprobs_reference(hidden_TD, lm_head_VD, targets_T, temperature)
