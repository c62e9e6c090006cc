"""Statistics of the routing-replay study (docs/routing_replay.md, 'Study'): per-step metrics pooled over seeds,
summarised by mean / median / p90 / max with hierarchical bootstrap confidence intervals.

The bootstrap resamples seeds with replacement, then steps with replacement within each drawn seed, so the
interval reflects both run-to-run and step-to-step variation (steps of one run are not independent draws).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def _nan_aware(plain: Callable[..., np.ndarray], nan: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    # numpy's nan-variants of median/quantile loop in Python per row; use them only when there is padding
    def statistic(x: np.ndarray, axis: int | None = None) -> np.ndarray:
        return nan(x, axis=axis) if np.isnan(x).any() else plain(x, axis=axis)

    return statistic


STATISTICS: dict[str, Callable[..., np.ndarray]] = {
    "mean": _nan_aware(np.mean, np.nanmean),
    "median": _nan_aware(np.median, np.nanmedian),
    "p90": _nan_aware(lambda x, axis: np.quantile(x, 0.9, axis=axis),
                      lambda x, axis: np.nanquantile(x, 0.9, axis=axis)),
    "max": _nan_aware(np.max, np.nanmax),
}
"""Statistics over `axis`, NaN-aware (the bootstrap pads runs of unequal length with NaN)."""


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


def _clean_runs(per_seed: Sequence[Sequence[float]]) -> list[np.ndarray]:
    runs = [np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float) for values in per_seed]
    return [r for r in runs if r.size]


def _resample(runs: list[np.ndarray], num_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[R, seeds * max steps] pooled values of R hierarchical resamples (NaN-padded): each slot draws a seed,
    then that seed's steps with replacement."""
    longest = max(r.size for r in runs)
    slots = []
    for _ in runs:
        picked = rng.integers(0, len(runs), num_resamples)
        block = np.full((num_resamples, longest), np.nan)
        for j, run in enumerate(runs):
            rows = np.nonzero(picked == j)[0]
            block[rows, : run.size] = run[rng.integers(0, run.size, (rows.size, run.size))]
        slots.append(block)
    return np.concatenate(slots, axis=1)


def hierarchical_bootstrap(per_seed: Sequence[Sequence[float]], statistic: Callable[..., np.ndarray],
                           num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """`statistic(values, axis)` of the pooled values with a (seeds, then steps) percentile bootstrap interval."""
    runs = _clean_runs(per_seed)
    if not runs:
        return Estimate(float("nan"), float("nan"), float("nan"))
    value = float(statistic(np.concatenate(runs)))
    draws = statistic(_resample(runs, num_resamples, np.random.default_rng(seed)), axis=1)
    alpha = (1.0 - confidence) / 2.0
    return Estimate(value, float(np.quantile(draws, alpha)), float(np.quantile(draws, 1.0 - alpha)))


def difference_of_means(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], num_resamples: int = 2000,
                        seed: int = 0) -> Estimate:
    """mean(a) - mean(b) with a bootstrap interval (each side resampled hierarchically, independently)."""
    ea, eb = _clean_runs(a), _clean_runs(b)
    if not ea or not eb:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    diffs = (np.nanmean(_resample(ea, num_resamples, rng), axis=1)
             - np.nanmean(_resample(eb, num_resamples, rng), axis=1))
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
