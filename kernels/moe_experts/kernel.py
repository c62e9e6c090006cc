"""Triton kernels for the routed-expert FFN: row gather, grouped matmul, grouped weight-gradient, weighted combine.

Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim, N = T * K token copies (rows grouped
by expert, see reference.permute_tokens_reference), M/P generic matmul dims.

Grouped matmul = one launch for all experts. Rows of A are sorted by expert; expert e owns rows
[offsets[e], offsets[e+1]). The host builds a tile schedule (tile -> expert, first row, end row) on the device
without a sync, sized by the bound sum_e ceil(n_e / BLOCK_M) <= ceil(N / BLOCK_M) + E; unused tiles exit at once.
Accumulation is fp32; `PRECISION` is "ieee" for fp32 inputs so GPU fp32 results are not silently TF32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gather_rows_kernel(
    src_ptr,  # [R_src, D]
    dst_ptr,  # [R, D]
    index_ptr,  # [R] int64: dst[r] = src[index[r]] * scale[r]
    scale_ptr,  # [R] fp32, read only if HAS_SCALE
    num_rows,
    dim,
    stride_src,
    stride_dst,
    HAS_SCALE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < num_rows
    src_rows = tl.load(index_ptr + rows, mask=row_ok, other=0)
    if HAS_SCALE:
        scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    for col_start in range(0, dim, BLOCK_D):
        cols = col_start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols[None, :] < dim)
        vals = tl.load(src_ptr + src_rows[:, None] * stride_src + cols[None, :], mask=ok, other=0.0)
        if HAS_SCALE:
            vals = vals.to(tl.float32) * scale[:, None]
        tl.store(dst_ptr + rows[:, None] * stride_dst + cols[None, :], vals.to(dst_ptr.dtype.element_ty), mask=ok)


@triton.jit
def combine_rows_kernel(
    rows_ptr,  # [N, D] per-copy rows in expert-grouped order
    out_ptr,  # [T, D] out[t] = sum_k weight[t, k] * rows[slot[t * K + k]]
    slot_ptr,  # [N] int64: position of copy t*K+k in the grouped order
    weight_ptr,  # [N] = topk_weights_TK flattened, read only if HAS_WEIGHT (else weights are 1)
    num_tokens,
    top_k,
    dim,
    stride_rows,
    stride_out,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    token_ok = tokens < num_tokens
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = token_ok[:, None] & (cols[None, :] < dim)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for k in range(0, top_k):
        slot = tl.load(slot_ptr + tokens * top_k + k, mask=token_ok, other=0)
        vals = tl.load(rows_ptr + slot[:, None] * stride_rows + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            weight = tl.load(weight_ptr + tokens * top_k + k, mask=token_ok, other=0.0).to(tl.float32)
            vals = vals * weight[:, None]
        acc += vals
    tl.store(out_ptr + tokens[:, None] * stride_out + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def grouped_mm_kernel(
    a_ptr,  # [N, M] rows grouped by expert
    b_ptr,  # [E, M, P] via strides (pass a transposed view's strides for nn.Linear-layout weights)
    c_ptr,  # [N, P] c[rows of e] = a[rows of e] @ b[e]
    tile_expert_ptr,  # [num_tile_slots] int64 expert of each row tile, -1 for unused slots
    tile_row_start_ptr,  # [num_tile_slots] int64 first row of the tile
    tile_row_end_ptr,  # [num_tile_slots] int64 end (exclusive) of the expert's rows
    dim_m,
    dim_p,
    stride_am,
    stride_be,
    stride_bm,
    stride_bp,
    stride_cn,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    tile = tl.program_id(0)
    expert = tl.load(tile_expert_ptr + tile)
    if expert < 0:
        return
    rows = tl.load(tile_row_start_ptr + tile) + tl.arange(0, BLOCK_N)
    row_ok = rows < tl.load(tile_row_end_ptr + tile)
    cols = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    col_ok = cols < dim_p
    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    for m_start in range(0, dim_m, BLOCK_M):
        ms = m_start + tl.arange(0, BLOCK_M)
        m_ok = ms < dim_m
        a = tl.load(a_ptr + rows[:, None] * stride_am + ms[None, :], mask=row_ok[:, None] & m_ok[None, :], other=0.0)
        b_offsets = expert * stride_be + ms[:, None] * stride_bm + cols[None, :] * stride_bp
        b = tl.load(b_ptr + b_offsets, mask=m_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    c_offsets = rows[:, None] * stride_cn + cols[None, :]
    tl.store(c_ptr + c_offsets, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def grouped_wgrad_kernel(
    a_ptr,  # [N, M] rows grouped by expert
    b_ptr,  # [N, P] rows grouped by expert
    c_ptr,  # [E, M, P] c[e] = a[rows of e].T @ b[rows of e]; zeros for an expert without rows
    offsets_ptr,  # [E + 1] int64 row offsets of each expert
    dim_m,
    dim_p,
    stride_an,
    stride_bn,
    stride_ce,
    stride_cm,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    expert = tl.program_id(0)
    num_p_tiles = tl.cdiv(dim_p, BLOCK_P)
    ms = (tl.program_id(1) // num_p_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    ps = (tl.program_id(1) % num_p_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    m_ok = ms < dim_m
    p_ok = ps < dim_p
    row_start = tl.load(offsets_ptr + expert)
    row_end = tl.load(offsets_ptr + expert + 1)
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    for n_start in range(row_start, row_end, BLOCK_N):
        rows = n_start + tl.arange(0, BLOCK_N)
        row_ok = rows < row_end
        a_t = tl.load(a_ptr + rows[None, :] * stride_an + ms[:, None], mask=row_ok[None, :] & m_ok[:, None], other=0.0)
        b = tl.load(b_ptr + rows[:, None] * stride_bn + ps[None, :], mask=row_ok[:, None] & p_ok[None, :], other=0.0)
        acc = tl.dot(a_t, b, acc, input_precision=PRECISION)
    c_offsets = expert * stride_ce + ms[:, None] * stride_cm + ps[None, :]
    tl.store(c_ptr + c_offsets, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & p_ok[None, :])
