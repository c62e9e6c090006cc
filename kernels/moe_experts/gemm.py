"""Routing bookkeeping and the two grouped-GEMM providers behind the routed-expert op.

Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim, N = T * K token copies, M/P generic.

`route()` groups the N token copies by expert without a host sync (counts via index_add, not bincount,
whose CUDA output size needs one) and builds what both providers need: the copy order, the token of each
copy, the inverse permutation, the expert row offsets and the Triton tile schedule.

A provider does the two grouped products of the op:
  mm(a_NM, b_EMP)     c[rows of e] = a[rows of e] @ b[e]       (forward down projection, input gradients)
  wgrad(a_NM, b_NP)   c[e] = a[rows of e]^T @ b[rows of e]      (weight gradients)
`stock` is `torch._grouped_mm` (CUTLASS grouped GEMM on sm90/sm100 for bf16; a per-group loop elsewhere),
`triton` is kernel.py's grouped_mm / grouped_wgrad. op.py picks one (docs/kernels.md, 'Dispatch').
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from kernels._dispatch import launcher
from kernels.moe_experts.kernel import grouped_mm_kernel, grouped_wgrad_kernel

# Rows per tile of every grouped Triton kernel; the tile schedule is built for it. 128 rows x 8 warps feeds
# Hopper's warp-group MMA; 64 would waste less padding per expert but halves the work per weight tile load.
BLOCK_ROWS = 128
# (BLOCK_M (K step), BLOCK_P (output columns), num_warps, num_stages) on CUDA: the Triton matmul tutorial's
# Hopper bf16 choice. Not swept on a GPU yet: `python -m kernels.moe_experts.bench --sweep` times variants.
MM_CONFIG = {"BLOCK_M": 64, "BLOCK_P": 128, "num_warps": 8, "num_stages": 3}
WGRAD_CONFIG = {"BLOCK_M": 128, "BLOCK_P": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}


@dataclass(frozen=True, slots=True)
class Route:
    """Where each of the N token copies goes; all tensors on the input's device."""

    copy_ids_N: Tensor
    """int64 flat copy index t*K + k of each grouped row (stable sort by expert)."""
    token_N: Tensor
    """int64 token of each grouped row."""
    slot_N: Tensor
    """int64 grouped row of flat copy t*K + k (inverse of copy_ids_N)."""
    offsets_E1: Tensor
    """int64 [E + 1] first row of each expert, then N."""
    group_ends_E: Tensor
    """int32 [E] end row of each expert (torch._grouped_mm's `offs`)."""
    tokens_per_expert_E: Tensor
    """int64 [E] copies routed to each expert."""
    tile_expert: Tensor
    """int64 expert of each Triton row tile, -1 for an unused slot."""
    tile_row_start: Tensor
    tile_row_end: Tensor

    @property
    def schedule(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.tile_expert, self.tile_row_start, self.tile_row_end

    @property
    def num_tiles(self) -> int:
        return self.tile_expert.shape[0]


def route(topk_ids_TK: Tensor, num_experts: int) -> Route:
    """Permutation and tile schedule for `topk_ids_TK` (ids in [0, E)); no host sync."""
    device = topk_ids_TK.device
    top_k = topk_ids_TK.shape[1]
    flat_ids_N = topk_ids_TK.reshape(-1)
    num_rows = flat_ids_N.shape[0]
    copy_ids_N = torch.sort(flat_ids_N, stable=True).indices
    slot_N = torch.empty_like(copy_ids_N)
    slot_N[copy_ids_N] = torch.arange(num_rows, device=device)
    counts_E = torch.zeros(num_experts, dtype=torch.int64, device=device).index_add_(
        0, flat_ids_N, torch.ones_like(flat_ids_N))
    offsets_E1 = torch.zeros(num_experts + 1, dtype=torch.int64, device=device)
    offsets_E1[1:] = torch.cumsum(counts_E, 0)
    tiles_E = (counts_E + BLOCK_ROWS - 1) // BLOCK_ROWS
    tile_end_E = torch.cumsum(tiles_E, 0)
    slots = torch.arange(triton.cdiv(num_rows, BLOCK_ROWS) + num_experts, device=device)
    tile_expert = torch.searchsorted(tile_end_E, slots, right=True)
    valid = tile_expert < num_experts
    expert = tile_expert.clamp(max=num_experts - 1)
    tile_row_start = offsets_E1[expert] + (slots - (tile_end_E - tiles_E)[expert]) * BLOCK_ROWS
    return Route(
        copy_ids_N=copy_ids_N, token_N=torch.div(copy_ids_N, top_k, rounding_mode="floor"), slot_N=slot_N,
        offsets_E1=offsets_E1, group_ends_E=offsets_E1[1:].to(torch.int32), tokens_per_expert_E=counts_E,
        tile_expert=torch.where(valid, tile_expert, -1), tile_row_start=tile_row_start,
        tile_row_end=offsets_E1[expert + 1],
    )  # fmt: skip


def dot_precision(tensor: Tensor) -> str:
    """fp32 operands get exact fp32 dots (test models); bf16 operands ignore the flag."""
    return "ieee" if tensor.dtype == torch.float32 else "tf32"


def launch_options(tensor: Tensor, config: dict) -> dict:
    """num_warps / num_stages only on CUDA (the interpreter rejects nothing but ignores them)."""
    if tensor.is_cuda:
        return {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    return {}


class TritonGemm:
    """Grouped products with kernel.py's Triton kernels (any CUDA GPU; CPU tensors in the interpreter)."""

    name = "triton"

    @staticmethod
    def mm(a_NM: Tensor, b_EMP: Tensor, rt: Route) -> Tensor:
        c_NP = a_NM.new_empty(a_NM.shape[0], b_EMP.shape[2])
        grid = (rt.num_tiles, triton.cdiv(b_EMP.shape[2], MM_CONFIG["BLOCK_P"]))
        launcher(grouped_mm_kernel, a_NM)[grid](
            a_NM, b_EMP, c_NP, *rt.schedule, a_NM.shape[1], b_EMP.shape[2], a_NM.stride(0), *b_EMP.stride(),
            c_NP.stride(0), PRECISION=dot_precision(a_NM), BLOCK_N=BLOCK_ROWS, BLOCK_M=MM_CONFIG["BLOCK_M"],
            BLOCK_P=MM_CONFIG["BLOCK_P"], **launch_options(a_NM, MM_CONFIG),
        )  # fmt: skip
        return c_NP

    @staticmethod
    def wgrad(a_NM: Tensor, b_NP: Tensor, rt: Route, out_dtype: torch.dtype) -> Tensor:
        num_experts = rt.offsets_E1.shape[0] - 1
        c_EMP = a_NM.new_empty(num_experts, a_NM.shape[1], b_NP.shape[1], dtype=out_dtype)
        cfg = WGRAD_CONFIG
        grid = (num_experts, triton.cdiv(a_NM.shape[1], cfg["BLOCK_M"]) * triton.cdiv(b_NP.shape[1], cfg["BLOCK_P"]))
        launcher(grouped_wgrad_kernel, a_NM)[grid](
            a_NM, b_NP, c_EMP, rt.offsets_E1, a_NM.shape[1], b_NP.shape[1], a_NM.stride(0), b_NP.stride(0),
            c_EMP.stride(0), c_EMP.stride(1), PRECISION=dot_precision(a_NM), BLOCK_M=cfg["BLOCK_M"],
            BLOCK_P=cfg["BLOCK_P"], BLOCK_N=cfg["BLOCK_N"], **launch_options(a_NM, cfg),
        )  # fmt: skip
        return c_EMP


class StockGemm:
    """Grouped products with `torch._grouped_mm` (one CUTLASS launch per product on sm90/sm100 in bf16)."""

    name = "grouped_mm"

    @staticmethod
    def mm(a_NM: Tensor, b_EMP: Tensor, rt: Route) -> Tensor:
        return torch._grouped_mm(a_NM, b_EMP, offs=rt.group_ends_E)

    @staticmethod
    def wgrad(a_NM: Tensor, b_NP: Tensor, rt: Route, out_dtype: torch.dtype) -> Tensor:
        c_EMP = torch._grouped_mm(a_NM.t(), b_NP, offs=rt.group_ends_E).to(out_dtype)
        if a_NM.is_cuda and torch.cuda.get_device_capability(a_NM.device)[0] >= 10:
            # Blackwell's grouped GEMM leaves experts without rows unwritten in the weight-gradient form
            # (a known PyTorch bug with zero-size groups); Hopper and the CPU loop write zeros.
            c_EMP = c_EMP.masked_fill((rt.tokens_per_expert_E == 0)[:, None, None], 0.0)
        return c_EMP


GEMMS = {TritonGemm.name: TritonGemm, StockGemm.name: StockGemm}


def stock_gemm_is_fast(x_TD: Tensor, *weights: Tensor) -> bool:
    """Whether torch._grouped_mm runs its fused grouped kernel here (not its per-group loop with a host sync).

    Capability checks, not version checks: the op exists (torch >= 2.8), the device is sm90 or sm100 (the
    CUTLASS kernels' targets), every operand is bf16, and rows are 16-byte aligned (D and F multiples of 8).
    """
    if not (hasattr(torch, "_grouped_mm") and x_TD.is_cuda):
        return False
    if torch.cuda.get_device_capability(x_TD.device)[0] not in (9, 10):
        return False
    tensors = (x_TD, *weights)
    if any(t.dtype != torch.bfloat16 or t.data_ptr() % 16 for t in tensors):
        return False
    return all(size % 8 == 0 for t in weights for size in t.shape[1:])
