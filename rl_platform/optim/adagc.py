"""Gradient clipping: AdaGC (adaptive per-tensor, arXiv:2502.11034) or plain global-norm clipping.

AdaGC, with the semantics of the official Megatron patch (`class AdaGC` in clip_grads.py, docs/algorithms.md, 'AdaGC'):
- warm-up (steps 1..warmup_steps): global-norm clipping at `warmup_max_norm`; then every unit's
  post-clip norm lowers its running minimum gamma_i (initialised with the first value);
- afterwards, per unit i:   if ||g_i|| > lambda_rel * gamma_i:  g_i *= lambda_rel * gamma_i / (||g_i|| + eps),
  and the clipped norm is lambda_rel * gamma_i;  then gamma_i = beta * gamma_i + (1 - beta) * clipped norm.
Defaults lambda_rel 1.04, beta 0.99, eps 1e-6, 100 warm-up steps (the official code's).

A unit is a parameter tensor, except for stacked expert weights (all of a layer's experts in one [E, ...]
tensor, named with a shape suffix starting with E such as `w_up_EFD`): there each expert's slice is its own
unit, as it would be if every expert were a separate nn.Linear (the paper's setting). Otherwise one expert's
spike would clip the whole layer's experts (docs/kernels.md, 'AdaGC on GPU').

All norms, limits and EMA updates run on the gradients' device as a few vectorised ops (torch._foreach_norm,
one per-slice norm per expert tensor); one host transfer per step fetches the logged statistics and which
tensors need rescaling. The clipper works on full (un-partitioned) gradients fetched by name, so the same code
serves a plain module and a DeepSpeed ZeRO-1/2 engine (`deepspeed_gradient_access`), where `param.grad` is
partitioned.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from rl_platform.config import Registry, check

CLIPPERS = Registry("gradient clipping")


@dataclass(kw_only=True, slots=True)
class ClippingConfig:
    """Base of the gradient-clipping variants; pick one with `--set optim.clipping=<name>`."""

    @classmethod
    def registry(cls) -> dict[str, type]:
        return CLIPPERS.classes()

    def build(self, names: list[str]) -> GradientClipper:
        raise NotImplementedError


@CLIPPERS.register("adagc")
@dataclass(kw_only=True, slots=True)
class AdaGCConfig(ClippingConfig):
    """Adaptive per-tensor clipping (AdaGC)."""

    lambda_rel: float = 1.04
    """A tensor is clipped when its norm exceeds lambda_rel times its EMA of clipped norms."""
    beta: float = 0.99
    """EMA coefficient of the clipped norms."""
    eps: float = 1e-6
    """Added to the norm in the clip factor's denominator."""
    warmup_steps: int = 100
    """Steps of global-norm clipping while the per-tensor minima are collected."""
    warmup_max_norm: float = 1.0
    """Global max norm during warm-up."""
    per_expert: bool = True
    """Clip each expert's slice of a stacked expert tensor (name ending in `_E<dims>`, e.g. `w_up_EFD`) as its
    own unit; False treats the stacked tensor as one unit."""

    def __post_init__(self) -> None:
        check(self.lambda_rel > 1.0, "AdaGCConfig.lambda_rel", self.lambda_rel, "must be > 1",
              "use the paper's 1.04")
        check(0.0 < self.beta < 1.0, "AdaGCConfig.beta", self.beta, "must be in (0, 1)", "use 0.99")
        check(self.warmup_steps >= 1, "AdaGCConfig.warmup_steps", self.warmup_steps, "must be >= 1",
              "use 100 (official) or fewer for tiny runs")

    def build(self, names: list[str]) -> AdaGC:
        return AdaGC(self, names)


@CLIPPERS.register("global")
@dataclass(kw_only=True, slots=True)
class GlobalNormClipConfig(ClippingConfig):
    """Classic clipping of the global gradient norm."""

    max_norm: float = 1.0
    """Gradients are scaled down when their global norm exceeds this."""

    def __post_init__(self) -> None:
        check(self.max_norm > 0, "GlobalNormClipConfig.max_norm", self.max_norm, "must be > 0", "use 1.0")

    def build(self, names: list[str]) -> GlobalNormClip:
        return GlobalNormClip(self)


