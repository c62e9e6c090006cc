"""Reward metrics (`reward/...` keys) from a batch of RewardResults; failed samples are counted, not averaged.

    reward/count, reward/failed_count, reward/failed_frac     every batch
    reward/mean, reward/std, reward/min, reward/max            over non-failed samples (absent if none)
    reward/pass_rate                                           verifiers: value >= pass_threshold
    reward/<component>/mean                                    weighted rewards, per component
    reward/shadow_mean, reward/shadow_failed_count,            when a shadow reward is configured
    reward/shadow_agreement, reward/shadow_corr

`shadow_agreement` is the fraction of samples both scored where |primary - shadow| <= agreement_tol: the
right summary when the shadow is a new version of the same reward. `shadow_corr` (Pearson) is the one to
watch when the shadow lives on another scale, e.g. a reward model shadowing a 0/1 verifier.
Reductions are per batch; the caller aggregates across steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rewards.base import RewardResult


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, sx = _mean_std(xs)
    my, sy = _mean_std(ys)
    if sx == 0.0 or sy == 0.0:
        return None  # undefined for a constant reward; omit rather than log a fake 0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (len(xs) * sx * sy)


def reward_metrics(results: Sequence[RewardResult], *, pass_threshold: float | None = None,
                   agreement_tol: float = 1e-6, prefix: str = "reward") -> dict[str, float]:
    """Metrics dict for one batch; `pass_threshold` is the scorer's (`scorer.pass_threshold`)."""
    metrics: dict[str, float] = {}
    values = [r.value for r in results if not r.failed and r.value is not None]
    metrics[f"{prefix}/count"] = float(len(results))
    metrics[f"{prefix}/failed_count"] = float(len(results) - len(values))
    metrics[f"{prefix}/failed_frac"] = (len(results) - len(values)) / len(results) if results else 0.0
    if values:
        mean, std = _mean_std(values)
        metrics.update({f"{prefix}/mean": mean, f"{prefix}/std": std,
                        f"{prefix}/min": min(values), f"{prefix}/max": max(values)})
        if pass_threshold is not None:
            metrics[f"{prefix}/pass_rate"] = sum(v >= pass_threshold for v in values) / len(values)
    component_values: dict[str, list[float]] = {}
    for result in results:
        for key, value in (result.components or {}).items():
            if value is not None:
                component_values.setdefault(key, []).append(value)
    for key, vals in sorted(component_values.items()):
        metrics[f"{prefix}/{key}/mean"] = sum(vals) / len(vals)
    shadowed = [r for r in results if r.shadow is not None]
    if shadowed:
        metrics.update(_shadow_metrics(shadowed, agreement_tol, prefix))
    return metrics


def _shadow_metrics(results: list[RewardResult], agreement_tol: float, prefix: str) -> dict[str, float]:
    metrics: dict[str, float] = {}
    shadow_values = [r.shadow.value for r in results if r.shadow is not None and not r.shadow.failed]
    metrics[f"{prefix}/shadow_failed_count"] = float(len(results) - len(shadow_values))
    if shadow_values:
        metrics[f"{prefix}/shadow_mean"] = sum(shadow_values) / len(shadow_values)
    pairs = [(r.value, r.shadow.value) for r in results
             if r.shadow is not None and r.value is not None and r.shadow.value is not None]
    if pairs:
        metrics[f"{prefix}/shadow_agreement"] = sum(abs(p - s) <= agreement_tol for p, s in pairs) / len(pairs)
        corr = _pearson([p for p, _ in pairs], [s for _, s in pairs])
        if corr is not None:
            metrics[f"{prefix}/shadow_corr"] = corr
    return metrics
