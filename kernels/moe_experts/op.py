"""Routed-expert FFN of an MoE layer: permute by expert, grouped SwiGLU matmuls, weighted un-permute.

Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim, N = T * K token copies.

`moe_experts` is what the model calls. On CUDA (or inside `kernels.force_triton()`) it runs the custom op
`kernels::moe_experts` (visible to torch.compile as one op) with one of two grouped-GEMM providers
(gemm.py; rule in `select_backend`, docs/kernels.md, 'Dispatch'):
  grouped_mm  torch._grouped_mm for the down projection, the three weight gradients and the two input
              gradients (6 of the 9 products), where it runs fused: sm90/sm100, bf16, D and F multiples of 8;
  triton      kernel.py's grouped kernels for those 6 (any other GPU, fp32, odd sizes).
Either way the 3 products whose results SwiGLU needs at fp32 accuracy run in the two fused Triton kernels
(kernel.py: gate/up with the SwiGLU epilogue; dL/dhidden with the SwiGLU-derivative epilogue): the stock op
only writes bf16, and rounding gate, up and dL/dhidden to bf16 is what cost the all-tokens-on-one-expert
case its weight-gradient accuracy. On CPU it is grouped_cpu.py's `torch._grouped_mm` formulation (== the
reference to fp32 rounding) or the reference loop.

Data flow (one launch per arrow):
  forward   x_TD --gather--> x_ND --fused gate/up--> hidden_NF (+ gate/up fp32 saved) --mm Wd--> out_ND
            --combine sum_k w[t, k] * out[slot(t, k)]--> y_TD
  backward  dy_TD --gather--> dy_ND --fused dL/dhidden (gate/up saved, or recomputed in the same K loop)-->
            grad_gate_NF, grad_up_NF, w*hidden_NF, dL/dw partial sums;  wgrad x3;  mm Wg, mm Wu --combine--> dx
`recompute=True` keeps no [N, F] activation between forward and backward (2 more products in the backward).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import triton
from torch import Tensor

from kernels._dispatch import launcher, use_triton
from kernels.moe_experts.gemm import (
    BLOCK_ROWS,
    GEMMS,
    Route,
    dot_precision,
    launch_options,
    route,
    stock_gemm_is_fast,
)
from kernels.moe_experts.grouped_cpu import grouped_mm_available, moe_experts_grouped_cpu
from kernels.moe_experts.kernel import (
    combine_rows_kernel,
    gather_rows_kernel,
    swiglu_backward_kernel,
    swiglu_gate_up_kernel,
)
from kernels.moe_experts.reference import moe_experts_reference

# Fused kernels on CUDA: 128 rows x 64 F columns x 64 D per step, 8 warps, 3 stages. Two (forward) or three
# (recomputing backward) fp32 accumulators of 128 x 64 stay at <= 96 registers per thread.
FUSED_CONFIG = {"BLOCK_F": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}
_BLOCK_ROWS_COPY = 16  # gather/combine: 16 rows x 128-column chunks per program; pure bandwidth, any tile is fine.
_BLOCK_COLS_COPY = 128
_state = threading.local()


@contextlib.contextmanager
def moe_backend(name: str) -> Iterator[None]:
    """Forces the grouped-GEMM provider ("grouped_mm" or "triton") for this thread (benchmarks and tests)."""
    if name not in GEMMS:
        raise ValueError(f"kernels.moe_experts.moe_backend: unknown backend {name!r}; choose one of {sorted(GEMMS)}.")
    previous = getattr(_state, "backend", None)
    _state.backend = name
    try:
        yield
    finally:
        _state.backend = previous


def select_backend(x_TD: Tensor, w_gate_EFD: Tensor, w_up_EFD: Tensor, w_down_EDF: Tensor) -> str:
    """The provider the op uses for these inputs: a forced one, else grouped_mm where it is fused, else triton."""
    forced = getattr(_state, "backend", None)
    if forced is not None:
        return forced
    return "grouped_mm" if stock_gemm_is_fast(x_TD, w_gate_EFD, w_up_EFD, w_down_EDF) else "triton"


def _validate(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF) -> None:
    where = "kernels.moe_experts"
    num_tokens, dim = x_TD.shape if x_TD.dim() == 2 else (-1, -1)
    num_experts, ffn_dim = w_gate_EFD.shape[:2] if w_gate_EFD.dim() == 3 else (-1, -1)
    expected = {
        "x_TD": (x_TD, (num_tokens, dim)),
        "w_gate_EFD": (w_gate_EFD, (num_experts, ffn_dim, dim)),
        "w_up_EFD": (w_up_EFD, (num_experts, ffn_dim, dim)),
        "w_down_EDF": (w_down_EDF, (num_experts, dim, ffn_dim)),
        "topk_weights_TK": (topk_weights_TK, (num_tokens, topk_ids_TK.shape[-1])),
        "topk_ids_TK": (topk_ids_TK, (num_tokens, topk_ids_TK.shape[-1])),
    }
    for name, (tensor, shape) in expected.items():
        if min(shape) < 0 or tuple(tensor.shape) != shape:
            got = {key: tuple(value[0].shape) for key, value in expected.items()}
            raise ValueError(
                f"{where}: {name} has shape {tuple(tensor.shape)}, expected {shape}; all shapes: {got}. Weights are "
                f"stored like nn.Linear ([out, in]) stacked over experts; flatten batch and sequence into T."
            )
    if topk_ids_TK.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{where}: topk_ids_TK must be int32/int64, got {topk_ids_TK.dtype}; pass router indices.")


def _gather_rows(src_RD: Tensor, index_N: Tensor, scale_N: Tensor | None = None) -> Tensor:
    dst_ND = src_RD.new_empty(index_N.shape[0], src_RD.shape[1])
    launcher(gather_rows_kernel, src_RD)[(triton.cdiv(index_N.shape[0], _BLOCK_ROWS_COPY),)](
        src_RD, dst_ND, index_N, scale_N if scale_N is not None else index_N, index_N.shape[0], src_RD.shape[1],
        src_RD.stride(0), dst_ND.stride(0), HAS_SCALE=scale_N is not None, BLOCK_R=_BLOCK_ROWS_COPY,
        BLOCK_D=_BLOCK_COLS_COPY,
    )  # fmt: skip
    return dst_ND


def _combine_rows(rows_ND: Tensor, rows2_ND: Tensor | None, slot_N: Tensor, weight_N: Tensor | None,
                  num_tokens: int, out_dtype: torch.dtype) -> Tensor:  # fmt: skip
    """out[t] = sum_k weight[t, k] * (rows[slot] + rows2[slot]) with fp32 accumulation."""
    out_TD = rows_ND.new_empty(num_tokens, rows_ND.shape[1], dtype=out_dtype)
    if rows2_ND is not None and rows2_ND.stride() != rows_ND.stride():  # the kernel reads both with one stride
        rows_ND, rows2_ND = rows_ND.contiguous(), rows2_ND.contiguous()
    top_k = slot_N.shape[0] // max(num_tokens, 1)
    grid = (triton.cdiv(num_tokens, _BLOCK_ROWS_COPY), triton.cdiv(rows_ND.shape[1], _BLOCK_COLS_COPY))
    launcher(combine_rows_kernel, rows_ND)[grid](
        rows_ND, rows2_ND if rows2_ND is not None else rows_ND, out_TD, slot_N,
        weight_N if weight_N is not None else slot_N, num_tokens, top_k, rows_ND.shape[1], rows_ND.stride(0),
        out_TD.stride(0), HAS_WEIGHT=weight_N is not None, HAS_SECOND=rows2_ND is not None,
        BLOCK_T=_BLOCK_ROWS_COPY, BLOCK_D=_BLOCK_COLS_COPY,
    )  # fmt: skip
    return out_TD


def _swiglu_gate_up(x_ND: Tensor, w_gate_EFD: Tensor, w_up_EFD: Tensor, rt: Route, save: bool):
    """(hidden_NF in x's dtype, gate_NF fp32, up_NF fp32) via the fused kernel; gate/up are [0] unless save."""
    num_rows, ffn_dim = x_ND.shape[0], w_gate_EFD.shape[1]
    hidden_NF = x_ND.new_empty(num_rows, ffn_dim)
    saved_shape = (num_rows, ffn_dim) if save else (0,)
    gate_NF, up_NF = (x_ND.new_empty(saved_shape, dtype=torch.float32) for _ in range(2))
    grid = (rt.num_tiles, triton.cdiv(ffn_dim, FUSED_CONFIG["BLOCK_F"]))
    launcher(swiglu_gate_up_kernel, x_ND)[grid](
        x_ND, w_gate_EFD, w_up_EFD, hidden_NF, gate_NF if save else hidden_NF, up_NF if save else hidden_NF,
        *rt.schedule, x_ND.shape[1], ffn_dim, x_ND.stride(0), SAVE=save, PRECISION=dot_precision(x_ND),
        BLOCK_N=BLOCK_ROWS, BLOCK_F=FUSED_CONFIG["BLOCK_F"], BLOCK_K=FUSED_CONFIG["BLOCK_K"],
        **launch_options(x_ND, FUSED_CONFIG),
    )  # fmt: skip
    return hidden_NF, gate_NF, up_NF


def _swiglu_backward(grad_y_ND, x_ND, w_gate_EFD, w_up_EFD, w_down_EDF, gate_NF, up_NF, weight_N, rt: Route):
    """(grad_gate_NF, grad_up_NF, weighted_hidden_NF, grad_weight_N fp32); recomputes gate/up if none saved."""
    num_rows, ffn_dim = grad_y_ND.shape[0], w_down_EDF.shape[2]
    recompute = gate_NF.numel() == 0
    grad_gate_NF, grad_up_NF, weighted_hidden_NF = (grad_y_ND.new_empty(num_rows, ffn_dim) for _ in range(3))
    num_f_tiles = triton.cdiv(ffn_dim, FUSED_CONFIG["BLOCK_F"])
    partial_FN = grad_y_ND.new_zeros(num_f_tiles, num_rows, dtype=torch.float32)
    launcher(swiglu_backward_kernel, grad_y_ND)[(rt.num_tiles, num_f_tiles)](
        grad_y_ND, w_down_EDF, x_ND, w_gate_EFD, w_up_EFD, gate_NF if not recompute else weight_N,
        up_NF if not recompute else weight_N, weight_N, grad_gate_NF, grad_up_NF, weighted_hidden_NF, partial_FN,
        *rt.schedule, num_rows, grad_y_ND.shape[1], ffn_dim, RECOMPUTE=recompute,
        PRECISION=dot_precision(grad_y_ND), BLOCK_N=BLOCK_ROWS, BLOCK_F=FUSED_CONFIG["BLOCK_F"],
        BLOCK_K=FUSED_CONFIG["BLOCK_K"], **launch_options(grad_y_ND, FUSED_CONFIG),
    )  # fmt: skip
    return grad_gate_NF, grad_up_NF, weighted_hidden_NF, partial_FN.sum(dim=0)


def permute_tokens_triton(x_TD: Tensor, topk_ids_TK: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """(x_ND, copy_ids_N, tokens_per_expert_E): token copies grouped by expert, rows gathered by the Triton kernel.

    The order is `permute_tokens_reference`'s (stable sort of expert ids); x_ND[n] == x_TD[copy_ids_N[n] // K] exactly.
    """
    rt = route(topk_ids_TK, num_experts)
    return _gather_rows(x_TD.contiguous(), rt.token_N), rt.copy_ids_N, rt.tokens_per_expert_E


def moe_experts_forward_triton(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF,
                               backend: str = "triton", save: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(y_TD, gate_NF fp32, up_NF fp32) on the Triton path; gate/up are empty unless `save`."""
    rt = route(topk_ids_TK, w_gate_EFD.shape[0])
    x_ND = _gather_rows(x_TD, rt.token_N)
    hidden_NF, gate_NF, up_NF = _swiglu_gate_up(x_ND, w_gate_EFD, w_up_EFD, rt, save)
    out_ND = GEMMS[backend].mm(hidden_NF, w_down_EDF.transpose(1, 2), rt)
    y_TD = _combine_rows(out_ND, None, rt.slot_N, topk_weights_TK.reshape(-1), x_TD.shape[0], x_TD.dtype)
    return y_TD, gate_NF, up_NF


def moe_experts_backward_triton(grad_y_TD, x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF,
                                gate_NF, up_NF, backend: str = "triton"):  # fmt: skip
    """Returns (grad_x_TD, grad_topk_weights_TK, grad_w_gate_EFD, grad_w_up_EFD, grad_w_down_EDF)."""
    gemm = GEMMS[backend]
    rt = route(topk_ids_TK, w_gate_EFD.shape[0])
    weight_N = topk_weights_TK.reshape(-1)[rt.copy_ids_N].float()
    x_ND = _gather_rows(x_TD, rt.token_N)
    grad_y_ND = _gather_rows(grad_y_TD, rt.token_N)  # unweighted: the backward kernel applies the gate weight
    grad_gate_NF, grad_up_NF, weighted_hidden_NF, grad_weight_N = _swiglu_backward(
        grad_y_ND, x_ND, w_gate_EFD, w_up_EFD, w_down_EDF, gate_NF, up_NF, weight_N, rt)
    grad_topk_weights_TK = torch.empty_like(topk_weights_TK).reshape(-1)
    grad_topk_weights_TK[rt.copy_ids_N] = grad_weight_N.to(topk_weights_TK.dtype)
    grad_w_down_EDF = gemm.wgrad(grad_y_ND, weighted_hidden_NF, rt, w_down_EDF.dtype)
    grad_w_gate_EFD = gemm.wgrad(grad_gate_NF, x_ND, rt, w_gate_EFD.dtype)
    grad_w_up_EFD = gemm.wgrad(grad_up_NF, x_ND, rt, w_up_EFD.dtype)
    grad_x_via_gate_ND = gemm.mm(grad_gate_NF, w_gate_EFD, rt)
    grad_x_via_up_ND = gemm.mm(grad_up_NF, w_up_EFD, rt)
    grad_x_TD = _combine_rows(grad_x_via_gate_ND, grad_x_via_up_ND, rt.slot_N, None, x_TD.shape[0], x_TD.dtype)
    return (grad_x_TD, grad_topk_weights_TK.reshape(topk_weights_TK.shape), grad_w_gate_EFD, grad_w_up_EFD,
            grad_w_down_EDF)  # fmt: skip


@torch.library.custom_op("kernels::moe_experts", mutates_args=())
def _moe_experts_op(
    x_TD: Tensor, topk_ids_TK: Tensor, topk_weights_TK: Tensor, w_gate_EFD: Tensor, w_up_EFD: Tensor,
    w_down_EDF: Tensor, backend: str, save: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return moe_experts_forward_triton(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF,
                                      backend, save)  # fmt: skip


@_moe_experts_op.register_fake
def _(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF, backend, save):
    saved_shape = (topk_ids_TK.numel(), w_gate_EFD.shape[1]) if save else (0,)
    saved = [x_TD.new_empty(saved_shape, dtype=torch.float32) for _ in range(2)]
    return torch.empty_like(x_TD), *saved


@torch.library.custom_op("kernels::moe_experts_backward", mutates_args=())
def _moe_experts_backward_op(
    grad_y_TD: Tensor, x_TD: Tensor, topk_ids_TK: Tensor, topk_weights_TK: Tensor, w_gate_EFD: Tensor,
    w_up_EFD: Tensor, w_down_EDF: Tensor, gate_NF: Tensor, up_NF: Tensor, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return moe_experts_backward_triton(grad_y_TD, x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD,
                                       w_down_EDF, gate_NF, up_NF, backend)  # fmt: skip


@_moe_experts_backward_op.register_fake
def _(grad_y_TD, x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF, gate_NF, up_NF, backend):
    return tuple(torch.empty_like(t) for t in (x_TD, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF))


def _setup_context(ctx, inputs, output) -> None:
    x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF, backend, _ = inputs
    _, gate_NF, up_NF = output
    ctx.mark_non_differentiable(gate_NF, up_NF)
    ctx.save_for_backward(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF, gate_NF, up_NF)
    ctx.backend = backend


def _backward(ctx, grad_y_TD, _grad_gate, _grad_up):
    grads = _moe_experts_backward_op(grad_y_TD.contiguous(), *ctx.saved_tensors, ctx.backend)
    grad_x_TD, grad_topk_weights_TK, grad_w_gate_EFD, grad_w_up_EFD, grad_w_down_EDF = grads
    return grad_x_TD, None, grad_topk_weights_TK, grad_w_gate_EFD, grad_w_up_EFD, grad_w_down_EDF, None, None


_moe_experts_op.register_autograd(_backward, setup_context=_setup_context)


def moe_experts(
    x_TD: Tensor,
    topk_ids_TK: Tensor,
    topk_weights_TK: Tensor,
    w_gate_EFD: Tensor,
    w_up_EFD: Tensor,
    w_down_EDF: Tensor,
    recompute: bool = False,
) -> Tensor:
    """Returns y_TD = sum_k topk_weights_TK[:, k] * SwiGLU-FFN_{topk_ids_TK[:, k]}(x_TD), dtype of x_TD.

    Weights are nn.Linear-layout stacks: w_gate_EFD/w_up_EFD [E, F, D], w_down_EDF [E, D, F]. Differentiable
    w.r.t. x_TD, topk_weights_TK and the three weights. No token is dropped (no capacity limit).
    topk_ids_TK must lie in [0, E): it is not range-checked, because that would cost a host sync per layer.
    recompute: keep no [N, F] activation for the backward (fp32 gate/up, 8 bytes per copy and F) and
    recompute them there instead (two more grouped products). GPU path only.
    """
    _validate(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)
    if use_triton(x_TD) and x_TD.shape[0] > 0:  # an empty batch needs no launch: the reference returns [0, D]
        dtypes = {t.dtype for t in (x_TD, w_gate_EFD, w_up_EFD, w_down_EDF)}
        if len(dtypes) != 1:
            raise TypeError(
                f"kernels.moe_experts: the Triton path needs x_TD and the three expert weights in one dtype, got "
                f"{sorted(str(d) for d in dtypes)}; cast the weights (or run the model under one param dtype)."
            )
        args = [t.contiguous() for t in (x_TD, topk_ids_TK.long(), topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)]
        backend = select_backend(args[0], *args[3:])
        return _moe_experts_op(*args, backend, not recompute)[0]
    if x_TD.device.type == "cpu" and grouped_mm_available():
        return moe_experts_grouped_cpu(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)
    return moe_experts_reference(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)
