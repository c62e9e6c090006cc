"""Rule-based arithmetic rewards on hand-made completions."""

from __future__ import annotations

import pytest

from rewards.verifiers import (
    ArithmeticFormatConfig,
    ArithmeticVerifierConfig,
    LengthPenaltyConfig,
    overlong_penalty,
)

from .conftest import GOOD, sample


def _values(config, samples):
    return [r.value for r in config.build().score(samples)]


def test_verifier_scores_correct_incorrect_and_malformed():
    completions = [
        GOOD,                                      # correct
        GOOD.replace("433", "434"),                # wrong final answer
        " 7+6=13 c1; so 433",                      # no #### line: malformed -> wrong, not failed
        GOOD + "\n#### 12",                        # two answers: guessing is wrong
        " so 433\n####433",                        # no space is still a parseable answer
    ]
    assert _values(ArithmeticVerifierConfig(), [sample(c) for c in completions]) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_verifier_prefers_metadata_reference_and_fails_when_it_has_none():
    scorer = ArithmeticVerifierConfig().build()
    results = scorer.score([
        sample(" so 5\n#### 5", prompt="What is two plus three?", answer=5),
        sample(" so 5\n#### 5", prompt="What is two plus three?"),  # no reference anywhere
        sample(GOOD, answer="not a number"),
    ])
    assert results[0].value == 1.0
    assert results[1].failed and results[1].reason.startswith("no_reference:")
    assert results[2].failed and results[2].reason.startswith("bad_reference:")
    assert scorer.pass_threshold == 1.0


def test_format_reward_requires_one_final_consistent_answer_line():
    completions = [
        GOOD,                                   # well formed
        GOOD.replace("#### 433", "#### 4 3 3"), # malformed answer line
        GOOD + "\nthanks",                      # answer line is not last
        GOOD + "\n#### 433",                    # two answer lines
        GOOD.replace("so 433", "so 434"),       # inconsistent with its own working
        "#### 433",                             # no working at all
        GOOD.replace("433", "-433"),            # negative answers are well formed
    ]
    assert _values(ArithmeticFormatConfig(), [sample(c) for c in completions]) == [1, 0, 0, 0, 0, 0, 1]
    assert _values(ArithmeticFormatConfig(require_consistent_so=False),
                   [sample(GOOD.replace("so 433", "so 434"))]) == [1.0]


@pytest.mark.parametrize(("length", "expected"), [
    (0, 0.0), (384, 0.0),        # up to max_len - cache_len: no penalty
    (385, -1 / 128), (448, -0.5), (512, -1.0),  # linear ramp inside the cache zone
    (513, -1.0), (10_000, -1.0),  # beyond max_len: clamped at -1
])
def test_overlong_penalty_boundaries(length, expected):
    assert overlong_penalty(length, max_len=512, cache_len=128) == pytest.approx(expected)


def test_length_penalty_in_chars_and_tokens():
    chars = LengthPenaltyConfig(max_len=10, cache_len=4, unit="chars").build()
    assert [r.value for r in chars.score([sample("x" * 6), sample("x" * 8), sample("x" * 10)])] == [0.0, -0.5, -1.0]
    tokens = LengthPenaltyConfig(max_len=10, cache_len=4, unit="tokens").build()
    results = tokens.score([sample("short text", num_completion_tokens=8), sample("no count")])
    assert results[0].value == -0.5
    assert results[1].failed and results[1].reason.startswith("no_length:")


def test_length_penalty_counts_tokens_with_a_tokenizer(tiny_reward_model_dir):
    scorer = LengthPenaltyConfig(max_len=10, cache_len=4, unit="tokens", tokenizer_path=tiny_reward_model_dir).build()
    # the digit tokenizer splits every digit: 12 digits are at least 12 tokens -> past max_len
    assert scorer.score([sample("123456789012")])[0].value == -1.0
