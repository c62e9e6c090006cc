"""Weighted combination, shadow scoring and the metrics dict."""

from __future__ import annotations

import math

import pytest

from rewards.base import RewardResult
from rewards.combine import ShadowedReward, WeightedComponent, WeightedConfig
from rewards.metrics import reward_metrics
from rewards.python_function import CallableReward, PythonFunctionConfig
from rewards.verifiers import ArithmeticFormatConfig, ArithmeticVerifierConfig, LengthPenaltyConfig
from rl_platform.config import ConfigError

from .conftest import GOOD, sample


def nan_on_second(prompts, completions, **kwargs):
    return [math.nan if i == 1 else 0.5 for i in range(len(prompts))]


def crash(prompts, completions, **kwargs):
    raise RuntimeError("shadow is broken")


def test_weighted_sum_of_components_with_per_component_values():
    config = WeightedConfig(components=(
        WeightedComponent(weight=1.0, reward=ArithmeticVerifierConfig()),
        WeightedComponent(weight=0.5, reward=ArithmeticFormatConfig()),
        WeightedComponent(weight=2.0, reward=LengthPenaltyConfig(max_len=60, cache_len=20)),
    ))
    wrong_but_formatted = GOOD.replace("433", "434")
    results = config.build().score([sample(GOOD), sample(wrong_but_formatted), sample("x" * 50)])
    # GOOD is 49 chars: length penalty (40 - 49) / 20 = -0.45
    assert [r.value for r in results] == pytest.approx([1.0 + 0.5 - 0.9, 0.5 - 0.9, -1.0])
    assert results[0].components == {"arithmetic_verifier": 1.0, "arithmetic_format": 1.0,
                                     "length_penalty": pytest.approx(-0.45)}


def test_weighted_fails_a_sample_if_any_component_fails_it():
    config = WeightedConfig(components=(
        WeightedComponent(weight=1.0, reward=ArithmeticVerifierConfig()),
        WeightedComponent(weight=1.0, reward=PythonFunctionConfig(path=f"{__name__}:nan_on_second")),
    ))
    results = config.build().score([sample(), sample(), sample()])
    assert [r.failed for r in results] == [False, True, False]
    assert results[1].value is None and "non_finite" in results[1].reason
    assert results[1].components["arithmetic_verifier"] == 1.0  # still visible for debugging


def test_weighted_version_changes_with_weights_and_components():
    a = WeightedConfig(components=(WeightedComponent(weight=1.0, reward=ArithmeticVerifierConfig()),)).build()
    b = WeightedConfig(components=(WeightedComponent(weight=2.0, reward=ArithmeticVerifierConfig()),)).build()
    assert a.version != b.version


def test_weighted_rejects_empty_duplicate_and_shadowed_components():
    with pytest.raises(ConfigError, match="is empty"):
        WeightedConfig(components=())
    with pytest.raises(ConfigError, match="duplicate keys"):
        WeightedConfig(components=(WeightedComponent(weight=1.0, reward=ArithmeticVerifierConfig()),) * 2)
    with pytest.raises(ConfigError, match="shadow"):
        WeightedConfig(components=(WeightedComponent(
            weight=1.0, reward=ArithmeticVerifierConfig(shadow=ArithmeticFormatConfig())),))


def test_shadow_scores_every_sample_without_touching_the_primary():
    plain = ArithmeticVerifierConfig().build()
    shadowed = ArithmeticVerifierConfig(shadow=LengthPenaltyConfig(max_len=60, cache_len=20)).build()
    samples = [sample(GOOD), sample(GOOD.replace("433", "1"))]
    results = shadowed.score(samples)
    assert [r.value for r in results] == [r.value for r in plain.score(samples)]
    assert results[0].shadow_value == pytest.approx(-0.45)
    assert results[0].shadow.reward_name == "length_penalty"
    assert shadowed.version == plain.version


def test_crashing_shadow_never_fails_the_primary():
    scorer = ShadowedReward(primary=ArithmeticVerifierConfig().build(), shadow=CallableReward.from_callable(crash))
    results = scorer.score([sample()])
    assert results[0].value == 1.0 and not results[0].failed
    assert results[0].shadow.failed and "shadow is broken" in results[0].shadow.reason


def _result(value, shadow=None, components=None):
    shadow_result = None if shadow is False else _result(shadow) if shadow is not None else None
    return RewardResult(value=value, failed=value is None, reason=None if value is not None else "error: x",
                        reward_name="r", reward_version="v", shadow=shadow_result, components=components)


def test_metrics_exclude_failed_samples_and_count_them():
    results = [_result(1.0), _result(0.0), _result(None), _result(1.0)]
    metrics = reward_metrics(results, pass_threshold=1.0)
    assert metrics["reward/failed_count"] == 1.0
    assert metrics["reward/count"] == 4.0
    assert metrics["reward/mean"] == pytest.approx(2 / 3)
    assert metrics["reward/std"] == pytest.approx(math.sqrt(2 / 9))
    assert metrics["reward/pass_rate"] == pytest.approx(2 / 3)
    assert "reward/pass_rate" not in reward_metrics(results)  # not a verifier: no pass rate


def test_metrics_with_all_failed_have_counts_but_no_fake_mean():
    metrics = reward_metrics([_result(None), _result(None)])
    assert metrics["reward/failed_count"] == 2.0 and metrics["reward/failed_frac"] == 1.0
    assert "reward/mean" not in metrics


def test_shadow_and_component_metrics():
    results = [_result(1.0, shadow=1.0, components={"a": 1.0}), _result(0.0, shadow=0.0, components={"a": 0.0}),
               _result(1.0, shadow=0.0, components={"a": None}), _result(0.0, shadow=None)]
    metrics = reward_metrics(results)
    assert metrics["reward/shadow_agreement"] == pytest.approx(2 / 3)
    assert metrics["reward/shadow_mean"] == pytest.approx(1 / 3)
    assert metrics["reward/shadow_failed_count"] == 0.0
    assert metrics["reward/shadow_corr"] == pytest.approx(0.5)
    assert metrics["reward/a/mean"] == 0.5
    assert all(key.startswith("reward/") for key in metrics)
