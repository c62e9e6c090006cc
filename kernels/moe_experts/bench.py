"""Benchmark moe_experts against the stock grouped-matmul formulation (and the loop reference), fwd and fwd+bwd.

Usage: python -m kernels.moe_experts.bench [--out results.json] [--device cuda|cpu] [--sweep]
Baseline, measured in the same run: `grouped_mm_formulation` below, i.e. what torchtitan-style MoE code does
with stock PyTorch: stable argsort of the expert ids, gather, three torch._grouped_mm calls (gate, up, down),
gate weighting, index_add_, backward by autograd (it keeps gate, up and hidden in bf16 for the backward).
Ours: the op with the backend its dispatch rule picks (printed as `backend`), and each backend forced.
Reports ms and useful TFLOP/s: forward 3 matmuls of 2*N*D*F, backward twice that (N = T*K token copies; the
recompute variant's extra products are not counted), peak memory and the output's relative difference from
the baseline. --sweep also times a few tile configurations of the Triton kernels at the first shape.
Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import _bench
from kernels.moe_experts import gemm as gemm_module
from kernels.moe_experts import moe_backend, moe_experts, moe_experts_reference, select_backend
from kernels.moe_experts import op as op_module

# (T, D, E, K, F): Qwen3-30B-A3B-like, the model-step config's layer, DeepSeek-V3-like width.
CUDA_SHAPES = [(8192, 2048, 128, 8, 768), (16384, 2048, 64, 8, 1024), (4096, 4096, 256, 8, 2048)]
CPU_SHAPES = [(256, 128, 8, 2, 64)]
SWEEP = [  # (fused BLOCK_F, fused warps, mm BLOCK_P, wgrad BLOCK_M/P, stages)
    (64, 8, 128, 128, 3), (128, 8, 128, 128, 3), (64, 4, 64, 64, 4), (64, 8, 256, 128, 3),
]


def grouped_mm_formulation(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF):
    """The stock-PyTorch baseline (see module doc); autograd differentiates it."""
    num_tokens, top_k = topk_ids_TK.shape
    order_N = torch.argsort(topk_ids_TK.reshape(-1), stable=True)
    counts_E = torch.zeros(w_gate_EFD.shape[0], dtype=torch.int64, device=x_TD.device).index_add_(
        0, topk_ids_TK.reshape(-1), torch.ones_like(order_N))
    offs_E = torch.cumsum(counts_E, 0).to(torch.int32)
    token_N = order_N // top_k
    x_ND = x_TD[token_N]
    gate_NF = torch._grouped_mm(x_ND, w_gate_EFD.transpose(1, 2), offs=offs_E)
    up_NF = torch._grouped_mm(x_ND, w_up_EFD.transpose(1, 2), offs=offs_E)
    out_ND = torch._grouped_mm(F.silu(gate_NF) * up_NF, w_down_EDF.transpose(1, 2), offs=offs_E)
    out_ND = out_ND * topk_weights_TK.reshape(-1)[order_N, None].to(out_ND.dtype)
    return torch.zeros_like(x_TD).index_add_(0, token_N, out_ND)


def _inputs(num_tokens, dim, num_experts, top_k, ffn_dim, device, dtype):
    topk_ids_TK = torch.rand(num_tokens, num_experts, device=device).argsort(dim=1)[:, :top_k]
    topk_weights_TK = torch.softmax(torch.randn(num_tokens, top_k, device=device), dim=1).to(dtype).requires_grad_()
    x_TD = torch.randn(num_tokens, dim, device=device, dtype=dtype, requires_grad=True)
    weights = [
        (torch.randn(num_experts, *shape, device=device) / shape[1] ** 0.5).to(dtype).requires_grad_()
        for shape in ((ffn_dim, dim), (ffn_dim, dim), (dim, ffn_dim))
    ]
    return x_TD, topk_ids_TK, topk_weights_TK, *weights


def _variants(device: str, first_shape: bool):
    """(name, fn): the baseline, the op as dispatched, each backend forced, the recompute mode, the loop."""
    variants = [("baseline", grouped_mm_formulation), ("op", moe_experts)]
    if device == "cuda":
        for backend in sorted(gemm_module.GEMMS):
            variants.append((f"op_{backend}", _forced(backend, recompute=False)))
        variants.append(("op_recompute", _forced(None, recompute=True)))
        if first_shape:  # the loop reference takes seconds per call at the larger shapes
            variants.append(("reference", moe_experts_reference))
    else:
        variants.append(("reference", moe_experts_reference))
    return variants


def _forced(backend: str | None, recompute: bool):
    def run(*args):
        if backend is None:
            return moe_experts(*args, recompute=recompute)
        with moe_backend(backend):
            return moe_experts(*args, recompute=recompute)

    return run


def bench_shape(shape: tuple[int, int, int, int, int], device: str, dtype: torch.dtype, first: bool) -> dict:
    inputs = _inputs(*shape, device, dtype)
    num_tokens, dim, num_experts, top_k, ffn_dim = shape
    flops_fwd = 3 * 2 * num_tokens * top_k * dim * ffn_dim
    record = dict(zip(("T", "D", "E", "K", "F"), shape, strict=True)) | {"dtype": str(dtype).removeprefix("torch.")}
    record["backend"] = select_backend(inputs[0], *inputs[3:]) if device == "cuda" else "cpu (grouped_cpu)"
    with torch.no_grad():
        baseline_y = grouped_mm_formulation(*inputs).float()
    for name, fn in _variants(device, first):
        with torch.no_grad():
            y = fn(*inputs).float()
        record[f"{name}_rel_diff_vs_baseline"] = float((y - baseline_y).norm() / baseline_y.norm())
        record[f"{name}_fwd_ms"] = _bench.time_ms(lambda fn=fn: fn(*inputs), device)
        step = lambda fn=fn: fn(*inputs).float().square().mean().backward()  # noqa: E731
        record[f"{name}_fwd_bwd_ms"] = _bench.time_ms(step, device)
        record[f"{name}_fwd_bwd_tflops"] = 3 * flops_fwd / record[f"{name}_fwd_bwd_ms"] / 1e9
        record[f"{name}_peak_mb"] = _bench.peak_memory_mb(step, device)
    for name, _ in _variants(device, first)[1:]:
        record[f"{name}_speedup_fwd_bwd_vs_baseline"] = record["baseline_fwd_bwd_ms"] / record[f"{name}_fwd_bwd_ms"]
        record[f"{name}_speedup_fwd_vs_baseline"] = record["baseline_fwd_ms"] / record[f"{name}_fwd_ms"]
    return record


def sweep(shape, device: str, dtype: torch.dtype) -> list[dict]:
    """Times fwd+bwd of each backend under a few tile configurations; restores the defaults afterwards."""
    inputs = _inputs(*shape, device, dtype)
    saved = (dict(op_module.FUSED_CONFIG), dict(gemm_module.MM_CONFIG), dict(gemm_module.WGRAD_CONFIG))
    records = []
    try:
        for block_f, warps, mm_p, wgrad_mp, stages in SWEEP:
            op_module.FUSED_CONFIG.update(BLOCK_F=block_f, num_warps=warps, num_stages=stages)
            gemm_module.MM_CONFIG.update(BLOCK_P=mm_p, num_warps=warps, num_stages=stages)
            gemm_module.WGRAD_CONFIG.update(BLOCK_M=wgrad_mp, BLOCK_P=wgrad_mp, num_warps=warps, num_stages=stages)
            record = {"fused_block_f": block_f, "warps": warps, "mm_block_p": mm_p, "wgrad_block": wgrad_mp,
                      "stages": stages}  # fmt: skip
            for backend in sorted(gemm_module.GEMMS):
                step = lambda b=backend: _forced(b, False)(*inputs).float().square().mean().backward()  # noqa: E731
                try:
                    record[f"{backend}_fwd_bwd_ms"] = _bench.time_ms(step, device)
                except Exception as error:  # a config that does not fit (shared memory) is reported, not fatal
                    record[f"{backend}_error"] = f"{type(error).__name__}: {str(error)[:200]}"
            records.append(record)
            _bench.report(record)
    finally:
        op_module.FUSED_CONFIG.update(saved[0])
        gemm_module.MM_CONFIG.update(saved[1])
        gemm_module.WGRAD_CONFIG.update(saved[2])
    return records


def main() -> None:
    parser = _bench.argument_parser(__doc__)
    parser.add_argument("--sweep", action="store_true", help="also time tile configurations (CUDA)")
    args = parser.parse_args()
    meta = _bench.header("moe_experts", args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    records = []
    for index, shape in enumerate(CUDA_SHAPES if args.device == "cuda" else CPU_SHAPES):
        records.append(bench_shape(shape, args.device, dtype, first=index == 0))
        _bench.report(records[-1])
        _bench.write(args.out, meta, records, partial=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if args.sweep and args.device == "cuda":
        meta["sweep"] = sweep(CUDA_SHAPES[0], args.device, dtype)
    _bench.write(args.out, meta, records)


if __name__ == "__main__":
    main()
