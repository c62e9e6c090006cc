"""The controller against in-process fakes: ordering, versions, failed samples, metrics."""

import pytest

from rl_platform.controller import Controller, ControllerConfig, SamplingConfig
from tests.fakes import FakeGenerator, FakeScorer, FakeTrainer, prompts


def _controller(flat_prompts=frozenset(), **loop):
    gen, scorer, trainer = FakeGenerator(), FakeScorer(flat_prompts), FakeTrainer()
    ctrl = Controller(gen, scorer, trainer, prompts, ControllerConfig(num_prompts_per_step=3, **loop),
                      SamplingConfig(num_samples_per_prompt=4, seed=100))
    return ctrl, gen, trainer


def test_step_trains_on_every_rollout_and_syncs_the_new_version():
    ctrl, gen, trainer = _controller()
    metrics = ctrl.run_step(0)
    rollouts, advantages = trainer.seen[0]
    assert len(rollouts) == 12 and [r.prompt.prompt_id for r in rollouts[:4]] == ["train/0.0"] * 4
    assert gen.loaded == [1] and ctrl.policy_version == 1
    ctrl.run_step(1)
    assert gen.loaded == [1, 2]
    # each sample's seed is a function of its key and the base seed, not of the step or the engine
    assert all(seed == key.seed(100) for _, key, _, seed in gen.submitted)
    assert len({seed for *_, seed in gen.submitted}) == 24
    assert metrics["policy/version"] == 1.0
    for key in ("timing/generate", "timing/score", "timing/learn", "timing/sync", "reward/mean",
                "reward/pass_rate", "reward/failed_count", "rollout/response_length_mean"):
        assert key in metrics


def test_failed_samples_are_excluded_not_zeroed():
    ctrl, _, trainer = _controller()
    metrics = ctrl.run_step(0)
    rollouts, advantages = trainer.seen[0]
    assert metrics["reward/failed_count"] == 3.0
    for r, a in zip(rollouts, advantages, strict=True):
        if r.completion.sample_index == 3:
            assert r.reward.failed and r.reward.value is None and a is None
    # group of 3 valid rewards [0, 1, 0]: mean 1/3, std sqrt(2)/3
    group = advantages[:4]
    assert group[1] == pytest.approx((1 - 1 / 3) / (2**0.5 / 3), rel=1e-5)
    assert metrics["reward/mean"] == pytest.approx(1 / 3)
    assert metrics["reward/pass_rate"] == pytest.approx(1 / 3)


def test_stale_completions_are_refused():
    ctrl, gen, _ = _controller()
    gen.version = 7  # an engine serving weights the learner never published
    with pytest.raises(RuntimeError, match=r"policy versions \[7\] but .* the learner is at 0"):
        ctrl.run_step(0)


def test_groups_without_signal_are_left_out_of_the_update():
    ctrl, gen, trainer = _controller(flat_prompts=frozenset({"train/0.1"}))
    metrics = ctrl.run_step(0)
    rollouts, advantages = trainer.seen[0]
    assert [r.prompt.prompt_id for r in rollouts] == ["train/0.0"] * 4 + ["train/0.2"] * 4
    assert metrics["train/rows"] == 8.0 and metrics["train/skipped"] == 0.0
    assert metrics["reward/zero_signal_group_frac"] == pytest.approx(1 / 3)


def test_flat_groups_are_kept_when_asked():
    ctrl, _, trainer = _controller(flat_prompts=frozenset({"train/0.1"}), skip_zero_signal_groups=False)
    ctrl.run_step(0)
    assert len(trainer.seen[0][0]) == 12


def test_a_step_with_only_flat_groups_skips_the_update_and_keeps_the_version():
    ctrl, gen, trainer = _controller(flat_prompts=frozenset({"train/0.0", "train/0.1", "train/0.2"}))
    metrics = ctrl.run_step(0)
    assert trainer.seen == [] and gen.loaded == [] and ctrl.policy_version == 0
    assert metrics["train/skipped"] == 1.0 and metrics["train/rows"] == 0.0
    ctrl.run_step(1)  # the engine still serves version 0, which is what the controller expects


def test_rollout_entropy_estimate_covers_every_sampled_token_including_flat_groups():
    # every fake completion samples tokens with engine logprobs [-0.5, -0.1]: mean surprisal 0.3 nats/token,
    # also for the flat group that the update leaves out (policy/entropy only sees trained tokens)
    ctrl, _, _ = _controller(flat_prompts=frozenset({"train/0.1"}))
    metrics = ctrl.run_step(0)
    assert metrics["rollout/entropy"] == pytest.approx(0.3)
