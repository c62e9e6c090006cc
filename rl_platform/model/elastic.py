"""Elastic sub-model sampling (ERNIE 5.0 "once-for-all" training, docs/algorithms.md, 'Elastic training').

Each training instance (a packed row in pretraining, a rollout row in elastic RL: rl_platform/elastic_rl.py)
draws its own sub-model; all rows of the global batch run in one forward and one backward (rl_platform.model
handles mixed sub-models per row). The three dimensions are drawn independently (the paper does not say
otherwise):
- depth: the full model with probability `full_depth_prob` (paper: 0.75; its ablation says 0.8), else
  d ~ U{min_layers .. L-1} layers, a random subset (the paper: "randomly varies the number of active
  layers") or the first d (`depth_mode="truncate"`);
- width: all experts with probability `full_width_prob` (0.8), else a random subset of
  `width_fraction * E` experts (the same subset in every layer);
- sparsity: the default k with probability `default_topk_prob` (0.8), else k ~ U{min_top_k .. K-1}
  (our assumption: the paper only says "a predefined range below the default").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from rl_platform.config import check
from rl_platform.model.config import MoEModelConfig, SubModel


@dataclass(kw_only=True, slots=True)
class ElasticConfig:
    """How sub-models are sampled per training instance."""

    enabled: bool = True
    """False trains the full model only (the non-elastic baseline)."""
    full_depth_prob: float = 0.75
    depth_mode: Literal["random_subset", "truncate"] = "random_subset"
    min_depth_fraction: float = 0.5
    """Fewest layers a reduced-depth sample keeps, as a fraction of the total (at least 1)."""
    full_width_prob: float = 0.8
    width_fraction: float = 0.5
    """Experts kept by a reduced-width sample, as a fraction of E (ERNIE ablation: 32 of 64)."""
    default_topk_prob: float = 0.8
    min_top_k: int = 1

    def __post_init__(self) -> None:
        for name in ("full_depth_prob", "full_width_prob", "default_topk_prob"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"ElasticConfig.{name}", value, "must be a probability in [0, 1]",
                  "use e.g. 0.75-0.8 as in ERNIE 5.0")
        check(0.0 < self.width_fraction <= 1.0, "ElasticConfig.width_fraction", self.width_fraction,
              "must be in (0, 1]", "use 0.5")
        check(0.0 < self.min_depth_fraction <= 1.0, "ElasticConfig.min_depth_fraction", self.min_depth_fraction,
              "must be in (0, 1]", "use 0.5")
        check(self.min_top_k >= 1, "ElasticConfig.min_top_k", self.min_top_k, "must be >= 1", "use 1")


def sample_submodel(rng: random.Random, model: MoEModelConfig, config: ElasticConfig) -> SubModel:
    full = SubModel.full(model)
    if not config.enabled:
        return full
    layers, experts, top_k = full.layers, full.experts, full.top_k
    min_layers = max(1, round(config.min_depth_fraction * model.num_layers))
    if model.num_layers > min_layers and rng.random() >= config.full_depth_prob:
        depth = rng.randint(min_layers, model.num_layers - 1)
        if config.depth_mode == "truncate":
            layers = tuple(range(depth))
        else:
            layers = tuple(sorted(rng.sample(range(model.num_layers), depth)))
    if rng.random() >= config.full_width_prob:
        width = max(model.top_k, round(config.width_fraction * model.num_experts))
        experts = tuple(sorted(rng.sample(range(model.num_experts), width)))
    if model.top_k > config.min_top_k and rng.random() >= config.default_topk_prob:
        top_k = rng.randint(config.min_top_k, model.top_k - 1)
    return SubModel(layers=layers, experts=experts, top_k=min(top_k, len(experts)))


def named_family(model: MoEModelConfig) -> dict[str, SubModel]:
    """The sub-models exported and evaluated by name.

    depth-75 keeps evenly spaced layers (first and last included); experts-50 keeps the first half of the
    experts (any fixed half: training used random halves); topk-2 and topk-1 lower k (topk-2 only when the
    default k is above 2: at k=2, as in the ultra-sparse recipes, it would be the full model again).
    """
    full = SubModel.full(model)
    num_layers = model.num_layers
    depth = max(1, round(0.75 * num_layers))
    step = (num_layers - 1) / max(1, depth - 1)
    depth_layers = tuple(sorted({round(i * step) for i in range(depth)}))
    half = max(model.top_k, model.num_experts // 2)
    family = {
        "full": full,
        "depth-75": SubModel(layers=depth_layers, experts=full.experts, top_k=model.top_k),
        "experts-50": SubModel(layers=full.layers, experts=tuple(range(half)), top_k=model.top_k),
        "topk-2": SubModel(layers=full.layers, experts=full.experts, top_k=2),
        "topk-1": SubModel(layers=full.layers, experts=full.experts, top_k=1),
    }
    if model.top_k <= 2:
        del family["topk-2"]
    if model.top_k == 1:
        del family["topk-1"]
    return family
