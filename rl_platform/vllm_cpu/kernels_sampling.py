"""PyTorch stand-ins for MRV2's sampling kernels (vllm/v1/worker/gpu/sample/), vllm 0.32.0.

Each function takes `(grid, args)`, where `args` maps the Triton kernel's parameter names to the
launch arguments, writes the kernel's outputs in place, and returns None, or `FALLBACK` for a
configuration it does not cover (then the original kernel runs under TRITON_INTERPRET=1, or a clear
error is raised). Shapes: N rows of logits (one per sampled token), V vocab, R request-state slots.

Gumbel sampling reproduces vLLM's counter-based murmur3 RNG bit for bit, so seeded sampling gives
the same tokens as the Triton kernel (checked against it under the interpreter in
tests/vllm_cpu/test_kernel_standins.py). uint32 arithmetic is done in int32 (a wrapping multiply is
the same bits) with logical right shifts written as a shift plus mask.
"""

from __future__ import annotations

from typing import Any

import torch

FALLBACK = object()
"""Returned by a stand-in for a configuration it does not cover."""


def _flat(a: dict[str, Any], name: str) -> Any:
    """Argument `name` as a 1-D view: the kernels address these as `ptr + i` whatever their shape."""
    t = a[name]
    return t if t is None or t.dim() == 1 else t.view(-1)


_U32 = 0xFFFFFFFF
_ROWS_ELEMS = 1 << 20
"""Rows per chunk = _ROWS_ELEMS // V: keeps the [rows, V] int32/fp32 temporaries in L2 (4 MiB)."""


def _as_i32(c: int) -> int:
    c &= _U32
    return c - (1 << 32) if c >= (1 << 31) else c


def _lsr(x: torch.Tensor, r: int) -> torch.Tensor:
    """Logical right shift of int32 bit patterns (torch's >> is arithmetic)."""
    return (x >> r) & ((1 << (32 - r)) - 1)


def _rotl_u32(x: torch.Tensor, r: int) -> torch.Tensor:
    """Rotate left on uint32 values held in int64."""
    return ((x << r) | (x >> (32 - r))) & _U32


