"""Gradient clipping: AdaGC (adaptive per-tensor, arXiv:2502.11034) or plain global-norm clipping.

AdaGC, with the semantics of the official Megatron patch (`class AdaGC` in clip_grads.py, docs/algorithms.md, 'AdaGC'):
- warm-up (steps 1..warmup_steps): global-norm clipping at `warmup_max_norm`; then every tensor's
  post-clip norm lowers its running minimum gamma_i (initialised with the first value);
- afterwards, per tensor i:   if ||g_i|| > lambda_rel * gamma_i:  g_i *= lambda_rel * gamma_i / (||g_i|| + eps),
  and the clipped norm is lambda_rel * gamma_i;  then gamma_i = beta * gamma_i + (1 - beta) * clipped norm.
Defaults lambda_rel 1.04, beta 0.99, eps 1e-6, 100 warm-up steps (the official code's).

The clipper works on full (un-partitioned) gradients fetched by name, so the same code serves a plain
module and a DeepSpeed ZeRO-1/2 engine (`deepspeed_gradient_access`), where `param.grad` is partitioned.
"""

from __future__ import annotations

import math
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
    """Tensors whose gradient was scaled down this step."""


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


def _global_norm(grads: dict[str, Tensor]) -> float:
    return math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads.values()))


class GlobalNormClip(GradientClipper):
    def __init__(self, config: GlobalNormClipConfig) -> None:
        self.max_norm = config.max_norm

    def clip(self, access: GradientAccess) -> ClipStats:
        get, put = access
        grads = get()
        norm = _global_norm(grads)
        coef = self.max_norm / (norm + 1e-6)
        if coef < 1.0:
            for name, g in grads.items():
                put(name, g * coef)
        return ClipStats(grad_norm=norm, num_clipped=len(grads) if coef < 1.0 else 0)


class AdaGC(GradientClipper):
    """Per-tensor adaptive clipping state (gamma per tensor, step count)."""

    def __init__(self, config: AdaGCConfig, names: list[str]) -> None:
        self.config = config
        self.names = list(names)
        self.gamma: dict[str, float] = {}
        self.step = 0

    def clip(self, access: GradientAccess) -> ClipStats:
        get, put = access
        cfg = self.config
        grads = get()
        self.step += 1
        total = _global_norm(grads)
        num_clipped = 0
        if self.step <= cfg.warmup_steps:
            coef = cfg.warmup_max_norm / (total + cfg.eps)
            for name, g in grads.items():
                if coef < 1.0:
                    g = g * coef
                    put(name, g)
                norm = float(g.float().norm())
                self.gamma[name] = norm if name not in self.gamma else min(self.gamma[name], norm)
            return ClipStats(grad_norm=total, num_clipped=len(grads) if coef < 1.0 else 0)
        for name, g in grads.items():
            norm = float(g.float().norm())
            gamma = self.gamma.get(name, norm)  # a tensor first seen after warm-up starts at its own norm
            limit = cfg.lambda_rel * gamma
            if norm > limit:
                put(name, g * (limit / (norm + cfg.eps)))
                norm = limit
                num_clipped += 1
            self.gamma[name] = cfg.beta * gamma + (1.0 - cfg.beta) * norm
        return ClipStats(grad_norm=total, num_clipped=num_clipped)

    def state_dict(self) -> dict:
        return {"gamma": dict(self.gamma), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.gamma = dict(state["gamma"])
        self.step = int(state["step"])