@CLIPPERS.register("none")
@dataclass(kw_only=True, slots=True)
class NoClipConfig(ClippingConfig):
    """No clipping (the global norm is still measured and logged)."""

    def build(self, names: list[str]) -> GlobalNormClip:
        return GlobalNormClip(GlobalNormClipConfig(max_norm=math.inf))


@dataclass
class ClipStats:
    grad_norm: float
    """Global gradient norm before clipping."""
    num_clipped: int
    """Clipping units scaled down this step (tensors; expert slices count one each under AdaGC per_expert)."""


GradientAccess = tuple[Callable[[], dict[str, Tensor]], Callable[[str, Tensor], None]]
"""(get all full grads by name, set one full grad by name)."""


def module_gradient_access(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> GradientAccess:
    params = {n: p for n, p in named_params if p.requires_grad}

    def get() -> dict[str, Tensor]:
        return {n: p.grad for n, p in params.items() if p.grad is not None}

    def put(name: str, grad: Tensor) -> None:
        params[name].grad.copy_(grad)

    return get, put


def deepspeed_gradient_access(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> GradientAccess:
    """Full gradients of a DeepSpeed engine's params (works for ZeRO 0-3); call after backward, before step."""
    from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

    params = {n: p for n, p in named_params if p.requires_grad}

    def get() -> dict[str, Tensor]:
        grads = {}
        for name, p in params.items():
            g = safe_get_full_grad(p)
            if g is not None:
                grads[name] = g
        return grads

    def put(name: str, grad: Tensor) -> None:
        safe_set_full_grad(params[name], grad)

    return get, put


class GradientClipper:
    def clip(self, access: GradientAccess) -> ClipStats:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# Stacked expert weights follow the model's shape-suffix naming: w_gate_EFD, w_up_EFD, w_down_EDF.
_EXPERT_STACK = re.compile(r"(^|\.)w_[a-z0-9]+_E[A-Z]+$")


def is_expert_stack(name: str, grad: Tensor) -> bool:
    """Whether `name` is a stacked expert weight whose dim-0 slices are separate experts."""
    return grad.dim() >= 2 and _EXPERT_STACK.search(name) is not None


def _unit_norms(grads: list[Tensor], expert: list[bool]) -> list[Tensor]:
    """fp32 L2 norms per unit: a 0-dim tensor per plain tensor, an [E] tensor per expert stack; no host sync."""
    plain = [g for g, is_e in zip(grads, expert, strict=True) if not is_e]
    plain_norms = iter(torch._foreach_norm(plain, 2, dtype=torch.float32) if plain else [])
    return [torch.linalg.vector_norm(g, dim=tuple(range(1, g.dim())), dtype=torch.float32) if is_e
            else next(plain_norms).reshape(1) for g, is_e in zip(grads, expert, strict=True)]  # fmt: skip


def _global_norm(grads: dict[str, Tensor]) -> float:
    values = list(grads.values())
    if not values:
        return 0.0
    return float(torch.stack(torch._foreach_norm(values, 2, dtype=torch.float32)).norm())


class GlobalNormClip(GradientClipper):
    def __init__(self, config: GlobalNormClipConfig) -> None:
        self.max_norm = config.max_norm

    def clip(self, access: GradientAccess) -> ClipStats:
        get, put = access
        grads = get()
        norm = _global_norm(grads)  # one host transfer per step
        coef = self.max_norm / (norm + 1e-6)
        if coef < 1.0:
            for name, g in grads.items():
                put(name, g * coef)
        return ClipStats(grad_norm=norm, num_clipped=len(grads) if coef < 1.0 else 0)


class AdaGC(GradientClipper):
    """Per-unit adaptive clipping state: gamma per unit (a tensor, or one expert slice), step count.

    gamma lives on the gradients' device as one float64 vector per parameter name ([1] for a plain tensor, [E]
    for an expert stack); NaN marks a unit not seen yet (it starts at its own norm).
    """

    def __init__(self, config: AdaGCConfig, names: list[str]) -> None:
        self.config = config
        self.names = list(names)
        self._gamma: dict[str, Tensor] = {}
        self._is_stack: dict[str, bool] = {}
        self.step = 0

    @property
    def gamma(self) -> dict[str, float | list[float]]:
        """gamma per name (a float, or one float per expert for an expert stack): for inspection and tests."""
        return {name: (values.tolist() if values.numel() > 1 or self._is_stack.get(name) else float(values[0]))
                for name, values in self._gamma.items()}  # fmt: skip

    def clip(self, access: GradientAccess) -> ClipStats:
        get, put = access
        cfg = self.config
        grads = get()
        self.step += 1
        if not grads:
            return ClipStats(grad_norm=0.0, num_clipped=0)
        names = list(grads)
        values = [grads[n] for n in names]
        expert = [cfg.per_expert and is_expert_stack(n, g) for n, g in zip(names, values, strict=True)]
        self._is_stack.update(zip(names, expert, strict=True))
        norms = _unit_norms(values, expert)
        sizes = [n.numel() for n in norms]
        norm_U = torch.cat(norms).double()  # the EMA state is float64 like the official code's Python floats
        gamma_U = torch.cat([self._stored_gamma(n, s, norm_U.device) for n, s in zip(names, sizes, strict=True)])
        total = norm_U.square().sum().sqrt()
        if self.step <= cfg.warmup_steps:
            scale_U = (cfg.warmup_max_norm / (total + cfg.eps)).clamp(max=1.0).expand_as(norm_U)
            clipped_norm_U = norm_U * scale_U
            new_gamma_U = torch.where(gamma_U.isnan(), clipped_norm_U, torch.minimum(gamma_U, clipped_norm_U))
        else:
            gamma_U = torch.where(gamma_U.isnan(), norm_U, gamma_U)
            limit_U = cfg.lambda_rel * gamma_U
            over_U = norm_U > limit_U
            scale_U = torch.where(over_U, limit_U / (norm_U + cfg.eps), 1.0)
            clipped_norm_U = torch.where(over_U, limit_U, norm_U)
            new_gamma_U = cfg.beta * gamma_U + (1.0 - cfg.beta) * clipped_norm_U
        for name, new_gamma in zip(names, new_gamma_U.split(sizes), strict=True):
            self._gamma[name] = new_gamma
        # The one host transfer of the step: the logged norm and the scale of every unit.
        stats = torch.cat([total.reshape(1), scale_U]).cpu()
        scales = stats[1:]
        num_clipped = 0
        offset = 0
        for name, grad, size, is_e in zip(names, values, sizes, expert, strict=True):
            unit_scales = scales[offset:offset + size]
            offset += size
            below_one = int((unit_scales < 1.0).sum())
            if below_one == 0:
                continue
            num_clipped += below_one
            if is_e:
                # float32 scales: a float64 one would promote the whole [E, ...] stack to a float64 temporary.
                scale_E = scale_U[offset - size:offset].float().reshape((size,) + (1,) * (grad.dim() - 1))
                put(name, (grad.float() * scale_E).to(grad.dtype))
            else:
                put(name, grad * float(unit_scales[0]))
        return ClipStats(grad_norm=float(stats[0]), num_clipped=num_clipped)

    def _stored_gamma(self, name: str, size: int, device: torch.device) -> Tensor:
        """gamma of `name`'s units on `device`; NaN (unseen) if none is stored, broadcast if one value is."""
        stored = self._gamma.get(name)
        if stored is None or stored.numel() not in (1, size):
            return torch.full((size,), math.nan, dtype=torch.float64, device=device)
        return stored.to(device=device, dtype=torch.float64).expand(size)

    def state_dict(self) -> dict:
        """{"gamma": {name: float, or list of floats for an expert stack}, "step"}: plain Python values."""
        return {"gamma": self.gamma, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Accepts this class's state_dict; a float saved for a name now clipped per expert seeds every slice."""
        self._gamma = {name: torch.tensor(value if isinstance(value, list) else [value], dtype=torch.float64)
                       for name, value in state["gamma"].items()}  # fmt: skip
        self._is_stack = {name: isinstance(value, list) for name, value in state["gamma"].items()}
        self.step = int(state["step"])