def _mix_u32(h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """vLLM's _murmur3_mix on uint32 values held in int64 (per-row prefix: few elements)."""
    k = _rotl_u32((k * 0xCC9E2D51) & _U32, 15)
    k = (k * 0x1B873593) & _U32
    h = _rotl_u32(h ^ k, 13)
    return (h * 5 + 0xE6546B64) & _U32


def _row_prefix(seed_N: torch.Tensor, pos_N: torch.Tensor, domain: int) -> torch.Tensor:
    """The part of murmur3_hash32(seed, pos, token) that does not depend on the token: int32 [N]."""
    h = torch.full_like(seed_N, domain)
    for word in (seed_N & _U32, (seed_N >> 32) & _U32, pos_N & _U32):
        h = _mix_u32(h, word)
    return torch.where(h >= (1 << 31), h - (1 << 32), h).to(torch.int32)


_TOKEN_KEYS: dict[int, torch.Tensor] = {}


def _token_keys(V: int) -> torch.Tensor:
    """The token-only half of _murmur3_mix(h, token) for tokens 0..V-1, int32 [V], cached per V."""
    keys = _TOKEN_KEYS.get(V)
    if keys is None:
        k = torch.arange(V, dtype=torch.int64)
        k = (_rotl_u32((k * 0xCC9E2D51) & _U32, 15) * 0x1B873593) & _U32
        keys = _TOKEN_KEYS[V] = torch.where(k >= (1 << 31), k - (1 << 32), k).to(torch.int32)
    return keys


def _hash_NV(prefix_N: torch.Tensor, V: int) -> torch.Tensor:
    """murmur3_hash32 bit patterns, int32 [N, V]: finish the token mix, then fmix32(h ^ 16)."""
    x = prefix_N[:, None] ^ _token_keys(V)[None, :]
    x = (x << 13) | _lsr(x, 19)
    x.mul_(5).add_(_as_i32(0xE6546B64))
    x ^= 16
    x ^= _lsr(x, 16)
    x.mul_(_as_i32(0x85EBCA6B))
    x ^= _lsr(x, 13)
    x.mul_(_as_i32(0xC2B2AE35))
    x ^= _lsr(x, 16)
    return x


def _gumbel_noise(seed_N: torch.Tensor, pos_N: torch.Tensor, V: int, use_fp64: bool) -> torch.Tensor:
    """Gumbel noise of vLLM's gumbel_noised_argmax for rows (seed, pos) and tokens 0..V-1: [N, V]."""
    if use_fp64:
        lo = _hash_NV(_row_prefix(seed_N, pos_N, 0), V).to(torch.int64) & _U32
        hi = _hash_NV(_row_prefix(seed_N, pos_N, 0x9E3779B9), V).to(torch.int64) & _U32
        u = (((hi << 21) | (lo >> 11)).to(torch.float64) + 0.5) * 1.1102230246251565e-16
        u = torch.where(u == 1.0, u - 1.1102230246251565e-16, u)
        return -torch.log(-torch.log(u))
    r = _hash_NV(_row_prefix(seed_N, pos_N, 0), V)
    # murmur3_uniform32: split into 16-bit halves, as the kernel does, for the same fp32 rounding.
    u = _lsr(r, 16).to(torch.float32).mul_(1.52587890625e-05)
    u.add_((r & 0xFFFF).to(torch.float32).add_(0.5).mul_(2.3283064365386963e-10))
    del r
    # _log1p_neg_stable(u) = log(1 - u): the kernel's degree-8 Horner series below 0.25, log above.
    poly = torch.full_like(u, 1.0 / 8.0)
    for c in (1.0 / 7.0, 1.0 / 6.0, 1.0 / 5.0, 1.0 / 4.0, 1.0 / 3.0, 1.0 / 2.0, 1.0):
        poly.mul_(u).add_(c)
    series = poly.mul_(u).neg_()
    direct = torch.log(torch.clamp_min(1.0 - u, 5.960464477539063e-08))
    return torch.where(u < 0.25, series, direct).neg_().log_().neg_()


def gumbel_sample(grid: Any, a: dict[str, Any]) -> object | None:
    """_gumbel_sample_kernel: per 1024-token block, the max of (logits / T + Gumbel noise) and its argmax."""
    if a["logits_cache_ptr"] is not None:
        return FALLBACK  # draft-logits cache: speculative decoding only
    V, B = int(a["vocab_size"]), int(a["BLOCK_SIZE"])
    logits_NV = a["logits_ptr"]
    N = logits_NV.shape[0]
    idx_N = _flat(a, "expanded_idx_mapping_ptr")[:N].long()
    valid_N = idx_N >= 0
    safe_N = idx_N.clamp_min(0)
    temp_N = torch.where(valid_N, _flat(a, "temp_ptr")[safe_N].float(), 0.0)
    seed_N = torch.where(valid_N, _flat(a, "seeds_ptr")[safe_N].long(), 0)
    pos_N = _flat(a, "pos_ptr")[:N].long() + ((1 << 30) if a["IS_DRAFTING"] else 0)
    use_fp64 = bool(a["USE_FP64"])
    num_blocks = (V + B - 1) // B
    block_offsets = torch.arange(num_blocks, dtype=torch.int64)[None, :] * B
    step = max(1, _ROWS_ELEMS // V)
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        x = logits_NV[r0:r1, :V].to(torch.float32, copy=True)
        temp = temp_N[r0:r1]
        sampled = temp != 0.0
        if a["APPLY_TEMPERATURE"]:
            x = torch.where(sampled[:, None], x / torch.where(sampled, temp, 1.0)[:, None], x)
        if use_fp64:
            x = x.to(torch.float64)
        if bool(sampled.all()):
            x += _gumbel_noise(seed_N[r0:r1], pos_N[r0:r1], V, use_fp64)
        elif bool(sampled.any()):  # greedy rows (temperature 0) get no noise
            rows = sampled.nonzero().squeeze(1)
            x[rows] += _gumbel_noise(seed_N[r0:r1][rows], pos_N[r0:r1][rows], V, use_fp64)
        if num_blocks * B != V:
            x = torch.nn.functional.pad(x, (0, num_blocks * B - V), value=float("-inf"))
        x_blocks = x.view(r1 - r0, num_blocks, B)
        argmax = x_blocks.argmax(dim=-1)  # first maximum, like tl.max(..., return_indices=True)
        a["local_max_ptr"][r0:r1, :num_blocks] = x_blocks.gather(-1, argmax[..., None])[..., 0]
        a["local_argmax_ptr"][r0:r1, :num_blocks] = argmax + block_offsets
    return None


def temperature(grid: Any, a: dict[str, Any]) -> None:
    """_temperature_kernel: logits /= T for rows whose T is not 0 or 1."""
    logits_NV, V = a["logits_ptr"], int(a["vocab_size"])
    temp_N = _flat(a, "temperature_ptr")[_flat(a, "expanded_idx_mapping_ptr")[: logits_NV.shape[0]].long()].float()
    rows = ((temp_N != 0.0) & (temp_N != 1.0)).nonzero().squeeze(1)
    if rows.numel():
        logits_NV[rows, :V] = (logits_NV[rows, :V].float() / temp_N[rows, None]).to(logits_NV.dtype)


def min_p(grid: Any, a: dict[str, Any]) -> None:
    """_min_p_kernel: mask logits below max + log(min_p) with -inf."""
    logits_NV, V = a["logits_ptr"], int(a["vocab_size"])
    min_p_N = _flat(a, "min_p_ptr")[_flat(a, "expanded_idx_mapping_ptr")[: logits_NV.shape[0]].long()].float()
    rows = (min_p_N != 0.0).nonzero().squeeze(1)
    if rows.numel():
        x = logits_NV[rows, :V]
        threshold = x.max(dim=-1, keepdim=True).values.float() + torch.log(min_p_N[rows])[:, None]
        logits_NV[rows, :V] = x.masked_fill(x < threshold, float("-inf"))


def topk_log_softmax(grid: Any, a: dict[str, Any]) -> None:
    """_topk_log_softmax_kernel: fp32 log_softmax of each row, gathered at the requested token ids."""
    logits_NV, V, k = a["logits_ptr"], int(a["vocab_size"]), int(a["topk"])
    N = logits_NV.shape[0]
    ids_NK = a["topk_ids_ptr"][:N, :k].long()
    out_NK = _flat(a, "output_ptr")[: N * k].view(N, k)
    step = max(1, 4 * _ROWS_ELEMS // V)  # bounds the [rows, V] fp32 temporary
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        out_NK[r0:r1] = torch.log_softmax(logits_NV[r0:r1, :V].float(), dim=-1).gather(1, ids_NK[r0:r1])


def ranks(grid: Any, a: dict[str, Any]) -> None:
    """_ranks_kernel: rank of the sampled token = #{v : logit[v] >= logit[token]}."""
    logits_NV, V = a["logits_ptr"], int(a["vocab_size"])
    N = logits_NV.shape[0]
    x = logits_NV[:, :V]
    token_N = _flat(a, "token_ids_ptr")[:N].long()
    # int32 accumulation: about 5x faster than the default int64 sum of a bool tensor.
    counts_N = (x >= x.gather(1, token_N[:, None])).sum(dim=-1, dtype=torch.int32)
    _flat(a, "output_ptr")[:N] = counts_N.to(_flat(a, "output_ptr").dtype)
