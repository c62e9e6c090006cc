"""Compiles every Triton kernel ahead of time for an sm_90 (H100/H200) target: no GPU needed.

The interpreter accepts code the GPU compiler rejects (it let a plain-float module global into a kernel, which
compiled Triton refuses), so CPU CI would otherwise only find such bugs on the first GPU run. Run as
`TRITON_INTERPRET=0 python -m tests.kernels.aot_compile`; prints one line per kernel variant, exit 1 on failure.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("aot_compile: needs compiled Triton; run with TRITON_INTERPRET=0")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels.fused_logprobs import kernel as fused_logprobs_kernel  # noqa: E402
from kernels.moe_experts import kernel as moe_experts_kernel  # noqa: E402
from kernels.moe_experts.gemm import BLOCK_ROWS, MM_CONFIG, WGRAD_CONFIG  # noqa: E402
from kernels.moe_experts.op import FUSED_CONFIG  # noqa: E402
from kernels.norm_rope import kernel as norm_rope_kernel  # noqa: E402
from kernels.rrattention import kernel as rrattention_kernel  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def _launch(config):
    return {key: config[key] for key in ("num_warps", "num_stages")}


def _moe_variants(moe, dt, precision):
    """The routed-expert kernels with the block sizes and launch options op.py / gemm.py use on CUDA."""
    rows = {"src_ptr": f"*{dt}", "dst_ptr": f"*{dt}", "index_ptr": "*i64", "scale_ptr": "*fp32"}
    yield f"moe gather {dt}", moe.gather_rows_kernel, rows, {"HAS_SCALE": True, "BLOCK_R": 16, "BLOCK_D": 128}, 4
    rows = {"rows_ptr": f"*{dt}", "rows2_ptr": f"*{dt}", "out_ptr": f"*{dt}", "slot_ptr": "*i64", "weight_ptr": "*fp32"}
    blocks = {"HAS_WEIGHT": True, "HAS_SECOND": True, "BLOCK_T": 16, "BLOCK_D": 128}
    yield f"moe combine {dt}", moe.combine_rows_kernel, rows, blocks, 4
    mm = {"a_ptr": f"*{dt}", "b_ptr": f"*{dt}", "c_ptr": f"*{dt}"}
    schedule = {name: "*i64" for name in ("tile_expert_ptr", "tile_row_start_ptr", "tile_row_end_ptr")}
    blocks = {"PRECISION": precision, "BLOCK_N": BLOCK_ROWS, "BLOCK_M": MM_CONFIG["BLOCK_M"],
              "BLOCK_P": MM_CONFIG["BLOCK_P"]}  # fmt: skip
    yield f"moe grouped_mm {dt}", moe.grouped_mm_kernel, mm | schedule, blocks, _launch(MM_CONFIG)
    blocks = {"PRECISION": precision} | {key: WGRAD_CONFIG[key] for key in ("BLOCK_M", "BLOCK_P", "BLOCK_N")}
    wgrad = mm | {"offsets_ptr": "*i64"}
    yield f"moe grouped_wgrad {dt}", moe.grouped_wgrad_kernel, wgrad, blocks, _launch(WGRAD_CONFIG)
    fused = {"PRECISION": precision, "BLOCK_N": BLOCK_ROWS, "BLOCK_F": FUSED_CONFIG["BLOCK_F"],
             "BLOCK_K": FUSED_CONFIG["BLOCK_K"]}  # fmt: skip
    types = {name: f"*{dt}" for name in ("x_ptr", "w_gate_ptr", "w_up_ptr", "hidden_ptr")}
    types |= {"gate_ptr": "*fp32", "up_ptr": "*fp32"} | schedule
    yield f"moe swiglu_gate_up {dt}", moe.swiglu_gate_up_kernel, types, fused | {"SAVE": True}, _launch(FUSED_CONFIG)
    types = {name: f"*{dt}" for name in ("grad_y_ptr", "w_down_ptr", "x_ptr", "w_gate_ptr", "w_up_ptr",
                                           "grad_gate_ptr", "grad_up_ptr", "weighted_hidden_ptr")}  # fmt: skip
    types |= {name: "*fp32" for name in ("gate_ptr", "up_ptr", "weight_ptr", "partial_grad_weight_ptr")} | schedule
    for recompute in (False, True):
        yield (f"moe swiglu_backward {dt} recompute={recompute}", moe.swiglu_backward_kernel, types,
               fused | {"RECOMPUTE": recompute}, _launch(FUSED_CONFIG))  # fmt: skip


def _norm_rope_variants(nr):
    for dt in ("bf16", "fp32"):
        types = {"x_ptr": f"*{dt}", "weight_ptr": f"*{dt}", "out_ptr": f"*{dt}", "rstd_ptr": "*fp32", "eps": "fp32"}
        yield f"rms_norm forward {dt}", nr.rms_norm_forward_kernel, types, {"BLOCK_R": 4, "BLOCK_D": 2048}, 4
        types = {"grad_out_ptr": f"*{dt}", "x_ptr": f"*{dt}", "weight_ptr": f"*{dt}", "rstd_ptr": "*fp32",
                 "grad_x_ptr": f"*{dt}", "partial_grad_weight_ptr": "*fp32"}  # fmt: skip
        yield f"rms_norm backward {dt}", nr.rms_norm_backward_kernel, types, {"BLOCK_R": 4, "BLOCK_D": 2048}, 4
        types = {"x_ptr": f"*{dt}", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "out_ptr": f"*{dt}"}
        blocks = {"NEOX": False, "SIGN": -1, "BLOCK_S": 64, "BLOCK_P": 64}
        yield f"rope {dt}", nr.rope_kernel, types, blocks, 4


def _variants():
    """(label, kernel, pointer/float argument types (others default to i32), constexprs, num_warps or options)."""
    fl = fused_logprobs_kernel
    stats = {"logits_ptr": "*fp32", "targets_ptr": "*i64", "inv_temperature": "fp32"}
    stats |= {name: "*fp32" for name in ("max_ptr", "sumexp_ptr", "sumexpz_ptr", "target_z_ptr")}
    grad = {"logits_ptr": "*fp32", "targets_ptr": "*i64", "inv_temperature": "fp32"}
    grad |= {name: "*fp32" for name in ("lse_ptr", "mean_z_ptr", "grad_logprobs_ptr", "grad_entropy_ptr")}
    yield "fused_logprobs stats", fl.online_softmax_stats_kernel, stats, {"BLOCK_T": 16, "BLOCK_V": 512}, 8
    yield "fused_logprobs grad", fl.logits_grad_kernel, grad, {"BLOCK_T": 16, "BLOCK_V": 512}, 8
    yield from _norm_rope_variants(norm_rope_kernel)
    for variant in _per_dtype_variants(moe_experts_kernel, rrattention_kernel):
        # fp32 is the test models' dtype: only its cheap copy/estimate kernels are compiled here (the matmul
        # kernels' fp32 builds take minutes on CI; the GPU run's cuda-float32 tests compile them).
        if " fp32" not in variant[0] or variant[0].startswith(("moe gather", "moe combine", "rr estimate")):
            yield variant


def _per_dtype_variants(moe, rr):
    for dt, precision in (("fp32", "ieee"), ("bf16", "tf32")):
        yield from _moe_variants(moe, dt, precision)
        est = {"q_ptr": f"*{dt}", "ksum_ptr": "*fp32", "scores_ptr": "*fp32", "qk_scale": "fp32"}
        for per_block in (16, 4):  # block 128 / stride 8, and block 32 / stride 8
            blocks = {"STRIDE": 8, "R": per_block, "R_TILE": 16, "C_TILE": 64, "BLOCK_D": 128, "PRECISION": precision}
            yield f"rr estimate {dt} R={per_block}", rr.rr_estimate_kernel, est, blocks, 4
        attn = {name: f"*{dt}" for name in ("q_ptr", "k_ptr", "v_ptr", "out_ptr")}
        attn |= {"lse_ptr": "*fp32", "block_ids_ptr": "*i32", "block_counts_ptr": "*i32", "sm_scale_log2": "fp32"}
        blocks = {"BLOCK": 128, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 128, "PRECISION": precision}
        yield f"rr block_sparse_attention {dt}", rr.block_sparse_attention_kernel, attn, blocks, 4
        grads = {name: f"*{dt}" for name in ("q_ptr", "k_ptr", "v_ptr", "grad_out_ptr", "grad_q_ptr", "grad_k_ptr",
                                              "grad_v_ptr")}  # fmt: skip
        grads |= {"lse_ptr": "*fp32", "delta_ptr": "*fp32", "sm_scale_log2": "fp32", "sm_scale": "fp32"}
        grads |= {name: "*i32" for name in ("block_ids_ptr", "block_counts_ptr", "q_block_ids_ptr",
                                             "q_block_counts_ptr")}  # fmt: skip
        yield f"rr block_sparse_attention dq {dt}", rr.block_sparse_attention_dq_kernel, grads, blocks, 4
        yield f"rr block_sparse_attention dkdv {dt}", rr.block_sparse_attention_dkdv_kernel, grads, blocks, 4


def main() -> int:
    failures = 0
    for label, fn, types, constexprs, options in _variants():
        signature = {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in fn.arg_names}
        try:
            compiled = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                target=TARGET,
                options=options if isinstance(options, dict) else {"num_warps": options},
            )
            print(f"OK   {label}: shared memory {compiled.metadata.shared} B")
        except Exception as error:  # report every kernel, then fail once
            failures += 1
            print(f"FAIL {label}: {type(error).__name__}: {error}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
