"""Reference (specification and CPU path) for RMSNorm and rotary position embedding as the model computes them.

Shape legend: R rows (any leading dims flattened), D normalised dim, B batch, H heads, S positions, Dh head dim,
P = Dh / 2 rotation pairs.

Numerics follow transformers' Ernie4.5 / Qwen3 / OLMoE and vLLM:
  rms_norm: x32 = x.float(); y = weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype)   (normalised value rounded to
            x's dtype before the weight multiplies it; result dtype = promote(weight, x))
  rope:     pair i of every head rotates by the position's angle i, in float32, rounded to x's dtype:
            interleaved pairs (x[2i], x[2i+1]) (Ernie4.5, vLLM is_neox_style=False) or NeoX halves (x[i], x[i+P]).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rope_reference(x_BHSD: Tensor, cos_BSP: Tensor, sin_BSP: Tensor, style: str = "interleaved") -> Tensor:
    x = x_BHSD.float()
    cos, sin = cos_BSP[:, None], sin_BSP[:, None]
    if style == "neox":
        first, second = x.chunk(2, dim=-1)
        out = torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
    else:
        even, odd = x[..., 0::2], x[..., 1::2]
        out = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    return out.to(x_BHSD.dtype)
