"""Benchmark the RMSNorm and RoPE ops against their eager PyTorch references, forward and forward+backward.

Usage: python -m kernels.norm_rope.bench [--out results.json] [--device cuda|cpu]
Baseline: reference.py (the model's eager code before these ops), measured in the same run. Shapes are the
model-step config's: RMSNorm over [8 * 4096, 2048], RoPE on q [8, 16, 4096, 128] (a [B, S, H, Dh] view).
Reports ms, GB/s of the op's own traffic (read x + write out, fwd; about 2x that with the backward) and speedups.
"""

from __future__ import annotations

import torch

from kernels import _bench
from kernels.norm_rope import rms_norm, rms_norm_reference, rope, rope_reference

CUDA_SIZES = {"rows": 8 * 4096, "dim": 2048, "batch": 8, "heads": 16, "seq": 4096, "head_dim": 128}
CPU_SIZES = {"rows": 512, "dim": 256, "batch": 2, "heads": 4, "seq": 128, "head_dim": 32}


def _time_pair(name: str, fns: dict, inputs: list, nbytes: int, device: str) -> dict:
    record = {"op": name}
    for label, fn in fns.items():
        record[f"{label}_fwd_ms"] = _bench.time_ms(lambda fn=fn: fn(*inputs), device)
        step = lambda fn=fn: fn(*inputs).float().sum().backward()  # noqa: E731
        record[f"{label}_fwd_bwd_ms"] = _bench.time_ms(step, device)
    record["op_fwd_gbps"] = nbytes / record["op_fwd_ms"] / 1e6
    record["speedup_fwd"] = record["reference_fwd_ms"] / record["op_fwd_ms"]
    record["speedup_fwd_bwd"] = record["reference_fwd_bwd_ms"] / record["op_fwd_bwd_ms"]
    return record


def main() -> None:
    args = _bench.parse_args(__doc__)
    meta = _bench.header("norm_rope", args.device)
    sizes = CUDA_SIZES if args.device == "cuda" else CPU_SIZES
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    x = torch.randn(sizes["rows"], sizes["dim"], device=args.device, dtype=dtype, requires_grad=True)
    weight = torch.ones(sizes["dim"], device=args.device, dtype=dtype, requires_grad=True)
    records = [_time_pair("rms_norm", {"reference": lambda a, w: rms_norm_reference(a, w, 1e-6),
                                       "op": lambda a, w: rms_norm(a, w, 1e-6)},
                          [x, weight], 2 * x.numel() * x.element_size(), args.device)]  # fmt: skip
    _bench.report(records[-1])
    b, h, s, d = sizes["batch"], sizes["heads"], sizes["seq"], sizes["head_dim"]
    q = torch.randn(b, s, h, d, device=args.device, dtype=dtype).transpose(1, 2).requires_grad_()
    angles = torch.rand(b, s, d // 2, device=args.device) * 6.0
    cos, sin = angles.cos(), angles.sin()
    records.append(_time_pair("rope", {"reference": lambda a: rope_reference(a, cos, sin),
                                       "op": lambda a: rope(a, cos, sin)},
                              [q], 2 * q.numel() * q.element_size(), args.device))  # fmt: skip
    _bench.report(records[-1])
    _bench.write(args.out, meta, records)


if __name__ == "__main__":
    main()
