"""Routed-expert FFN of an MoE layer: permute by expert, grouped SwiGLU matmuls, weighted un-permute.

Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim, N = T * K token copies.

`moe_experts` is what the model calls. On CUDA (or inside `kernels.force_triton()`) it runs the custom op
`kernels::moe_experts` (forward and backward in Triton, visible to torch.compile as one op); on CPU it is the
reference's math through `torch._grouped_mm` (grouped_cpu.py: equal to the reference to float32 rounding, without
its per-expert loop, which costs seconds per layer at 128+ experts); elsewhere the reference loop itself.

Data flow of the Triton path (one launch per arrow):
    x_TD --gather rows--> x_ND --grouped mm (gate, up)--> silu(gate) * up = hidden_NF --grouped mm (down)--> out_ND
    out_ND --combine: sum_k weight[t, k] * out[slot(t, k)]--> y_TD
The backward recomputes gate_NF/up_NF (2 of the 9 grouped matmuls) instead of keeping two [N, F] activations alive
between forward and backward. It never needs out_ND: d topk_weights[t, k] = <dy[t] @ W_down[e], hidden>.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from kernels._dispatch import launcher, use_triton
from kernels.moe_experts.grouped_cpu import grouped_mm_available, moe_experts_grouped_cpu
from kernels.moe_experts.kernel import combine_rows_kernel, gather_rows_kernel, grouped_mm_kernel, grouped_wgrad_kernel
from kernels.moe_experts.reference import moe_experts_reference, permute_tokens_reference

# 64x64x32 tiles: the Triton matmul tutorial's bf16 starting point for mid-size GEMMs; not yet swept on an H200
# (TODO(kernels): sweep with bench.py; expert segments are short, so BLOCK_N=64 wastes less padding than 128).
BLOCK_SIZES = {"BLOCK_N": 64, "BLOCK_M": 32, "BLOCK_P": 64}
_BLOCK_ROWS = 16  # gather/combine: 16 rows x 128-column chunks per program; pure bandwidth, any tile is fine.
_BLOCK_COLS = 128


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


def _tile_schedule(tokens_per_expert_E: Tensor, block_n: int, num_rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (offsets_E1, tile_expert, tile_row_start, tile_row_end) built on the device, with no host sync."""
    device = tokens_per_expert_E.device
    num_experts = tokens_per_expert_E.shape[0]
    offsets_E1 = torch.zeros(num_experts + 1, dtype=torch.int64, device=device)
    offsets_E1[1:] = torch.cumsum(tokens_per_expert_E, 0)
    tiles_E = (tokens_per_expert_E + block_n - 1) // block_n
    tile_end_E = torch.cumsum(tiles_E, 0)
    slots = torch.arange(triton.cdiv(num_rows, block_n) + num_experts, device=device)
    tile_expert = torch.searchsorted(tile_end_E, slots, right=True)
    valid = tile_expert < num_experts
    expert = tile_expert.clamp(max=num_experts - 1)
    tile_row_start = offsets_E1[expert] + (slots - (tile_end_E - tiles_E)[expert]) * block_n
    return offsets_E1, torch.where(valid, tile_expert, -1), tile_row_start, offsets_E1[expert + 1]


def _precision(tensor: Tensor) -> str:
    return "ieee" if tensor.dtype == torch.float32 else "tf32"


