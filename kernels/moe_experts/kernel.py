"""Triton kernels for the routed-expert FFN: row gather, grouped matmuls, fused SwiGLU forward/backward, combine.

Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim, N = T * K token copies (rows grouped
by expert, see reference.permute_tokens_reference), M/P generic matmul dims.

Grouped matmul = one launch for all experts. Rows of A are sorted by expert; expert e owns rows
[offsets[e], offsets[e+1]). The host builds a tile schedule (tile -> expert, first row, end row) on the device
without a sync, sized by the bound sum_e ceil(n_e / BLOCK_N) <= ceil(N / BLOCK_N) + E; unused tiles exit at once.
Accumulation is fp32; `PRECISION` is "ieee" for fp32 inputs so GPU fp32 results are not silently TF32.

The two fused kernels exist for precision as much as for speed: the SwiGLU backward needs gate, up and
dL/dhidden at fp32 accuracy (rounding them to bf16 first costs ~0.05 absolute on a weight gradient summed over
a few dozen tokens, docs/kernels.md, 'Precision'), and `torch._grouped_mm` only writes bf16. So they keep the
matmul accumulators in registers and apply SwiGLU (forward) or its derivative (backward) to them directly:
  swiglu_gate_up_kernel:  acc_g = x @ Wg[e]^T, acc_u = x @ Wu[e]^T  ->  hidden = silu(acc_g) * acc_u
                          (+ gate/up stored as fp32 for the backward when SAVE)
  swiglu_backward_kernel: acc_h = dy @ Wd[e] (= dL/dhidden before the gate weight); gate/up loaded (fp32) or
                          recomputed in the same K loop (RECOMPUTE; K = D for all three products) ->
                          grad_gate, grad_up, weighted hidden w*h (for dWd = dy^T (w h)), and per-row partial
                          sums of acc_h * h (dL/d topk weight) for this F tile.
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
    rows2_ptr,  # [N, D] a second row tensor added to the first (read only if HAS_SECOND), same strides
    out_ptr,  # [T, D] out[t] = sum_k weight[t, k] * (rows[slot[t * K + k]] (+ rows2[...]))
    slot_ptr,  # [N] int64: position of copy t*K+k in the grouped order
    weight_ptr,  # [N] = topk_weights_TK flattened, read only if HAS_WEIGHT (else weights are 1)
    num_tokens,
    top_k,
    dim,
    stride_rows,
    stride_out,
    HAS_WEIGHT: tl.constexpr,
    HAS_SECOND: tl.constexpr,
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
        offsets = slot[:, None] * stride_rows + cols[None, :]
        vals = tl.load(rows_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        if HAS_SECOND:
            vals += tl.load(rows2_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
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


@triton.jit
def _load_weight_tile(w_ptr, expert, stride_e, ks, k_ok, fs, f_ok, stride_k, stride_f):
    """[BLOCK_K, BLOCK_F] tile of an expert's weight (B operand, K rows x F columns) via strides."""
    offsets = expert * stride_e + ks[:, None] * stride_k + fs[None, :] * stride_f
    return tl.load(w_ptr + offsets, mask=k_ok[:, None] & f_ok[None, :], other=0.0)


