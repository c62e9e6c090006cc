"""Every learner forward of one update sees the same experts: the reference model's KL term included."""

import pytest

from rl_platform.learner import Learner, LearnerConfig
from tests.integration.test_learner import _rollouts, model_dir  # noqa: F401  (module fixture)


@pytest.mark.parametrize("mode", ["R3", "R2"])
def test_kl_to_the_reference_is_zero_before_the_policy_moves(model_dir, mode):  # noqa: F811
    """At the first update the policy's weights are the reference's, so KL(policy || reference) must be 0 even
    when the rollout's routes differ from the learner's: the reference is scored with the routes the update
    replays. (Scored with live routes under R3, it measured the route flips instead, and its gradient pulled
    the replayed-route log-probs towards the live-route ones.)"""
    config = LearnerConfig(routing_replay=mode, micro_batch_size=4)
    config.loss.kl_coef = 0.1
    learner = Learner(config, str(model_dir))
    metrics = learner.train_on_rollouts(*_rollouts(model_dir, perturb_routes=True))
    assert metrics["moe/route_mismatch"] == pytest.approx(1.0)  # the routes the update replays are not live ones
    assert metrics["loss/kl_to_ref"] == pytest.approx(0.0, abs=1e-7)