def _grouped_mm(a_NM: Tensor, b_EMP: Tensor, schedule: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """c_NP[rows of e] = a_NM[rows of e] @ b_EMP[e]; b_EMP may be a transposed (non-contiguous) view."""
    _, tile_expert, tile_row_start, tile_row_end = schedule
    c_NP = a_NM.new_empty(a_NM.shape[0], b_EMP.shape[2])
    grid = (tile_expert.shape[0], triton.cdiv(b_EMP.shape[2], BLOCK_SIZES["BLOCK_P"]))
    launcher(grouped_mm_kernel, a_NM)[grid](
        a_NM, b_EMP, c_NP, tile_expert, tile_row_start, tile_row_end, a_NM.shape[1], b_EMP.shape[2],
        a_NM.stride(0), b_EMP.stride(0), b_EMP.stride(1), b_EMP.stride(2), c_NP.stride(0),
        PRECISION=_precision(a_NM), **BLOCK_SIZES,
    )  # fmt: skip
    return c_NP


def _grouped_wgrad(a_NM: Tensor, b_NP: Tensor, offsets_E1: Tensor, out_dtype: torch.dtype) -> Tensor:
    """c_EMP[e] = a_NM[rows of e].T @ b_NP[rows of e] (zeros for experts without rows)."""
    num_experts = offsets_E1.shape[0] - 1
    c_EMP = a_NM.new_empty(num_experts, a_NM.shape[1], b_NP.shape[1], dtype=out_dtype)
    bm, bp = BLOCK_SIZES["BLOCK_P"], BLOCK_SIZES["BLOCK_P"]
    grid = (num_experts, triton.cdiv(a_NM.shape[1], bm) * triton.cdiv(b_NP.shape[1], bp))
    launcher(grouped_wgrad_kernel, a_NM)[grid](
        a_NM, b_NP, c_EMP, offsets_E1, a_NM.shape[1], b_NP.shape[1], a_NM.stride(0), b_NP.stride(0),
        c_EMP.stride(0), c_EMP.stride(1), PRECISION=_precision(a_NM), BLOCK_M=bm, BLOCK_P=bp,
        BLOCK_N=BLOCK_SIZES["BLOCK_M"],
    )  # fmt: skip
    return c_EMP


def _gather_rows(src_RD: Tensor, index_N: Tensor, scale_N: Tensor | None = None) -> Tensor:
    dst_ND = src_RD.new_empty(index_N.shape[0], src_RD.shape[1])
    launcher(gather_rows_kernel, src_RD)[(triton.cdiv(index_N.shape[0], _BLOCK_ROWS),)](
        src_RD, dst_ND, index_N, scale_N if scale_N is not None else index_N, index_N.shape[0], src_RD.shape[1],
        src_RD.stride(0), dst_ND.stride(0), HAS_SCALE=scale_N is not None, BLOCK_R=_BLOCK_ROWS, BLOCK_D=_BLOCK_COLS,
    )  # fmt: skip
    return dst_ND


def _combine_rows(rows_ND: Tensor, slot_N: Tensor, weight_N: Tensor | None, num_tokens: int, out_dtype) -> Tensor:
    out_TD = rows_ND.new_empty(num_tokens, rows_ND.shape[1], dtype=out_dtype)
    top_k = slot_N.shape[0] // max(num_tokens, 1)
    grid = (triton.cdiv(num_tokens, _BLOCK_ROWS), triton.cdiv(rows_ND.shape[1], _BLOCK_COLS))
    launcher(combine_rows_kernel, rows_ND)[grid](
        rows_ND, out_TD, slot_N, weight_N if weight_N is not None else slot_N, num_tokens, top_k, rows_ND.shape[1],
        rows_ND.stride(0), out_TD.stride(0), HAS_WEIGHT=weight_N is not None, BLOCK_T=_BLOCK_ROWS,
        BLOCK_D=_BLOCK_COLS,
    )  # fmt: skip
    return out_TD


def _route(topk_ids_TK: Tensor, num_experts: int, block_n: int):
    """Permutation bookkeeping: (copy_ids_N, token_N, slot_N, schedule)."""
    copy_ids_N, tokens_per_expert_E = permute_tokens_reference(topk_ids_TK, num_experts)
    slot_N = torch.empty_like(copy_ids_N)
    slot_N[copy_ids_N] = torch.arange(copy_ids_N.shape[0], device=copy_ids_N.device)
    token_N = torch.div(copy_ids_N, topk_ids_TK.shape[1], rounding_mode="floor")
    return copy_ids_N, token_N, slot_N, _tile_schedule(tokens_per_expert_E, block_n, copy_ids_N.shape[0])


def permute_tokens_triton(x_TD: Tensor, topk_ids_TK: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """(x_ND, copy_ids_N, tokens_per_expert_E): token copies grouped by expert, rows gathered by the Triton kernel.

    The order is `permute_tokens_reference`'s (stable sort of expert ids); x_ND[n] == x_TD[copy_ids_N[n] // K] exactly.
    """
    copy_ids_N, tokens_per_expert_E = permute_tokens_reference(topk_ids_TK, num_experts)
    token_N = torch.div(copy_ids_N, topk_ids_TK.shape[1], rounding_mode="floor")
    return _gather_rows(x_TD.contiguous(), token_N), copy_ids_N, tokens_per_expert_E


def moe_experts_forward_triton(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF) -> Tensor:
    """y_TD via the Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    _, token_N, slot_N, schedule = _route(topk_ids_TK, w_gate_EFD.shape[0], BLOCK_SIZES["BLOCK_N"])
    x_ND = _gather_rows(x_TD, token_N)
    gate_NF = _grouped_mm(x_ND, w_gate_EFD.transpose(1, 2), schedule)
    up_NF = _grouped_mm(x_ND, w_up_EFD.transpose(1, 2), schedule)
    hidden_NF = (F.silu(gate_NF.float()) * up_NF.float()).to(x_TD.dtype)
    out_ND = _grouped_mm(hidden_NF, w_down_EDF.transpose(1, 2), schedule)
    return _combine_rows(out_ND, slot_N, topk_weights_TK.reshape(-1).contiguous(), x_TD.shape[0], x_TD.dtype)


def moe_experts_backward_triton(grad_y_TD, x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF):
    """Returns (grad_x_TD, grad_topk_weights_TK, grad_w_gate_EFD, grad_w_up_EFD, grad_w_down_EDF)."""
    copy_ids_N, token_N, slot_N, schedule = _route(topk_ids_TK, w_gate_EFD.shape[0], BLOCK_SIZES["BLOCK_N"])
    offsets_E1 = schedule[0]
    weight_N = topk_weights_TK.reshape(-1)[copy_ids_N].float().contiguous()
    x_ND = _gather_rows(x_TD, token_N)
    gate32_NF = _grouped_mm(x_ND, w_gate_EFD.transpose(1, 2), schedule).float()
    up32_NF = _grouped_mm(x_ND, w_up_EFD.transpose(1, 2), schedule).float()
    sig_NF = torch.sigmoid(gate32_NF)
    silu_NF = gate32_NF * sig_NF
    hidden_NF = (silu_NF * up32_NF).to(x_TD.dtype)
    grad_y_ND = _gather_rows(grad_y_TD.contiguous(), token_N)  # unweighted: dy of the copy's token
    grad_hidden_unweighted_NF = _grouped_mm(grad_y_ND, w_down_EDF, schedule).float()
    grad_weight_N = (grad_hidden_unweighted_NF * hidden_NF.float()).sum(dim=1)
    grad_topk_weights_TK = torch.empty_like(topk_weights_TK).reshape(-1)
    grad_topk_weights_TK[copy_ids_N] = grad_weight_N.to(topk_weights_TK.dtype)
    grad_hidden_NF = grad_hidden_unweighted_NF * weight_N[:, None]
    grad_out_ND = _gather_rows(grad_y_TD.contiguous(), token_N, weight_N)  # weighted dy, for grad_w_down
    grad_w_down_EDF = _grouped_wgrad(grad_out_ND, hidden_NF, offsets_E1, w_down_EDF.dtype)
    grad_gate_NF = (grad_hidden_NF * up32_NF * sig_NF * (1.0 + gate32_NF * (1.0 - sig_NF))).to(x_TD.dtype)
    grad_up_NF = (grad_hidden_NF * silu_NF).to(x_TD.dtype)
    grad_w_gate_EFD = _grouped_wgrad(grad_gate_NF, x_ND, offsets_E1, w_gate_EFD.dtype)
    grad_w_up_EFD = _grouped_wgrad(grad_up_NF, x_ND, offsets_E1, w_up_EFD.dtype)
    grad_x_ND = _grouped_mm(grad_gate_NF, w_gate_EFD, schedule).float()
    grad_x_ND += _grouped_mm(grad_up_NF, w_up_EFD, schedule).float()
    grad_x_TD = _combine_rows(grad_x_ND, slot_N, None, x_TD.shape[0], x_TD.dtype)
    return (
        grad_x_TD,
        grad_topk_weights_TK.reshape(topk_weights_TK.shape),
        grad_w_gate_EFD,
        grad_w_up_EFD,
        grad_w_down_EDF,
    )


@torch.library.custom_op("kernels::moe_experts", mutates_args=())
def _moe_experts_op(
    x_TD: Tensor, topk_ids_TK: Tensor, topk_weights_TK: Tensor, w_gate_EFD: Tensor, w_up_EFD: Tensor,
    w_down_EDF: Tensor,
) -> Tensor:  # fmt: skip
    return moe_experts_forward_triton(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)


@_moe_experts_op.register_fake
def _(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF):
    return torch.empty_like(x_TD)


@torch.library.custom_op("kernels::moe_experts_backward", mutates_args=())
def _moe_experts_backward_op(
    grad_y_TD: Tensor, x_TD: Tensor, topk_ids_TK: Tensor, topk_weights_TK: Tensor, w_gate_EFD: Tensor,
    w_up_EFD: Tensor, w_down_EDF: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return moe_experts_backward_triton(grad_y_TD, x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)


@_moe_experts_backward_op.register_fake
def _(grad_y_TD, x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF):
    return tuple(torch.empty_like(t) for t in (x_TD, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_y_TD):
    x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF = ctx.saved_tensors
    grads = _moe_experts_backward_op(grad_y_TD, x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)
    grad_x_TD, grad_topk_weights_TK, grad_w_gate_EFD, grad_w_up_EFD, grad_w_down_EDF = grads
    return grad_x_TD, None, grad_topk_weights_TK, grad_w_gate_EFD, grad_w_up_EFD, grad_w_down_EDF


_moe_experts_op.register_autograd(_backward, setup_context=_setup_context)


def moe_experts(
    x_TD: Tensor,
    topk_ids_TK: Tensor,
    topk_weights_TK: Tensor,
    w_gate_EFD: Tensor,
    w_up_EFD: Tensor,
    w_down_EDF: Tensor,
) -> Tensor:
    """Returns y_TD = sum_k topk_weights_TK[:, k] * SwiGLU-FFN_{topk_ids_TK[:, k]}(x_TD), dtype of x_TD.

    Weights are nn.Linear-layout stacks: w_gate_EFD/w_up_EFD [E, F, D], w_down_EDF [E, D, F]. Differentiable
    w.r.t. x_TD, topk_weights_TK and the three weights. No token is dropped (no capacity limit).
    topk_ids_TK must lie in [0, E): it is not range-checked, because that would cost a host sync per layer.
    """
    _validate(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)
    if use_triton(x_TD) and x_TD.shape[0] > 0:  # an empty batch needs no launch: the reference returns [0, D]
        dtypes = {t.dtype for t in (x_TD, w_gate_EFD, w_up_EFD, w_down_EDF)}
        if len(dtypes) != 1:
            raise TypeError(
                f"kernels.moe_experts: the Triton path needs x_TD and the three expert weights in one dtype, got "
                f"{sorted(str(d) for d in dtypes)}; cast the weights (or run the model under one param dtype)."
            )
        args = (x_TD, topk_ids_TK.long(), topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)
        return _moe_experts_op(*(t.contiguous() for t in args))
    if x_TD.device.type == "cpu" and grouped_mm_available():
        return moe_experts_grouped_cpu(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)
    return moe_experts_reference(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)
