"""Failure semantics (raise / timeout / NaN / None / wrong count -> failed, never 0) and provenance hashes."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import pytest

from rewards.base import REWARDS, Failure, RewardConfig, RewardResult, config_version
from rewards.guard import GuardedScorer
from rewards.python_function import CallableReward
from rewards.verifiers import ArithmeticVerifierConfig, LengthPenaltyConfig
from rl_platform.config import ConfigError

from .conftest import sample


class _Raw:
    """A RawScorer returning whatever `fn` gives."""

    pass_threshold = None

    def __init__(self, fn, name: str = "raw") -> None:
        self.fn = fn
        self.name = name
        self.version = "v0"

    def score_batch(self, samples):
        return self.fn(samples)


def _guard(fn, timeout_s: float | None = 5.0, name: str = "raw") -> GuardedScorer:
    return GuardedScorer(_Raw(fn, name), timeout_s=timeout_s)


def test_raising_reward_fails_every_sample_with_the_exception_as_reason():
    def boom(samples):
        raise RuntimeError("grader crashed")

    results = _guard(boom).score([sample(), sample()])
    assert [r.value for r in results] == [None, None]
    assert all(r.failed and r.reason == "error: RuntimeError: grader crashed" for r in results)


def test_batch_over_timeout_fails_every_sample_and_returns_promptly():
    started = time.perf_counter()
    results = _guard(lambda s: time.sleep(3) or [1.0] * len(s), timeout_s=0.2).score([sample()] * 3)
    assert time.perf_counter() - started < 1.5
    assert all(r.failed and r.reason.startswith("timeout:") for r in results)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_fails_only_that_sample(bad):
    results = _guard(lambda s: [1.0, bad, 0.5]).score([sample()] * 3)
    assert [r.failed for r in results] == [False, True, False]
    assert results[1].value is None and results[1].reason.startswith("non_finite:")
    assert [results[0].value, results[2].value] == [1.0, 0.5]


def test_none_wrong_type_and_failure_objects_fail_their_samples():
    results = _guard(lambda s: [None, "high", Failure("judge: no verdict"), True]).score([sample()] * 4)
    assert [r.failed for r in results] == [True, True, True, False]
    assert results[0].reason.startswith("missing:")
    assert results[1].reason.startswith("type:")
    assert results[2].reason == "judge: no verdict"
    assert results[3].value == 1.0  # a bool is a number (TRL rewards sometimes return them)


def test_wrong_number_of_values_fails_the_batch():
    results = _guard(lambda s: [1.0]).score([sample()] * 2)
    assert all(r.failed and r.reason.startswith("contract:") for r in results)


def test_empty_batch_scores_nothing():
    assert _guard(lambda s: 1 / 0).score([]) == []


def test_failure_is_logged_once_per_reason_category(caplog):
    scorer = _guard(lambda s: [math.nan] * len(s), name="log_once_probe")
    with caplog.at_level(logging.WARNING, logger="rewards.guard"):
        scorer.score([sample()] * 5)
        scorer.score([sample()] * 5)
    assert len([r for r in caplog.records if "log_once_probe" in r.getMessage()]) == 1


def test_every_result_records_reward_name_and_version():
    scorer = ArithmeticVerifierConfig().build()
    result = scorer.score([sample()])[0]
    assert (result.reward_name, result.reward_version) == ("arithmetic_verifier", scorer.version)
    assert len(result.reward_version) == 12


def test_version_changes_with_config_and_is_stable_otherwise():
    base = config_version(LengthPenaltyConfig(max_len=512, cache_len=128))
    assert base == config_version(LengthPenaltyConfig(max_len=512, cache_len=128))
    assert base != config_version(LengthPenaltyConfig(max_len=1024, cache_len=128))
    # the shadow never changes the trained-on value, so it does not change the version
    assert base == config_version(LengthPenaltyConfig(max_len=512, cache_len=128,
                                                      shadow=ArithmeticVerifierConfig()))


def test_version_of_a_callable_changes_with_its_source():
    def reward_a(prompts, completions, **kwargs):
        return [1.0] * len(prompts)

    def reward_b(prompts, completions, **kwargs):
        return [2.0] * len(prompts)

    assert CallableReward.from_callable(reward_a).version != CallableReward.from_callable(reward_b).version


def test_result_invariant_failed_iff_value_is_none():
    with pytest.raises(ValueError):
        RewardResult(value=None, failed=False, reason=None, reward_name="x", reward_version="v")
    with pytest.raises(ValueError):
        RewardResult(value=None, failed=True, reason=None, reward_name="x", reward_version="v")


def test_bad_config_values_raise_config_error_naming_field_and_fix():
    with pytest.raises(ConfigError, match=r"LengthPenaltyConfig.cache_len=600 .*max_len=512"):
        LengthPenaltyConfig(max_len=512, cache_len=600)
    with pytest.raises(ConfigError, match="timeout_s"):
        ArithmeticVerifierConfig(timeout_s=0)


def test_registering_a_name_twice_is_refused():
    @dataclass(kw_only=True, slots=True)
    class Dup(RewardConfig):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        REWARDS.register("arithmetic_verifier")(Dup)
