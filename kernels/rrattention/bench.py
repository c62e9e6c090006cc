"""Benchmark RRAttention prefill: Triton estimate + block-sparse attention vs the reference and dense SDPA.

Usage: python -m kernels.rrattention.bench [--out results.json] [--device cuda|cpu]
Reports ms of the estimate, the sparse attention and the whole op, the mask sparsity, and TFLOP/s of the whole
op counted as the equivalent dense causal attention (2 * 2 * B * H * L^2 / 2 * d), i.e. "effective" throughput.
The [L, L] reference only runs up to L = 8192 (its scores take B * H * L^2 * 4 bytes). Random q/k/v have flat
attention, so tau = 0.95 prunes little here; real long prompts reach ~45-50 % (docs/algorithms.md, 'RRAttention').
Shape legend: B batch, H query heads, G kv heads, L seq len, d head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import _bench
from kernels.rrattention import rr_attention, rr_attention_reference, rr_estimate_triton

CUDA_SHAPES = [(1, 32, 8, 8192, 128), (1, 32, 8, 32768, 128), (1, 32, 8, 65536, 128)]  # (B, H, G, L, d)
CPU_SHAPES = [(1, 8, 2, 1024, 64)]
REFERENCE_MAX_LEN = 8192


def bench_shape(shape: tuple[int, int, int, int, int], device: str, dtype: torch.dtype) -> dict:
    batch, heads, kv_heads, seq_len, head_dim = shape
    q_BHLd = torch.randn(batch, heads, seq_len, head_dim, device=device, dtype=dtype)
    k_BGLd, v_BGLd = (torch.randn(batch, kv_heads, seq_len, head_dim, device=device, dtype=dtype) for _ in range(2))
    k_BHLd, v_BHLd = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k_BGLd, v_BGLd))
    dense_flops = 2 * 2 * batch * heads * seq_len * seq_len // 2 * head_dim
    record = {"B": batch, "H": heads, "G": kv_heads, "L": seq_len, "d": head_dim, "block": 128, "stride": 8,
              "tau": 0.95, "dtype": str(dtype).removeprefix("torch.")}  # fmt: skip
    record["sparsity"] = rr_attention(q_BHLd, k_BGLd, v_BGLd)[2].item()
    record["op_ms"] = _bench.time_ms(lambda: rr_attention(q_BHLd, k_BGLd, v_BGLd), device)
    record["op_effective_tflops"] = dense_flops / record["op_ms"] / 1e9
    if device == "cuda":
        record["estimate_ms"] = _bench.time_ms(lambda: rr_estimate_triton(q_BHLd, k_BGLd, 128, 8), device)
    sdpa = lambda: F.scaled_dot_product_attention(q_BHLd, k_BHLd, v_BHLd, is_causal=True)  # noqa: E731
    record["dense_sdpa_ms"] = _bench.time_ms(sdpa, device)
    record["speedup_vs_dense_sdpa"] = record["dense_sdpa_ms"] / record["op_ms"]
    if seq_len <= REFERENCE_MAX_LEN:
        reference = lambda: rr_attention_reference(q_BHLd, k_BGLd, v_BGLd, 128, 8, 0.95)  # noqa: E731
        record["reference_ms"] = _bench.time_ms(reference, device)
        record["speedup_vs_reference"] = record["reference_ms"] / record["op_ms"]
    return record


def main() -> None:
    args = _bench.parse_args(__doc__)
    meta = _bench.header("rrattention", args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    records = []
    for shape in CUDA_SHAPES if args.device == "cuda" else CPU_SHAPES:
        records.append(bench_shape(shape, args.device, dtype))
        _bench.report(records[-1])
        if args.device == "cuda":
            torch.cuda.empty_cache()
    _bench.write(args.out, meta, records)


if __name__ == "__main__":
    main()
