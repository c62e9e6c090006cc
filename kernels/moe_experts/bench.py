"""Benchmark moe_experts (Triton grouped matmuls) against the loop-over-experts reference, forward and backward.

Usage: python -m kernels.moe_experts.bench [--out results.json] [--device cuda|cpu]
Reports ms and useful TFLOP/s: forward 3 matmuls of 2*N*D*F, backward twice that (N = T*K token copies; the
op's recompute of gate/up in the backward is not counted).
Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim.
"""

from __future__ import annotations

import torch

from kernels import _bench
from kernels.moe_experts import moe_experts, moe_experts_reference

CUDA_SHAPES = [(8192, 2048, 128, 8, 768), (16384, 2048, 64, 8, 1024)]  # (T, D, E, K, F): Qwen3-30B-A3B-like
CPU_SHAPES = [(256, 128, 8, 2, 64)]


def _inputs(num_tokens, dim, num_experts, top_k, ffn_dim, device, dtype):
    topk_ids_TK = torch.rand(num_tokens, num_experts, device=device).argsort(dim=1)[:, :top_k]
    topk_weights_TK = torch.softmax(torch.randn(num_tokens, top_k, device=device), dim=1).requires_grad_()
    x_TD = torch.randn(num_tokens, dim, device=device, dtype=dtype, requires_grad=True)
    weights = [
        (torch.randn(num_experts, *shape, device=device) / shape[1] ** 0.5).to(dtype).requires_grad_()
        for shape in ((ffn_dim, dim), (ffn_dim, dim), (dim, ffn_dim))
    ]
    return x_TD, topk_ids_TK, topk_weights_TK, *weights


def bench_shape(shape: tuple[int, int, int, int, int], device: str, dtype: torch.dtype) -> dict:
    inputs = _inputs(*shape, device, dtype)
    num_tokens, dim, num_experts, top_k, ffn_dim = shape
    flops_fwd = 3 * 2 * num_tokens * top_k * dim * ffn_dim
    record = dict(zip(("T", "D", "E", "K", "F"), shape, strict=True)) | {"dtype": str(dtype).removeprefix("torch.")}
    for name, fn in (("reference", moe_experts_reference), ("op", moe_experts)):
        record[f"{name}_fwd_ms"] = _bench.time_ms(lambda fn=fn: fn(*inputs), device)
        record[f"{name}_fwd_tflops"] = flops_fwd / record[f"{name}_fwd_ms"] / 1e9
        step = lambda fn=fn: fn(*inputs).float().square().mean().backward()  # noqa: E731
        record[f"{name}_fwd_bwd_ms"] = _bench.time_ms(step, device)
        record[f"{name}_fwd_bwd_tflops"] = 3 * flops_fwd / record[f"{name}_fwd_bwd_ms"] / 1e9
    record["speedup_fwd"] = record["reference_fwd_ms"] / record["op_fwd_ms"]
    record["speedup_fwd_bwd"] = record["reference_fwd_bwd_ms"] / record["op_fwd_bwd_ms"]
    return record


def main() -> None:
    args = _bench.parse_args(__doc__)
    meta = _bench.header("moe_experts", args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    records = []
    for shape in CUDA_SHAPES if args.device == "cuda" else CPU_SHAPES:
        records.append(bench_shape(shape, args.device, dtype))
        _bench.report(records[-1])
    _bench.write(args.out, meta, records)


if __name__ == "__main__":
    main()