@triton.jit
def swiglu_gate_up_kernel(
    x_ptr,  # [N, D] rows grouped by expert
    w_gate_ptr,  # [E, F, D] contiguous (nn.Linear layout)
    w_up_ptr,  # [E, F, D] contiguous
    hidden_ptr,  # [N, F] out: silu(x @ Wg^T) * (x @ Wu^T), input dtype
    gate_ptr,  # [N, F] fp32 out (written only if SAVE)
    up_ptr,  # [N, F] fp32 out (written only if SAVE)
    tile_expert_ptr,
    tile_row_start_ptr,
    tile_row_end_ptr,
    dim_d,
    dim_f,
    stride_xn,
    SAVE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    expert = tl.load(tile_expert_ptr + tile)
    if expert < 0:
        return
    rows = tl.load(tile_row_start_ptr + tile) + tl.arange(0, BLOCK_N)
    row_ok = rows < tl.load(tile_row_end_ptr + tile)
    fs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_ok = fs < dim_f
    acc_g = tl.zeros((BLOCK_N, BLOCK_F), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_N, BLOCK_F), dtype=tl.float32)
    stride_e = dim_f * dim_d
    for k_start in range(0, dim_d, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_ok = ks < dim_d
        x = tl.load(x_ptr + rows[:, None] * stride_xn + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_g = _load_weight_tile(w_gate_ptr, expert, stride_e, ks, k_ok, fs, f_ok, 1, dim_d)
        acc_g = tl.dot(x, w_g, acc_g, input_precision=PRECISION)
        w_u = _load_weight_tile(w_up_ptr, expert, stride_e, ks, k_ok, fs, f_ok, 1, dim_d)
        acc_u = tl.dot(x, w_u, acc_u, input_precision=PRECISION)
    hidden = acc_g * tl.sigmoid(acc_g) * acc_u
    ok = row_ok[:, None] & f_ok[None, :]
    out_offsets = rows[:, None] * dim_f + fs[None, :]
    tl.store(hidden_ptr + out_offsets, hidden.to(hidden_ptr.dtype.element_ty), mask=ok)
    if SAVE:
        tl.store(gate_ptr + out_offsets, acc_g, mask=ok)
        tl.store(up_ptr + out_offsets, acc_u, mask=ok)


@triton.jit
def swiglu_backward_kernel(
    grad_y_ptr,  # [N, D] dL/dy of each copy's token (unweighted), rows grouped by expert
    w_down_ptr,  # [E, D, F] contiguous
    x_ptr,  # [N, D] (read only if RECOMPUTE)
    w_gate_ptr,  # [E, F, D] (read only if RECOMPUTE)
    w_up_ptr,  # [E, F, D] (read only if RECOMPUTE)
    gate_ptr,  # [N, F] fp32 saved gate (read only if not RECOMPUTE)
    up_ptr,  # [N, F] fp32 saved up (read only if not RECOMPUTE)
    weight_ptr,  # [N] fp32 gate weight of each copy
    grad_gate_ptr,  # [N, F] out, input dtype
    grad_up_ptr,  # [N, F] out, input dtype
    weighted_hidden_ptr,  # [N, F] out: weight * hidden, input dtype
    partial_grad_weight_ptr,  # [num_f_tiles, N] fp32 out: sum over this F tile of dL/dhidden * hidden
    tile_expert_ptr,
    tile_row_start_ptr,
    tile_row_end_ptr,
    num_rows,
    dim_d,
    dim_f,
    RECOMPUTE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    expert = tl.load(tile_expert_ptr + tile)
    if expert < 0:
        return
    rows = tl.load(tile_row_start_ptr + tile) + tl.arange(0, BLOCK_N)
    row_ok = rows < tl.load(tile_row_end_ptr + tile)
    fs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_ok = fs < dim_f
    stride_e = dim_f * dim_d
    acc_h = tl.zeros((BLOCK_N, BLOCK_F), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_N, BLOCK_F), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_N, BLOCK_F), dtype=tl.float32)
    for k_start in range(0, dim_d, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_ok = ks < dim_d
        a_offsets = rows[:, None] * dim_d + ks[None, :]
        a_ok = row_ok[:, None] & k_ok[None, :]
        grad_y = tl.load(grad_y_ptr + a_offsets, mask=a_ok, other=0.0)
        w_d = _load_weight_tile(w_down_ptr, expert, stride_e, ks, k_ok, fs, f_ok, dim_f, 1)
        acc_h = tl.dot(grad_y, w_d, acc_h, input_precision=PRECISION)
        if RECOMPUTE:
            x = tl.load(x_ptr + a_offsets, mask=a_ok, other=0.0)
            w_g = _load_weight_tile(w_gate_ptr, expert, stride_e, ks, k_ok, fs, f_ok, 1, dim_d)
            acc_g = tl.dot(x, w_g, acc_g, input_precision=PRECISION)
            w_u = _load_weight_tile(w_up_ptr, expert, stride_e, ks, k_ok, fs, f_ok, 1, dim_d)
            acc_u = tl.dot(x, w_u, acc_u, input_precision=PRECISION)
    ok = row_ok[:, None] & f_ok[None, :]
    nf_offsets = rows[:, None] * dim_f + fs[None, :]
    if RECOMPUTE:
        gate = acc_g
        up = acc_u
    else:
        gate = tl.load(gate_ptr + nf_offsets, mask=ok, other=0.0)
        up = tl.load(up_ptr + nf_offsets, mask=ok, other=0.0)
    weight = tl.load(weight_ptr + rows, mask=row_ok, other=0.0)
    sig = tl.sigmoid(gate)
    silu = gate * sig
    hidden = silu * up
    tl.store(partial_grad_weight_ptr + tl.program_id(1) * num_rows + rows, tl.sum(acc_h * hidden, axis=1),
             mask=row_ok)  # fmt: skip
    grad_hidden = acc_h * weight[:, None]
    tl.store(grad_up_ptr + nf_offsets, (grad_hidden * silu).to(grad_up_ptr.dtype.element_ty), mask=ok)
    grad_gate = grad_hidden * up * sig * (1.0 + gate * (1.0 - sig))
    tl.store(grad_gate_ptr + nf_offsets, grad_gate.to(grad_gate_ptr.dtype.element_ty), mask=ok)
    weighted_hidden = hidden * weight[:, None]
    tl.store(weighted_hidden_ptr + nf_offsets, weighted_hidden.to(weighted_hidden_ptr.dtype.element_ty), mask=ok)
