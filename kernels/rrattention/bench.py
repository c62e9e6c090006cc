"""Benchmark RRAttention prefill against dense causal SDPA (FlashAttention/cuDNN), measured in the same run.

Usage: python -m kernels.rrattention.bench [--out results.json] [--device cuda|cpu] [--quick]
Four parts (CUDA; shape legend B batch, H query heads, G kv heads, L seq len, d head dim):
  op          the whole op (estimate + selection + attention, dense fallback below the break-even sparsity)
              on random q/k/v, whose flat attention lets tau 0.95 skip only 2-5 % of blocks;
  masks       the block-sparse attention alone (Flex and Triton backends) under random keep-masks that skip
              0 / 50 / 75 % of the causal blocks at the longest L (diagonal and sink kept): speed vs sparsity;
  structured  the whole op on q/k whose attention concentrates: a share of the kv groups carries positional
              features (q_i . k_j peaks at i = j) so their heads skip ~99 % of blocks, the rest are random;
              4 of 8 local groups give ~50 % sparsity, 6 of 8 ~75 %;
  backward    forward + backward of the sparse attention vs SDPA at one shape and 50 % sparsity.
Speedups are dense SDPA time / our time (> 1: faster than dense). "effective TFLOP/s" counts the dense causal
FLOPs (2 * 2 * B * H * L^2 / 2 * d) over our time. On CPU it times the reference path at one small shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels import _bench
from kernels.rrattention import (
    block_sparse_attention_flex,
    block_sparse_attention_triton,
    rr_attention,
    rr_attention_reference,
    rr_estimate_triton,
    select_attention_backend,
)

HEADS, KV_HEADS, HEAD_DIM, BLOCK, STRIDE, TAU = 32, 8, 128, 128, 8, 0.95
CUDA_LENGTHS = [8192, 32768, 65536]
SPARSE_BACKENDS = {"flex": block_sparse_attention_flex, "triton": block_sparse_attention_triton}


def _qkv(seq_len: int, device: str, dtype: torch.dtype, local_groups: int = 0, seed: int = 0):
    """Random q/k/v; the first `local_groups` kv groups (and their query heads) get positional features."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q_BHLd = torch.randn(1, HEADS, seq_len, HEAD_DIM, device=device, generator=gen)
    k_BGLd, v_BGLd = (torch.randn(1, KV_HEADS, seq_len, HEAD_DIM, device=device, generator=gen) for _ in range(2))
    if local_groups:
        positions_L1 = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None]
        periods = torch.logspace(math.log10(16), math.log10(4096), HEAD_DIM // 2, device=device)
        angles_LP = positions_L1 * (2 * math.pi / periods)[None, :]
        features_Ld = 2.0 * torch.cat([angles_LP.cos(), angles_LP.sin()], dim=1)  # scale 2: sharp peak
        group = HEADS // KV_HEADS
        k_BGLd[:, :local_groups] = features_Ld
        q_BHLd[:, : local_groups * group] = features_Ld
    return tuple(t.to(dtype) for t in (q_BHLd, k_BGLd, v_BGLd))


def _dense(q_BHLd, k_BGLd, v_BGLd):
    group = q_BHLd.shape[1] // k_BGLd.shape[1]
    k_BHLd, v_BHLd = (t.repeat_interleave(group, dim=1) for t in (k_BGLd, v_BGLd))  # outside the timed call
    return lambda: F.scaled_dot_product_attention(q_BHLd, k_BHLd, v_BHLd, is_causal=True)


def _random_mask(seq_len: int, skip: float, device: str) -> torch.Tensor:
    nb = -(-seq_len // BLOCK)
    gen = torch.Generator(device=device).manual_seed(1)
    keep_BHnn = torch.rand(1, HEADS, nb, nb, device=device, generator=gen) >= skip
    mandatory_nn = torch.eye(nb, dtype=torch.bool, device=device)
    mandatory_nn[:, 0] = True
    return (keep_BHnn | mandatory_nn) & torch.ones(nb, nb, dtype=torch.bool, device=device).tril()


def _skipped(mask_BHnn: torch.Tensor) -> float:
    nb = mask_BHnn.shape[-1]
    return 1.0 - float(mask_BHnn.sum()) / (mask_BHnn.shape[0] * mask_BHnn.shape[1] * nb * (nb + 1) // 2)


def bench_op(seq_len: int, device: str, dtype: torch.dtype, local_groups: int = 0) -> dict:
    q_BHLd, k_BGLd, v_BGLd = _qkv(seq_len, device, dtype, local_groups)
    dense_flops = 2 * 2 * HEADS * seq_len * seq_len // 2 * HEAD_DIM
    record = {"part": "structured" if local_groups else "op", "L": seq_len, "local_groups": local_groups,
              "dtype": str(dtype).removeprefix("torch.")}  # fmt: skip
    record["selected_sparsity"] = float(rr_attention(q_BHLd, k_BGLd, v_BGLd, BLOCK, STRIDE, TAU, dense_below=0.0)[2])
    record["applied_sparsity"] = float(rr_attention(q_BHLd, k_BGLd, v_BGLd, BLOCK, STRIDE, TAU)[2])
    # Below DEFAULT_DENSE_BELOW selected sparsity (0 included) the op falls back and reports sparsity 0.
    record["path"] = "sparse" if record["applied_sparsity"] > 0 else "dense fallback"
    # The dispatch decision as the op takes it: dense SDPA below the break-even sparsity, else this backend.
    record["backend"] = "sdpa" if record["path"] == "dense fallback" else select_attention_backend(q_BHLd, BLOCK)
    record["op_ms"] = _bench.time_ms(lambda: rr_attention(q_BHLd, k_BGLd, v_BGLd, BLOCK, STRIDE, TAU), device)
    record["op_sparse_only_ms"] = _bench.time_ms(
        lambda: rr_attention(q_BHLd, k_BGLd, v_BGLd, BLOCK, STRIDE, TAU, dense_below=0.0), device)
    record["estimate_ms"] = _bench.time_ms(lambda: rr_estimate_triton(q_BHLd, k_BGLd, BLOCK, STRIDE), device)
    record["dense_sdpa_ms"] = _bench.time_ms(_dense(q_BHLd, k_BGLd, v_BGLd), device)
    record["speedup_vs_dense_sdpa"] = record["dense_sdpa_ms"] / record["op_ms"]
    record["sparse_only_speedup_vs_dense_sdpa"] = record["dense_sdpa_ms"] / record["op_sparse_only_ms"]
    record["op_effective_tflops"] = dense_flops / record["op_ms"] / 1e9
    return record


def bench_masks(seq_len: int, skips: list[float], backends: list[str], device: str, dtype: torch.dtype) -> list:
    q_BHLd, k_BGLd, v_BGLd = _qkv(seq_len, device, dtype)
    dense_ms = _bench.time_ms(_dense(q_BHLd, k_BGLd, v_BGLd), device)
    records = []
    for skip in skips:
        mask_BHnn = _random_mask(seq_len, skip, device)
        record = {"part": "masks", "L": seq_len, "skipped": round(_skipped(mask_BHnn), 3), "dense_sdpa_ms": dense_ms}
        for name in backends:
            fn = SPARSE_BACKENDS[name]
            record[f"{name}_ms"] = _bench.time_ms(lambda fn=fn, m=mask_BHnn: fn(q_BHLd, k_BGLd, v_BGLd, m, BLOCK),
                                                  device)  # fmt: skip
            record[f"{name}_speedup_vs_dense_sdpa"] = dense_ms / record[f"{name}_ms"]
        records.append(record)
        _bench.report(record)
    return records


def bench_backward(seq_len: int, device: str, dtype: torch.dtype) -> dict:
    leaves = [t.requires_grad_() for t in _qkv(seq_len, device, dtype)]
    mask_BHnn = _random_mask(seq_len, 0.5, device)
    group = HEADS // KV_HEADS
    record = {"part": "backward", "L": seq_len, "skipped": round(_skipped(mask_BHnn), 3)}

    def dense_step():
        k_BHLd, v_BHLd = (t.repeat_interleave(group, dim=1) for t in leaves[1:])
        F.scaled_dot_product_attention(leaves[0], k_BHLd, v_BHLd, is_causal=True).sum().backward()

    record["dense_sdpa_fwd_bwd_ms"] = _bench.time_ms(dense_step, device)
    for name, fn in SPARSE_BACKENDS.items():
        step = lambda fn=fn: fn(*leaves, mask_BHnn, BLOCK).sum().backward()  # noqa: E731
        record[f"{name}_fwd_bwd_ms"] = _bench.time_ms(step, device)
        record[f"{name}_speedup_vs_dense_sdpa"] = record["dense_sdpa_fwd_bwd_ms"] / record[f"{name}_fwd_bwd_ms"]
    return record


def bench_cpu() -> list[dict]:
    q_BHLd, k_BGLd, v_BGLd = (t.float() for t in _qkv(1024, "cpu", torch.float32))
    q_BHLd, k_BGLd, v_BGLd = q_BHLd[:, :8, :, :64], k_BGLd[:, :2, :, :64], v_BGLd[:, :2, :, :64]
    record = {"part": "op", "L": 1024, "H": 8, "G": 2, "d": 64, "backend": "reference (CPU path)"}
    record["reference_ms"] = _bench.time_ms(lambda: rr_attention_reference(q_BHLd, k_BGLd, v_BGLd, 128, 8, TAU), "cpu")
    record["sparsity"] = float(rr_attention(q_BHLd, k_BGLd, v_BGLd, 128, 8, TAU)[2])
    return [record]


def main() -> None:
    parser = _bench.argument_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="one length per part (smoke test of the script)")
    args = parser.parse_args()
    meta = _bench.header("rrattention", args.device)
    meta["setup"] = {"H": HEADS, "G": KV_HEADS, "d": HEAD_DIM, "block": BLOCK, "stride": STRIDE, "tau": TAU}
    if args.device != "cuda":
        records = bench_cpu()
        _bench.report(records[0])
        _bench.write(args.out, meta, records)
        return
    dtype = torch.bfloat16
    lengths = CUDA_LENGTHS[-1:] if args.quick else CUDA_LENGTHS
    records = []

    def keep(new_records: list[dict]) -> None:  # report and save after every part (a deadline may cut the run)
        records.extend(new_records)
        _bench.write(args.out, meta, records, partial=True)

    for seq_len in lengths:
        keep([bench_op(seq_len, "cuda", dtype)])
        _bench.report(records[-1])
    keep(bench_masks(lengths[-1], [0.0, 0.5, 0.75], ["flex"], "cuda", dtype))
    keep(bench_masks(lengths[-1], [0.5], ["triton"], "cuda", dtype))
    for local_groups in (4, 6):
        keep([bench_op(lengths[-1], "cuda", dtype, local_groups)])
        _bench.report(records[-1])
    keep([bench_backward(32768 if not args.quick else lengths[-1], "cuda", dtype)])
    _bench.report(records[-1])
    _bench.write(args.out, meta, records)


if __name__ == "__main__":
    main()
