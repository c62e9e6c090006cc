"""Triton kernels for RRAttention: the stride-level estimate and the block-sparse causal attention forward.

Shape legend: B batch, H query heads, G kv heads, L seq len, d head dim, S stride, Q strides of the padded
sequence, nb blocks, R = block_size / S strides per block.

`rr_estimate_kernel`, one program per (R_TILE query strides, batch*head): gathers the round-robin sampled queries
(token i*S + h mod S) straight from q, scores them against the precomputed stride key sums (op.py sums keys once
in PyTorch: O(L d) traffic instead of re-reading S keys per query tile), runs a two-pass stride-causal softmax
(pass 1 online max/sum, pass 2 normalised probabilities) and block-sums each R x R tile of probabilities into
block_scores[b, h, qb, kb] with a reshape + two reductions, so the [Q, Q] probability matrix never exists.

`block_sparse_attention_kernel`, one program per (BLOCK_M rows of a query block, batch*head): flash-attention-style
online softmax over the selected key blocks only (a compact ascending list of block ids per row, built in
op.py), with the token causal mask applied inside the diagonal block. Matmul operands keep the input dtype
(bf16 tensor cores on GPU); softmax statistics and the accumulator are fp32. It also writes the row's
log-sum-exp (base 2, of the log2-scaled scores) for the backward.

Block-sparse backward (FlashAttention-2's split, over the same block lists; nothing of size L x L exists):
`block_sparse_attention_dq_kernel`, per (query sub-tile, batch*head), walks the query block's selected key
blocks: P = exp2(S - lse), dP = dO V^T, dS = P (dP - delta) with delta = rowsum(dO * O), dQ += dS K.
`block_sparse_attention_dkdv_kernel`, per (key sub-tile, batch*kv head), walks every query head of the GQA
group and the query blocks that selected this key block (the transposed lists): dV += P^T dO, dK += dS^T Q.
Summing the group's heads inside one program writes dK/dV once, without atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Finite stand-in for -inf: a masked score of -1e30 underflows exp2 to exactly 0 without inf - inf = NaN.
_NEG = tl.constexpr(-1.0e30)


@triton.jit
def rr_estimate_kernel(
    q_ptr,  # [B, H, L, d] any float dtype, any strides
    ksum_ptr,  # [B, G, Q, d] fp32 contiguous stride key sums
    scores_ptr,  # [B, H, nb, nb] fp32 contiguous, zero-initialised
    num_heads,
    group,  # H // G
    seq_len,
    num_strides,  # Q
    nb,
    head_dim,
    stride_qb,
    stride_qh,
    stride_ql,
    stride_qd,
    qk_scale,  # log2(e) / (S * sqrt(d)): exp2 of the scaled score is exp of q . mean(k) / sqrt(d)
    STRIDE: tl.constexpr,
    R: tl.constexpr,  # block_size // STRIDE
    R_TILE: tl.constexpr,  # query strides per program, a multiple of R, >= 16 for tl.dot
    C_TILE: tl.constexpr,  # key strides per inner step, a multiple of R
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    batch_head = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    q_strides = tl.program_id(0) * R_TILE + tl.arange(0, R_TILE)
    q_tokens = q_strides * STRIDE + head % STRIDE  # the round-robin shift
    row_ok = (q_strides < num_strides) & (q_tokens < seq_len)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    q_offsets = batch * stride_qb + head * stride_qh + q_tokens[:, None] * stride_ql + dims[None, :] * stride_qd
    q = tl.load(q_ptr + q_offsets, mask=row_ok[:, None] & dim_ok[None, :], other=0.0).to(tl.float32)
    ksum_base = ksum_ptr + (batch * (num_heads // group) + head // group) * num_strides * head_dim
    # Causal at stride granularity: this tile's last query stride bounds the key strides it can see.
    key_end = tl.minimum(tl.program_id(0) * R_TILE + R_TILE, num_strides)

    row_max = tl.full((R_TILE,), _NEG, dtype=tl.float32)
    row_sum = tl.zeros((R_TILE,), dtype=tl.float32)
    for key_start in range(0, key_end, C_TILE):
        k_strides = key_start + tl.arange(0, C_TILE)
        ksum = tl.load(
            ksum_base + k_strides[None, :] * head_dim + dims[:, None],
            mask=(k_strides[None, :] < num_strides) & dim_ok[:, None], other=0.0,
        )  # fmt: skip
        s = tl.dot(q, ksum, input_precision=PRECISION) * qk_scale
        s = tl.where(k_strides[None, :] <= q_strides[:, None], s, _NEG)
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        row_sum = row_sum * tl.exp2(row_max - new_max) + tl.sum(tl.exp2(s - new_max[:, None]), axis=1)
        row_max = new_max

    inv_sum = tl.where(row_ok, 1.0 / row_sum, 0.0)  # rows outside the sequence contribute no probability
    q_blocks = tl.program_id(0) * (R_TILE // R) + tl.arange(0, R_TILE // R)
    scores_base = scores_ptr + batch_head * nb * nb
    for key_start in range(0, key_end, C_TILE):
        k_strides = key_start + tl.arange(0, C_TILE)
        ksum = tl.load(
            ksum_base + k_strides[None, :] * head_dim + dims[:, None],
            mask=(k_strides[None, :] < num_strides) & dim_ok[:, None], other=0.0,
        )  # fmt: skip
        s = tl.dot(q, ksum, input_precision=PRECISION) * qk_scale
        s = tl.where(k_strides[None, :] <= q_strides[:, None], s, _NEG)
        p = tl.exp2(s - row_max[:, None]) * inv_sum[:, None]
        p = tl.reshape(p, (R_TILE // R, R, C_TILE // R, R))
        tile_scores = tl.sum(tl.sum(p, axis=3), axis=1)  # [R_TILE // R, C_TILE // R]
        k_blocks = key_start // R + tl.arange(0, C_TILE // R)
        ok = (q_blocks[:, None] < nb) & (k_blocks[None, :] < nb)
        tl.store(scores_base + q_blocks[:, None] * nb + k_blocks[None, :], tile_scores, mask=ok)


@triton.jit
def block_sparse_attention_kernel(
    q_ptr,  # [B, H, L, d]
    k_ptr,  # [B, G, L, d]
    v_ptr,  # [B, G, L, d]
    out_ptr,  # [B, H, L, d] contiguous
    lse_ptr,  # [B, H, L] fp32 out: log2-sum-exp2 of each row's log2-scaled scores
    block_ids_ptr,  # [B, H, nb, nb] int32: selected key blocks of each query block, ascending, then padding
    block_counts_ptr,  # [B, H, nb] int32: how many entries of block_ids are selected
    num_heads,
    group,
    seq_len,
    nb,
    head_dim,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    sm_scale_log2,  # log2(e) / sqrt(d)
    BLOCK: tl.constexpr,  # selection block size (128 default)
    BLOCK_M: tl.constexpr,  # query rows per program, divides BLOCK
    BLOCK_N: tl.constexpr,  # key columns per inner step, divides BLOCK
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    q_block = tl.program_id(0) // (BLOCK // BLOCK_M)
    batch_head = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    kv_head = head // group
    rows = q_block * BLOCK + (tl.program_id(0) % (BLOCK // BLOCK_M)) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    q_offsets = batch * stride_qb + head * stride_qh + rows[:, None] * stride_ql + dims[None, :]
    q = tl.load(q_ptr + q_offsets, mask=(rows[:, None] < seq_len) & dim_ok[None, :], other=0.0)
    k_base = k_ptr + batch * stride_kb + kv_head * stride_kh
    v_base = v_ptr + batch * stride_vb + kv_head * stride_vh

    row_max = tl.full((BLOCK_M,), _NEG, dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    row_index = batch_head * nb + q_block
    count = tl.load(block_counts_ptr + row_index)
    # Ascending block order puts the sink first: every valid row has a finite max after the first step, so the
    # fully-masked sub-tiles of the diagonal block (key sub-tile above this query sub-tile) add exactly 0.
    for i in range(0, count):
        k_block = tl.load(block_ids_ptr + row_index * nb + i)
        for sub in range(0, BLOCK, BLOCK_N):
            cols = k_block * BLOCK + sub + tl.arange(0, BLOCK_N)
            kv_ok = (cols[:, None] < seq_len) & dim_ok[None, :]
            k = tl.load(k_base + cols[:, None] * stride_kl + dims[None, :], mask=kv_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale_log2
            s = tl.where((cols[None, :] <= rows[:, None]) & (cols[None, :] < seq_len), s, _NEG)
            new_max = tl.maximum(row_max, tl.max(s, axis=1))
            rescale = tl.exp2(row_max - new_max)
            p = tl.exp2(s - new_max[:, None])
            row_sum = row_sum * rescale + tl.sum(p, axis=1)
            v = tl.load(v_base + cols[:, None] * stride_vl + dims[None, :], mask=kv_ok, other=0.0)
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            row_max = new_max
    out = acc / row_sum[:, None]
    out_offsets = batch_head * seq_len * head_dim + rows[:, None] * head_dim + dims[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < seq_len) & dim_ok[None, :])
    tl.store(lse_ptr + batch_head * seq_len + rows, row_max + tl.log2(row_sum), mask=rows < seq_len)


@triton.jit
def block_sparse_attention_dq_kernel(
    q_ptr, k_ptr, v_ptr,  # as in the forward
    grad_out_ptr,  # [B, H, L, d] contiguous
    lse_ptr,  # [B, H, L] fp32 from the forward
    delta_ptr,  # [B, H, L] fp32 rowsum(dO * O)
    grad_q_ptr,  # [B, H, L, d] contiguous out
    block_ids_ptr, block_counts_ptr,  # the forward's lists
    num_heads, group, seq_len, nb, head_dim,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    sm_scale_log2,  # log2(e) / sqrt(d)
    sm_scale,  # 1 / sqrt(d)
    BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    q_block = tl.program_id(0) // (BLOCK // BLOCK_M)
    batch_head = tl.program_id(1)
    batch = batch_head // num_heads
    kv_head = (batch_head % num_heads) // group
    rows = q_block * BLOCK + (tl.program_id(0) % (BLOCK // BLOCK_M)) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_len
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    tile_ok = row_ok[:, None] & dim_ok[None, :]
    q_offsets = batch * stride_qb + (batch_head % num_heads) * stride_qh + rows[:, None] * stride_ql + dims[None, :]
    q = tl.load(q_ptr + q_offsets, mask=tile_ok, other=0.0)
    dense_offsets = batch_head * seq_len * head_dim + rows[:, None] * head_dim + dims[None, :]
    grad_out = tl.load(grad_out_ptr + dense_offsets, mask=tile_ok, other=0.0)
    lse = tl.load(lse_ptr + batch_head * seq_len + rows, mask=row_ok, other=0.0)
    delta = tl.load(delta_ptr + batch_head * seq_len + rows, mask=row_ok, other=0.0)
    k_base = k_ptr + batch * stride_kb + kv_head * stride_kh
    v_base = v_ptr + batch * stride_vb + kv_head * stride_vh
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    row_index = batch_head * nb + q_block
    count = tl.load(block_counts_ptr + row_index)
    for i in range(0, count):
        k_block = tl.load(block_ids_ptr + row_index * nb + i)
        for sub in range(0, BLOCK, BLOCK_N):
            cols = k_block * BLOCK + sub + tl.arange(0, BLOCK_N)
            kv_ok = (cols[:, None] < seq_len) & dim_ok[None, :]
            k = tl.load(k_base + cols[:, None] * stride_kl + dims[None, :], mask=kv_ok, other=0.0)
            v = tl.load(v_base + cols[:, None] * stride_vl + dims[None, :], mask=kv_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale_log2
            visible = (cols[None, :] <= rows[:, None]) & (cols[None, :] < seq_len) & row_ok[:, None]
            p = tl.where(visible, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            acc = tl.dot(ds.to(k.dtype), k, acc, input_precision=PRECISION)
    tl.store(grad_q_ptr + dense_offsets, (acc * sm_scale).to(grad_q_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def block_sparse_attention_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, grad_out_ptr, lse_ptr, delta_ptr,
    grad_k_ptr,  # [B, G, L, d] contiguous out
    grad_v_ptr,  # [B, G, L, d] contiguous out
    q_block_ids_ptr,  # [B, H, nb, nb] int32: query blocks that selected each key block, ascending, then padding
    q_block_counts_ptr,  # [B, H, nb] int32
    num_heads, group, seq_len, nb, head_dim,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    sm_scale_log2, sm_scale,
    BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query rows per inner step
    BLOCK_N: tl.constexpr,  # key rows per program
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    k_block = tl.program_id(0) // (BLOCK // BLOCK_N)
    batch_kv_head = tl.program_id(1)
    num_kv_heads = num_heads // group
    batch = batch_kv_head // num_kv_heads
    kv_head = batch_kv_head % num_kv_heads
    cols = k_block * BLOCK + (tl.program_id(0) % (BLOCK // BLOCK_N)) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < seq_len
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    kv_ok = col_ok[:, None] & dim_ok[None, :]
    k = tl.load(k_ptr + batch * stride_kb + kv_head * stride_kh + cols[:, None] * stride_kl + dims[None, :],
                mask=kv_ok, other=0.0)  # fmt: skip
    v = tl.load(v_ptr + batch * stride_vb + kv_head * stride_vh + cols[:, None] * stride_vl + dims[None, :],
                mask=kv_ok, other=0.0)  # fmt: skip
    acc_k = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    acc_v = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for head in range(kv_head * group, kv_head * group + group):
        batch_head = batch * num_heads + head
        row_index = batch_head * nb + k_block
        count = tl.load(q_block_counts_ptr + row_index)
        for i in range(0, count):
            q_block = tl.load(q_block_ids_ptr + row_index * nb + i)
            for sub in range(0, BLOCK, BLOCK_M):
                rows = q_block * BLOCK + sub + tl.arange(0, BLOCK_M)
                row_ok = rows < seq_len
                tile_ok = row_ok[:, None] & dim_ok[None, :]
                q = tl.load(q_ptr + batch * stride_qb + head * stride_qh + rows[:, None] * stride_ql + dims[None, :],
                            mask=tile_ok, other=0.0)  # fmt: skip
                dense_offsets = batch_head * seq_len * head_dim + rows[:, None] * head_dim + dims[None, :]
                grad_out = tl.load(grad_out_ptr + dense_offsets, mask=tile_ok, other=0.0)
                lse = tl.load(lse_ptr + batch_head * seq_len + rows, mask=row_ok, other=0.0)
                delta = tl.load(delta_ptr + batch_head * seq_len + rows, mask=row_ok, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale_log2  # [BLOCK_M, BLOCK_N]
                visible = (cols[None, :] <= rows[:, None]) & col_ok[None, :] & row_ok[:, None]
                p = tl.where(visible, tl.exp2(s - lse[:, None]), 0.0)
                acc_v = tl.dot(tl.trans(p.to(grad_out.dtype)), grad_out, acc_v, input_precision=PRECISION)
                dp = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                acc_k = tl.dot(tl.trans(ds.to(q.dtype)), q, acc_k, input_precision=PRECISION)
    out_offsets = batch_kv_head * seq_len * head_dim + cols[:, None] * head_dim + dims[None, :]
    tl.store(grad_k_ptr + out_offsets, (acc_k * sm_scale).to(grad_k_ptr.dtype.element_ty), mask=kv_ok)
    tl.store(grad_v_ptr + out_offsets, acc_v.to(grad_v_ptr.dtype.element_ty), mask=kv_ok)
