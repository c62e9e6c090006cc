"""RMSNorm and RoPE ops for the model: one Triton kernel each way on CUDA, the reference elsewhere.

Shape legend: R rows (leading dims flattened), D normalised dim, B batch, H heads, S positions, Dh head dim,
P = Dh / 2 rotation pairs.

`rms_norm(x, weight, eps)` and `rope(x_BHSD, cos_BSP, sin_BSP, style)` are what rl_platform.model calls. On CUDA
(or inside `kernels.force_triton()`) they run the custom ops `kernels::rms_norm` / `kernels::rope` (forward and
backward in Triton, visible to torch.compile); on CPU they are the reference functions themselves, so the CPU
model computes exactly what it did before these ops existed.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from kernels._dispatch import launcher, use_triton
from kernels.norm_rope.kernel import rms_norm_backward_kernel, rms_norm_forward_kernel, rope_kernel
from kernels.norm_rope.reference import rms_norm_reference, rope_reference

ROPE_LAYOUTS = ("interleaved", "neox")
_MAX_BLOCK_ELEMENTS = 8192  # rows per RMSNorm program: whole rows, ~8K fp32 values per program


def _row_block(dim: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(dim)
    return max(1, min(16, _MAX_BLOCK_ELEMENTS // block_d)), block_d


def _rows(x: Tensor) -> Tensor:
    x_RD = x.reshape(-1, x.shape[-1])
    return x_RD if x_RD.stride(-1) == 1 else x_RD.contiguous()


@torch.library.custom_op("kernels::rms_norm", mutates_args=())
def _rms_norm_op(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    x_RD = _rows(x)
    num_rows, dim = x_RD.shape
    out_RD = x_RD.new_empty(num_rows, dim, dtype=torch.result_type(weight, x))
    rstd_R = x_RD.new_empty(num_rows, dtype=torch.float32)
    block_r, block_d = _row_block(dim)
    launcher(rms_norm_forward_kernel, x_RD)[(triton.cdiv(num_rows, block_r),)](
        x_RD, weight, out_RD, rstd_R, num_rows, dim, x_RD.stride(0), eps, BLOCK_R=block_r, BLOCK_D=block_d)
    return out_RD.view(x.shape), rstd_R


@_rms_norm_op.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape, dtype=torch.result_type(weight, x)), x.new_empty(x.numel() // x.shape[-1],
                                                                                 dtype=torch.float32)  # fmt: skip


@torch.library.custom_op("kernels::rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(grad_out: Tensor, x: Tensor, weight: Tensor, rstd_R: Tensor) -> tuple[Tensor, Tensor]:
    x_RD = _rows(x)
    grad_out_RD = grad_out.reshape(x_RD.shape).contiguous()
    num_rows, dim = x_RD.shape
    block_r, block_d = _row_block(dim)
    num_programs = triton.cdiv(num_rows, block_r)
    grad_x_RD = torch.empty(x_RD.shape, dtype=x.dtype, device=x.device)
    partial_PD = x_RD.new_empty(num_programs, dim, dtype=torch.float32)
    launcher(rms_norm_backward_kernel, x_RD)[(num_programs,)](
        grad_out_RD, x_RD, weight, rstd_R, grad_x_RD, partial_PD, num_rows, dim, x_RD.stride(0), BLOCK_R=block_r,
        BLOCK_D=block_d)  # fmt: skip
    return grad_x_RD.view(x.shape), partial_PD.sum(dim=0).to(weight.dtype)


@_rms_norm_backward_op.register_fake
def _(grad_out, x, weight, rstd_R):
    return torch.empty_like(x), torch.empty_like(weight)


def _rms_norm_setup(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_backward(ctx, grad_out, _grad_rstd):
    x, weight, rstd_R = ctx.saved_tensors
    grad_x, grad_weight = _rms_norm_backward_op(grad_out, x, weight, rstd_R)
    return grad_x, grad_weight, None


_rms_norm_op.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup)


def _rope_launch(x_BHSD: Tensor, cos_BSP: Tensor, sin_BSP: Tensor, neox: bool, sign: int) -> Tensor:
    if x_BHSD.stride(-1) != 1:
        x_BHSD = x_BHSD.contiguous()
    batch, heads, seq_len, head_dim = x_BHSD.shape
    out_BHSD = torch.empty(x_BHSD.shape, dtype=x_BHSD.dtype, device=x_BHSD.device)
    cos_BSP, sin_BSP = (t.float().expand(batch, seq_len, head_dim // 2).contiguous() for t in (cos_BSP, sin_BSP))
    block_p = triton.next_power_of_2(head_dim // 2)
    block_s = max(1, min(64, 4096 // block_p))
    launcher(rope_kernel, x_BHSD)[(triton.cdiv(seq_len, block_s), batch * heads)](
        x_BHSD, cos_BSP, sin_BSP, out_BHSD, heads, seq_len, head_dim // 2, *x_BHSD.stride()[:3], NEOX=neox,
        SIGN=sign, BLOCK_S=block_s, BLOCK_P=block_p)  # fmt: skip
    return out_BHSD


@torch.library.custom_op("kernels::rope", mutates_args=())
def _rope_op(x_BHSD: Tensor, cos_BSP: Tensor, sin_BSP: Tensor, neox: bool, sign: int) -> Tensor:
    return _rope_launch(x_BHSD, cos_BSP, sin_BSP, neox, sign)


@_rope_op.register_fake
def _(x_BHSD, cos_BSP, sin_BSP, neox, sign):
    return x_BHSD.new_empty(x_BHSD.shape)


def _rope_setup(ctx, inputs, output) -> None:
    _, cos_BSP, sin_BSP, neox, sign = inputs
    ctx.save_for_backward(cos_BSP, sin_BSP)
    ctx.neox, ctx.sign = neox, sign


def _rope_backward(ctx, grad_out_BHSD):
    cos_BSP, sin_BSP = ctx.saved_tensors
    return _rope_op(grad_out_BHSD, cos_BSP, sin_BSP, ctx.neox, -ctx.sign), None, None, None, None  # rotate back


_rope_op.register_autograd(_rope_backward, setup_context=_rope_setup)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """weight * normalize(x) over the last dim (reference.py's numerics); differentiable w.r.t. x and weight."""
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"kernels.rms_norm: weight has shape {tuple(weight.shape)}, expected ({x.shape[-1]},) to "
                         f"match the last dim of x {tuple(x.shape)}; normalise over the weight's dim.")  # fmt: skip
    if use_triton(x) and x.numel() > 0:
        return _rms_norm_op(x, weight, float(eps))[0]
    return rms_norm_reference(x, weight, eps)


