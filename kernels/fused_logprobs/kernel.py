"""Triton kernels for vocab-chunked log-probabilities and entropy.

Shape legend: T tokens, V vocab, C vocab chunk (a column slice of the vocab, C <= V).

The logits of one vocab chunk, logits_TC, come from a cuBLAS matmul in op.py; these kernels do everything
element-wise around it, so that no [T, V] tensor ever exists:
  * `online_softmax_stats_kernel` folds one chunk into running per-token statistics (online logsumexp):
      m = running max of z, s = sum exp(z - m), a = sum exp(z - m) * z, target_z = z[target] if in chunk,
    where z = logits / temperature. At the end lse = m + log s and entropy = lse - a / s.
  * `logits_grad_kernel` overwrites logits_TC in place with dLoss/dlogits for that chunk:
      dz_v = g_logprob * (1[v == target] - p_v) + g_entropy * p_v * (E_p[z] - z_v),  dlogit = dz / temperature.
All arithmetic is fp32 (loads are cast right away; also required by the Triton interpreter, whose bf16 math is wrong).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def online_softmax_stats_kernel(
    logits_ptr,  # [T, C] chunk of logits (any float dtype), row stride stride_t, unit column stride
    targets_ptr,  # [T] int64 target token ids (global vocab index)
    max_ptr,  # [T] fp32 running max of z, updated in place
    sumexp_ptr,  # [T] fp32 running sum exp(z - max), updated in place
    sumexpz_ptr,  # [T] fp32 running sum exp(z - max) * z, updated in place
    target_z_ptr,  # [T] fp32 z at the target id, accumulated in place (0 while the target is in another chunk)
    num_tokens,
    chunk_cols,  # C
    vocab_start,  # global vocab index of column 0 of this chunk
    stride_t,
    inv_temperature,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < num_tokens
    run_max = tl.load(max_ptr + rows, mask=row_ok, other=0.0)
    run_sum = tl.load(sumexp_ptr + rows, mask=row_ok, other=0.0)
    run_sumz = tl.load(sumexpz_ptr + rows, mask=row_ok, other=0.0)
    target_z = tl.load(target_z_ptr + rows, mask=row_ok, other=0.0)
    target = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
    for col_start in range(0, chunk_cols, BLOCK_V):
        cols = col_start + tl.arange(0, BLOCK_V)
        ok = row_ok[:, None] & (cols[None, :] < chunk_cols)
        z = tl.load(logits_ptr + rows[:, None] * stride_t + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        z = z * inv_temperature
        new_max = tl.maximum(run_max, tl.max(tl.where(ok, z, float("-inf")), axis=1))
        # Padded rows see only -inf; keep their max finite so exp() below stays NaN-free (they are never stored).
        new_max = tl.where(row_ok, new_max, 0.0)
        rescale = tl.exp(run_max - new_max)
        p = tl.where(ok, tl.exp(z - new_max[:, None]), 0.0)
        run_sum = run_sum * rescale + tl.sum(p, axis=1)
        run_sumz = run_sumz * rescale + tl.sum(p * z, axis=1)
        run_max = new_max
        hit = ok & ((cols[None, :] + vocab_start) == target[:, None])
        target_z += tl.sum(tl.where(hit, z, 0.0), axis=1)
    tl.store(max_ptr + rows, run_max, mask=row_ok)
    tl.store(sumexp_ptr + rows, run_sum, mask=row_ok)
    tl.store(sumexpz_ptr + rows, run_sumz, mask=row_ok)
    tl.store(target_z_ptr + rows, target_z, mask=row_ok)


@triton.jit
def logits_grad_kernel(
    logits_ptr,  # [T, C] fp32 chunk of logits; overwritten with dLoss/dlogits
    targets_ptr,  # [T] int64
    lse_ptr,  # [T] fp32 logsumexp of z over the whole vocab (from the forward)
    mean_z_ptr,  # [T] fp32 E_p[z] = lse - entropy (from the forward)
    grad_logprobs_ptr,  # [T] fp32 upstream gradient of logprobs
    grad_entropy_ptr,  # [T] fp32 upstream gradient of entropy
    num_tokens,
    chunk_cols,
    vocab_start,
    stride_t,
    inv_temperature,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < num_tokens
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    mean_z = tl.load(mean_z_ptr + rows, mask=row_ok, other=0.0)
    g_logprob = tl.load(grad_logprobs_ptr + rows, mask=row_ok, other=0.0)
    g_entropy = tl.load(grad_entropy_ptr + rows, mask=row_ok, other=0.0)
    target = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
    for col_start in range(0, chunk_cols, BLOCK_V):
        cols = col_start + tl.arange(0, BLOCK_V)
        ok = row_ok[:, None] & (cols[None, :] < chunk_cols)
        offsets = rows[:, None] * stride_t + cols[None, :]
        z = tl.load(logits_ptr + offsets, mask=ok, other=0.0).to(tl.float32) * inv_temperature
        p = tl.exp(z - lse[:, None])
        hit = (cols[None, :] + vocab_start) == target[:, None]
        dz = tl.where(hit, g_logprob[:, None], 0.0) - g_logprob[:, None] * p
        dz += g_entropy[:, None] * p * (mean_z[:, None] - z)
        tl.store(logits_ptr + offsets, dz * inv_temperature, mask=ok)
