"""Triton kernels for RMSNorm (forward, backward) and rotary position embedding (forward = backward with -sin).

Shape legend: R rows, D normalised dim, B batch, H heads, S positions, Dh head dim, P = Dh / 2 pairs.

One pass over the data each, fp32 inside, instead of eager PyTorch's chain of casts and elementwise kernels
(float copy, square, mean, rsqrt, multiply, cast back, weight multiply: about seven reads and writes of [R, D]).
rms_norm_backward_kernel writes each program's partial dL/dweight (fp32) for a torch sum over programs: a
deterministic reduction without atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rms_norm_forward_kernel(
    x_ptr,  # [R, D] rows with unit column stride
    weight_ptr,  # [D]
    out_ptr,  # [R, D] contiguous, dtype promote(weight, x)
    rstd_ptr,  # [R] fp32 out: 1 / sqrt(mean(x^2) + eps)
    num_rows,
    dim,
    stride_x,
    eps,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    ok = (rows[:, None] < num_rows) & (cols[None, :] < dim)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / dim + eps)
    normed = (x * rstd[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)  # rounded like the reference
    weight = tl.load(weight_ptr + cols, mask=cols < dim, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * dim + cols[None, :], (normed * weight[None, :]).to(out_ptr.dtype.element_ty),
             mask=ok)  # fmt: skip
    tl.store(rstd_ptr + rows, rstd, mask=rows < num_rows)


@triton.jit
def rms_norm_backward_kernel(
    grad_out_ptr,  # [R, D] contiguous
    x_ptr,  # [R, D] rows with unit column stride
    weight_ptr,  # [D]
    rstd_ptr,  # [R] fp32
    grad_x_ptr,  # [R, D] contiguous out, dtype of x
    partial_grad_weight_ptr,  # [num_programs, D] fp32 out
    num_rows,
    dim,
    stride_x,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    ok = (rows[:, None] < num_rows) & (cols[None, :] < dim)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    grad_out = tl.load(grad_out_ptr + rows[:, None] * dim + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=rows < num_rows, other=0.0)
    weight = tl.load(weight_ptr + cols, mask=cols < dim, other=0.0).to(tl.float32)
    normed = x * rstd[:, None]
    rounded = normed.to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(partial_grad_weight_ptr + tl.program_id(0) * dim + cols, tl.sum(grad_out * rounded, axis=0),
             mask=cols < dim)  # fmt: skip
    grad_normed = grad_out * weight[None, :]  # the rounding to x's dtype passes gradients straight through
    mean_dot = tl.sum(grad_normed * normed, axis=1) / dim
    grad_x = rstd[:, None] * (grad_normed - normed * mean_dot[:, None])
    tl.store(grad_x_ptr + rows[:, None] * dim + cols[None, :], grad_x.to(grad_x_ptr.dtype.element_ty), mask=ok)


@triton.jit
def rope_kernel(
    x_ptr,  # [B, H, S, Dh] any strides with unit stride over Dh
    cos_ptr,  # [B, S, P] fp32 contiguous
    sin_ptr,  # [B, S, P] fp32 contiguous
    out_ptr,  # [B, H, S, Dh] contiguous
    num_heads,
    seq_len,
    num_pairs,
    stride_xb,
    stride_xh,
    stride_xs,
    NEOX: tl.constexpr,  # pair i is (i, i + P) instead of (2i, 2i + 1)
    SIGN: tl.constexpr,  # +1 rotates by the angle (forward), -1 by minus the angle (backward)
    BLOCK_S: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    batch_head = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    positions = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    pairs = tl.arange(0, BLOCK_P)
    ok = (positions[:, None] < seq_len) & (pairs[None, :] < num_pairs)
    if NEOX:
        first_cols = pairs
        second_cols = pairs + num_pairs
    else:
        first_cols = 2 * pairs
        second_cols = 2 * pairs + 1
    x_base = x_ptr + batch * stride_xb + head * stride_xh + positions[:, None] * stride_xs
    first = tl.load(x_base + first_cols[None, :], mask=ok, other=0.0).to(tl.float32)
    second = tl.load(x_base + second_cols[None, :], mask=ok, other=0.0).to(tl.float32)
    angle_offsets = (batch * seq_len + positions[:, None]) * num_pairs + pairs[None, :]
    cos = tl.load(cos_ptr + angle_offsets, mask=ok, other=1.0)
    sin = tl.load(sin_ptr + angle_offsets, mask=ok, other=0.0) * SIGN
    out_base = out_ptr + (batch_head * seq_len + positions[:, None]) * (2 * num_pairs)
    tl.store(out_base + first_cols[None, :], (first * cos - second * sin).to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(out_base + second_cols[None, :], (second * cos + first * sin).to(out_ptr.dtype.element_ty), mask=ok)
