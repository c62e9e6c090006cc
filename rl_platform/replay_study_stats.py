"""Statistics of the routing-replay study (docs/routing_replay.md, 'Study'): per-step metrics pooled over seeds,
summarised by mean / median / p90 / max with hierarchical bootstrap confidence intervals.

The bootstrap resamples seeds with replacement, then steps with replacement within each drawn seed, so the
interval reflects both run-to-run and step-to-step variation (steps of one run are not independent draws).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

STATISTICS: dict[str, Callable[[np.ndarray], float]] = {
    "mean": lambda x: float(np.mean(x)),
    "median": lambda x: float(np.median(x)),
    "p90": lambda x: float(np.quantile(x, 0.9)),
    "max": lambda x: float(np.max(x)),
}


@dataclass
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def format(self, digits: int = 2) -> str:
        if not np.isfinite(self.value):
            return "n/a"
        return f"{self.value:.{digits}e} [{self.low:.{digits}e}, {self.high:.{digits}e}]"


def hierarchical_bootstrap(per_seed: Sequence[Sequence[float]], statistic: Callable[[np.ndarray], float],
                           num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """`statistic` of the pooled values with a (seeds, then steps) percentile bootstrap interval."""
    runs = [np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float) for values in per_seed]
    runs = [r for r in runs if r.size]
    if not runs:
        return Estimate(float("nan"), float("nan"), float("nan"))
    value = statistic(np.concatenate(runs))
    rng = np.random.default_rng(seed)
    draws = np.empty(num_resamples)
    for i in range(num_resamples):
        picked = [runs[j] for j in rng.integers(0, len(runs), len(runs))]
        draws[i] = statistic(np.concatenate([r[rng.integers(0, r.size, r.size)] for r in picked]))
    alpha = (1.0 - confidence) / 2.0
    return Estimate(value, float(np.quantile(draws, alpha)), float(np.quantile(draws, 1.0 - alpha)))


def difference_of_means(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], num_resamples: int = 2000,
                        seed: int = 0) -> Estimate:
    """mean(a) - mean(b) with a bootstrap interval (each side resampled hierarchically, independently)."""
    ea = [np.asarray(v, dtype=float) for v in a if len(v)]
    eb = [np.asarray(v, dtype=float) for v in b if len(v)]
    if not ea or not eb:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)

    def draw(runs: list[np.ndarray]) -> float:
        picked = [runs[j] for j in rng.integers(0, len(runs), len(runs))]
        return float(np.mean(np.concatenate([r[rng.integers(0, r.size, r.size)] for r in picked])))

    diffs = np.array([draw(ea) - draw(eb) for _ in range(num_resamples)])
    value = float(np.mean(np.concatenate(ea)) - np.mean(np.concatenate(eb)))
    return Estimate(value, float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975)))


def summarize_metric(per_seed: Sequence[Sequence[float]], num_resamples: int = 2000) -> dict[str, Estimate]:
    return {name: hierarchical_bootstrap(per_seed, fn, num_resamples) for name, fn in STATISTICS.items()}


def mean_over_seeds(values: Sequence[float], num_resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean of one number per seed (e.g. final held-out pass@1) with a bootstrap interval over seeds."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not x.size:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = np.array([np.mean(x[rng.integers(0, x.size, x.size)]) for _ in range(num_resamples)])
    return Estimate(float(x.mean()), float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975)))
