"""Advantages and policy losses on hand-computed tensors."""

import math

import pytest
import torch

from rl_platform.advantages import group_advantages
from rl_platform.losses import GRPOLossConfig, GSPOLossConfig, PolicyLossInputs
from rl_platform.rl_metrics import route_mismatch_metrics, train_infer_metrics


def test_group_advantages_by_hand():
    assert group_advantages([1.0, 0.0, 0.0, 1.0]) == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-5)
    assert group_advantages([2.0, 0.0, None], normalize_std=False) == [1.0, -1.0, None]
    assert group_advantages([0.5, 0.5]) == [0.0, 0.0]
    assert group_advantages([None, None]) == [None, None]


def _inputs(logprobs, old, adv, mask, **kw):
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return PolicyLossInputs(logprobs_BS=t(logprobs), old_logprobs_BS=t(old), advantages_B=t(adv),
                            mask_BS=t(mask), **kw)


def test_grpo_token_level_loss_and_clipping_by_hand():
    # row 0: A=+1, ratios e^0.5=1.65 (clipped at 1.28) and 1.0; row 1: A=-1, ratio e^-0.5=0.61 (clipped at 0.8)
    x = _inputs([[0.5, 0.0], [-0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [1.0, -1.0], [[1, 1], [1, 0]])
    out = GRPOLossConfig(clip_low=0.2, clip_high=0.28).loss(x)
    expected = -(1.28 + 1.0 + (-0.8)) / 3
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)
    assert out.clip_frac == pytest.approx(2 / 3)


def test_grpo_gradient_is_zero_outside_the_mask_and_for_clipped_tokens():
    lp = torch.tensor([[0.5, 0.0, 0.3]], requires_grad=True)
    x = PolicyLossInputs(logprobs_BS=lp, old_logprobs_BS=torch.zeros(1, 3), advantages_B=torch.tensor([1.0]),
                         mask_BS=torch.tensor([[1.0, 1.0, 0.0]]))
    GRPOLossConfig().loss(x).loss.backward()
    assert lp.grad[0, 0] == 0.0  # ratio 1.65 > 1.28 with A>0: clipped, no gradient
    assert lp.grad[0, 1] == pytest.approx(-1 / 2)
    assert lp.grad[0, 2] == 0.0  # masked


def test_kl_term_uses_k3():
    x = _inputs([[0.0]], [[0.0]], [0.0], [[1.0]], ref_logprobs_BS=torch.tensor([[-0.5]]))
    out = GRPOLossConfig(kl_coef=0.1).loss(x)
    k3 = math.exp(-0.5) + 0.5 - 1
    assert out.kl_to_ref == pytest.approx(k3, rel=1e-6)
    assert float(out.loss) == pytest.approx(0.1 * k3, rel=1e-6)


def test_gspo_sequence_ratio_is_exp_of_mean_log_ratio():
    x = _inputs([[0.2, 0.4]], [[0.0, 0.0]], [1.0], [[1, 1]])
    out = GSPOLossConfig(clip_low=0.5, clip_high=0.5).loss(x)
    assert out.ratio_mean == pytest.approx(math.exp(0.3), rel=1e-6)
    assert float(out.loss) == pytest.approx(-math.exp(0.3), rel=1e-6)


def test_train_infer_metrics_by_hand():
    learner = torch.tensor([[-1.0, -2.0, -0.1]])
    gen = torch.tensor([[-1.0, -1.0, -0.1 - math.log(3)]])
    m = train_infer_metrics(learner, gen, torch.tensor([[1.0, 1.0, 1.0]]))
    ratios = [1.0, math.exp(-1.0), 3.0]
    assert m["train/kl_train_infer"] == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 3)
    assert m["moe/extreme_token_frac_tau2"] == pytest.approx(2 / 3)  # e^-1 and 3 are beyond a factor 2
    assert m["train/kl_train_infer_tokens"] == 3.0


def test_route_mismatch_compares_expert_sets_per_layer():
    a = torch.tensor([[[[1, 2], [3, 4]], [[5, 6], [7, 0]]]], dtype=torch.int16)  # [B=1, S=2, L=2, K=2]
    b = torch.tensor([[[[2, 1], [3, 5]], [[5, 6], [7, 0]]]], dtype=torch.int16)
    m = route_mismatch_metrics(a, b, torch.tensor([[True, True]]))
    assert m["moe/route_mismatch"] == pytest.approx(1 / 4)
    assert m["moe/route_mismatch_layer0"] == 0.0 and m["moe/route_mismatch_layer1"] == pytest.approx(0.5)
    assert m["moe/route_mismatch_tokens_any_layer"] == pytest.approx(0.5)
