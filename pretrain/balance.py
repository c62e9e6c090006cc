"""Expert-load balance figures (docs/ultrasparse.md, 'Balance'): what aux-loss-free balancing is judged by.

From routed-slot counts per layer and expert (`counts_LE`, one count per (token, slot) that chose the expert):
- dead experts: experts that received no token at all;
- max/mean and min/mean load: the busiest / idlest expert relative to a perfectly even share (1.0 = even);
- CV: standard deviation of the loads over their mean;
- normalised entropy NE = -sum_i p_i log p_i / log E (1 = even), as in ERNIE 5.0's routing analysis.
Shape legend: L MoE layers, E routed experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor


@dataclass
class LayerBalance:
    """Balance of one set of counts, per layer."""

    dead_L: list[int]
    """Experts with zero routed slots."""
    max_over_mean_L: list[float]
    min_over_mean_L: list[float]
    cv_L: list[float]
    entropy_L: list[float]
    """Normalised routing entropy NE in [0, 1]."""

    def summary(self) -> dict[str, float]:
        """Layer means (dead experts summed over layers: the total a reader wants to see)."""
        mean = lambda values: sum(values) / max(len(values), 1)  # noqa: E731
        return {"dead_experts": float(sum(self.dead_L)), "max_over_mean": mean(self.max_over_mean_L),
                "min_over_mean": mean(self.min_over_mean_L), "load_cv": mean(self.cv_L),
                "entropy": mean(self.entropy_L)}


def normalized_entropy(p_E: Tensor) -> float:
    """-sum p log p / log E over a distribution of E entries (zeros contribute nothing)."""
    p = p_E[p_E > 0]
    return float(-(p * p.log()).sum() / math.log(p_E.numel())) if p_E.numel() > 1 else 1.0


def layer_balance(counts_LE: Tensor) -> LayerBalance:
    counts_LE = counts_LE.float()
    mean_L1 = counts_LE.mean(dim=-1, keepdim=True).clamp_min(1e-12)
    share_LE = counts_LE / counts_LE.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return LayerBalance(
        dead_L=(counts_LE == 0).sum(dim=-1).tolist(),
        max_over_mean_L=(counts_LE.max(dim=-1).values / mean_L1[:, 0]).tolist(),
        min_over_mean_L=(counts_LE.min(dim=-1).values / mean_L1[:, 0]).tolist(),
        cv_L=(counts_LE.std(dim=-1, correction=0) / mean_L1[:, 0]).tolist(),
        entropy_L=[normalized_entropy(share_LE[layer]) for layer in range(counts_LE.shape[0])],
    )


def step_balance_metrics(loads_LE: Tensor, bias_LE: Tensor, speed: float) -> dict[str, float]:
    """The per-step `moe/*` metrics of the pretraining loop, from the loads the bias update used.

    bias_spread is max - min of the selection bias (layer mean): how far balancing had to push the router,
    to be read against the router's probability scale (~1/E)."""
    stats = layer_balance(loads_LE).summary()
    return {"moe/expert_load_max": stats["max_over_mean"], "moe/expert_load_min": stats["min_over_mean"],
            "moe/load_cv": stats["load_cv"], "moe/dead_experts": stats["dead_experts"] / loads_LE.shape[0],
            "moe/bias_speed": speed,
            "moe/bias_spread": float((bias_LE.max(dim=-1).values - bias_LE.min(dim=-1).values).mean())}
