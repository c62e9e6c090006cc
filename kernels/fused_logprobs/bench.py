"""Benchmark fused_logprobs (vocab-chunked, Triton) against the full-logits reference, forward and backward.

Usage: python -m kernels.fused_logprobs.bench [--out results.json] [--device cuda|cpu]
Reports ms, useful TFLOP/s (forward 2TDV, backward 4TDV; the op's recompute of the chunk logits is not counted)
and, on CUDA, peak extra memory: the point of the chunking is that [T, V] fp32 logits never exist.
Shape legend: T tokens, D model dim, V vocab.
"""

from __future__ import annotations

import torch

from kernels import _bench
from kernels.fused_logprobs import fused_logprobs, fused_logprobs_reference

CUDA_SHAPES = [(4096, 2048, 151936), (8192, 4096, 151936)]  # (T, D, V): Qwen-sized vocab
CPU_SHAPES = [(256, 256, 8192)]


def _fwd_bwd(fn, hidden_TD, lm_head_VD, targets_T):
    logprobs_T, entropy_T = fn(hidden_TD, lm_head_VD, targets_T)
    (logprobs_T.sum() + entropy_T.sum()).backward()


def bench_shape(num_tokens: int, dim: int, vocab: int, device: str, dtype: torch.dtype) -> dict:
    hidden_TD = torch.randn(num_tokens, dim, device=device, dtype=dtype, requires_grad=True)
    lm_head_VD = (torch.randn(vocab, dim, device=device) / dim**0.5).to(dtype).requires_grad_()
    targets_T = torch.randint(0, vocab, (num_tokens,), device=device)
    record = {"T": num_tokens, "D": dim, "V": vocab, "dtype": str(dtype).removeprefix("torch.")}
    for name, fn in (("reference", fused_logprobs_reference), ("op", fused_logprobs)):
        record[f"{name}_fwd_ms"] = _bench.time_ms(lambda fn=fn: fn(hidden_TD, lm_head_VD, targets_T), device)
        step = lambda fn=fn: _fwd_bwd(fn, hidden_TD, lm_head_VD, targets_T)  # noqa: E731
        record[f"{name}_fwd_bwd_ms"] = _bench.time_ms(step, device)
        record[f"{name}_fwd_bwd_tflops"] = 6 * num_tokens * dim * vocab / record[f"{name}_fwd_bwd_ms"] / 1e9
        record[f"{name}_peak_mb"] = _bench.peak_memory_mb(step, device)
    record["speedup_fwd_bwd"] = record["reference_fwd_bwd_ms"] / record["op_fwd_bwd_ms"]
    return record


def main() -> None:
    args = _bench.parse_args(__doc__)
    meta = _bench.header("fused_logprobs", args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    records = []
    for shape in CUDA_SHAPES if args.device == "cuda" else CPU_SHAPES:
        records.append(bench_shape(*shape, args.device, dtype))
        _bench.report(records[-1])
    _bench.write(args.out, meta, records)


if __name__ == "__main__":
    main()