def rope(x_BHSD: Tensor, cos_BSP: Tensor, sin_BSP: Tensor, style: str = "interleaved") -> Tensor:
    """Rotary position embedding of every head (reference.py's numerics); differentiable w.r.t. x_BHSD.

    cos_BSP / sin_BSP: [B or 1, S, Dh/2] angles' cosines and sines (float32, not differentiated).
    """
    if style not in ROPE_LAYOUTS:
        raise ValueError(f"kernels.rope: style={style!r} is not one of {ROPE_LAYOUTS}; interleaved = GPT-J pairs "
                         f"(Ernie4.5), neox = rotate-half (Qwen3, OLMoE).")  # fmt: skip
    if x_BHSD.dim() != 4 or x_BHSD.shape[-1] % 2 or cos_BSP.shape[-1] * 2 != x_BHSD.shape[-1]:
        raise ValueError(f"kernels.rope: expected x [B, H, S, Dh] with even Dh and cos/sin [B, S, Dh/2]; got x "
                         f"{tuple(x_BHSD.shape)}, cos {tuple(cos_BSP.shape)}.")  # fmt: skip
    if use_triton(x_BHSD) and x_BHSD.numel() > 0 and not (cos_BSP.requires_grad or sin_BSP.requires_grad):
        return _rope_op(x_BHSD, cos_BSP, sin_BSP, style == "neox", 1)
    return rope_reference(x_BHSD, cos_BSP, sin_BSP, style)
