"""Held-out evaluation through the role protocols, against the controller's fakes."""

import pytest

from rl_platform.controller import SamplingConfig
from rl_platform.evaluation import evaluate_pass_rate
from tests.fakes import FakeGenerator, FakeScorer, prompts


def test_sampled_pass_rate_counts_every_sample_and_skips_failed_ones():
    # 2 prompts x 4 samples: rewards [0, 1, 0, failed] each -> 2 passes of 6 scored samples
    metrics = evaluate_pass_rate(FakeGenerator(), FakeScorer(), prompts(0, 2),
                                 SamplingConfig(num_samples_per_prompt=4), pass_threshold=1.0,
                                 prefix="eval/sampled_")
    assert metrics["eval/sampled_pass_rate"] == pytest.approx(2 / 6)
    assert metrics["eval/sampled_failed_count"] == 2.0
    assert metrics["eval/sampled_num_prompts"] == 2.0


def test_greedy_pass_rate_uses_the_plain_prefix():
    metrics = evaluate_pass_rate(FakeGenerator(), FakeScorer(), prompts(0, 3),
                                 SamplingConfig(num_samples_per_prompt=2, temperature=0.0), pass_threshold=1.0)
    assert metrics["eval/pass_rate"] == pytest.approx(0.5)  # samples 0 and 1 of each prompt: one passes


def test_chunked_evaluation_reports_progress_per_chunk_and_gives_the_same_metrics():
    sampling = SamplingConfig(num_samples_per_prompt=4)
    whole = evaluate_pass_rate(FakeGenerator(), FakeScorer(), prompts(0, 5), sampling, pass_threshold=1.0)
    done: list[int] = []
    chunked = evaluate_pass_rate(FakeGenerator(), FakeScorer(), prompts(0, 5), sampling, pass_threshold=1.0,
                                 chunk_size=2, on_chunk=done.append)
    assert done == [2, 2, 1]  # prompts per finished chunk
    assert chunked == whole
