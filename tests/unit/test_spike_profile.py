"""The spike profile of a step: which tokens carry its train-inference KL."""

import math

import torch

from rl_platform.spike_profile import flips_so_far_BS, spike_profile


def _step(spike_lp_shift=0.0, spike_p=0.5):
    g = torch.Generator().manual_seed(0)
    generator = torch.full((4, 25), math.log(0.5))
    learner = generator + 0.002 * torch.randn(4, 25, generator=g)
    generator[2, 10] = math.log(spike_p)
    learner[2, 10] = generator[2, 10] + spike_lp_shift
    return generator, learner, torch.ones(4, 25)


def test_one_far_off_token_carries_a_spike_steps_kl():
    generator, learner, mask = _step(spike_lp_shift=1.0, spike_p=0.004)
    out = spike_profile(generator, learner, mask)
    assert out["tokens"] == 100 and out["tokens_for_half_kl"] == 1
    assert out["worst_token_kl_mass"] > 0.9 and out["low_prob_kl_mass"] > 0.9
    assert out["low_prob_token_frac"] == 0.01
    assert abs(out["worst_token_p_engine"] - 0.004) < 1e-6
    quiet = spike_profile(*_step())
    assert quiet["tokens_for_half_kl"] > 10 and quiet["low_prob_kl_mass"] == 0.0
    assert quiet["kl"] < out["kl"] / 100


def test_tokens_after_a_route_flip_are_counted_from_the_flip_on():
    rollout = torch.zeros(2, 6, 3, 2, dtype=torch.int16)
    rollout[..., 1] = 1
    live = rollout.clone()
    live[0, 3, 1] = torch.tensor([1, 5])  # row 0 flips at position 3, layer 1
    live[1, 2, 0] = torch.tensor([1, 0])  # same set, other order: no flip
    flips = flips_so_far_BS(rollout, live)
    assert flips[0].tolist() == [0, 0, 0, 1, 1, 1] and flips[1].tolist() == [0] * 6
    generator = torch.zeros(2, 6)
    learner = torch.zeros(2, 6)
    learner[0, 4] = 0.5  # the only mismatched token comes after the flip
    out = spike_profile(generator, learner, torch.ones(2, 6), flips)
    assert out["after_flip_token_frac"] == 0.25 and out["after_flip_kl_mass"] == 1.0
    assert out["worst_token_after_flip"] == 1.0
