"""Policy losses and their pieces on hand-computed tensors."""

import math

import pytest
import torch

from rl_platform.config import ConfigError, apply_overrides, config_to_dict
from rl_platform.learner import LearnerConfig
from rl_platform.losses import (
    LOSSES,
    ClipHigher,
    ConstantNormaliser,
    DrGRPOLossConfig,
    DualClip,
    GRPOLossConfig,
    GSPOIcePopLossConfig,
    GSPOLossConfig,
    IcePopCorrection,
    MISCLossConfig,
    PolicyLossInputs,
    SeqIcePopCorrection,
    SeqMeanTokenMean,
    SymmetricClip,
    TISCorrection,
)
from rl_platform.rl_metrics import route_mismatch_metrics, train_infer_metrics


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def _inputs(logprobs, old, adv, mask, **kw):
    return PolicyLossInputs(logprobs_BS=t(logprobs), old_logprobs_BS=t(old), advantages_B=t(adv), mask_BS=t(mask),
                            **kw)


def test_grpo_token_level_loss_and_clipping_by_hand():
    # row 0: A=+1, ratios e^0.5=1.65 (clipped at 1.28) and 1.0; row 1: A=-1, ratio e^-0.5=0.61 (clipped at 0.8)
    x = _inputs([[0.5, 0.0], [-0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [1.0, -1.0], [[1, 1], [1, 0]])
    out = GRPOLossConfig(clip=ClipHigher(low=0.2, high=0.28)).loss(x)
    expected = -(1.28 + 1.0 + (-0.8)) / 3
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert out.clip_frac == pytest.approx(2 / 3)


def test_grpo_gradient_is_zero_outside_the_mask_and_for_clipped_tokens():
    lp = torch.tensor([[0.5, 0.0, 0.3]], requires_grad=True)
    x = PolicyLossInputs(logprobs_BS=lp, old_logprobs_BS=torch.zeros(1, 3), advantages_B=t([1.0]),
                         mask_BS=t([[1.0, 1.0, 0.0]]))
    GRPOLossConfig().loss(x).loss.backward()
    assert lp.grad[0, 0] == 0.0  # ratio 1.65 > 1.28 with A>0: clipped, no gradient
    assert lp.grad[0, 1] == pytest.approx(-1 / 2)
    assert lp.grad[0, 2] == 0.0  # masked


def test_symmetric_and_dual_clip_by_hand():
    # A = -1 and ratio e^2 = 7.39: PPO's min keeps -7.39 (unbounded); dual clip floors it at c*A = -3.
    x = _inputs([[2.0, 0.0]], [[0.0, 0.0]], [-1.0], [[1, 1]])
    ppo = GRPOLossConfig(clip=SymmetricClip(eps=0.2)).loss(x)
    assert float(ppo.loss) == pytest.approx((math.exp(2.0) + 1.0) / 2, rel=1e-6)
    dual = GRPOLossConfig(clip=DualClip(c=3.0)).loss(x)
    assert float(dual.loss) == pytest.approx((3.0 + 1.0) / 2, rel=1e-6)
    assert dual.clip_frac == pytest.approx(0.5)
    lp = t([[2.0, 0.0]]).requires_grad_()
    GRPOLossConfig(clip=DualClip()).loss(PolicyLossInputs(logprobs_BS=lp, old_logprobs_BS=torch.zeros(1, 2),
                                                          advantages_B=t([-1.0]), mask_BS=t([[1, 1]]))).loss.backward()
    assert lp.grad[0, 0] == 0.0 and lp.grad[0, 1] == pytest.approx(0.5)  # floored token: no gradient


def test_aggregations_by_hand():
    # per-token terms (on-policy ratio 1, so the surrogate is A): row 0 has 3 tokens of A=1, row 1 one of A=3
    x = _inputs([[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]], [1.0, 3.0], [[1, 1, 1], [1, 0, 0]])
    assert float(GRPOLossConfig().loss(x).loss) == pytest.approx(-(3 * 1 + 3) / 4)
    seq = GRPOLossConfig(aggregation=SeqMeanTokenMean()).loss(x)
    assert float(seq.loss) == pytest.approx(-(1.0 + 3.0) / 2)
    const = DrGRPOLossConfig(aggregation=ConstantNormaliser(tokens_per_sequence=10)).loss(x)
    assert float(const.loss) == pytest.approx(-(3 * 1 + 3) / (2 * 10))


def test_kl_term_uses_k3():
    x = _inputs([[0.0]], [[0.0]], [0.0], [[1.0]], ref_logprobs_BS=t([[-0.5]]))
    out = GRPOLossConfig(kl_coef=0.1).loss(x)
    k3 = math.exp(-0.5) + 0.5 - 1
    assert out.kl_to_ref == pytest.approx(k3, rel=1e-6)
    assert float(out.loss.detach()) == pytest.approx(0.1 * k3, rel=1e-6)


def test_gspo_sequence_ratio_is_exp_of_mean_log_ratio_and_its_gradient():
    lp = t([[0.2, 0.4]]).requires_grad_()
    x = PolicyLossInputs(logprobs_BS=lp, old_logprobs_BS=torch.zeros(1, 2), advantages_B=t([1.0]),
                         mask_BS=t([[1, 1]]))
    out = GSPOLossConfig(clip=ClipHigher(low=0.5, high=0.5)).loss(x)
    assert out.ratio_mean == pytest.approx(math.exp(0.3), rel=1e-6)
    assert float(out.loss.detach()) == pytest.approx(-math.exp(0.3), rel=1e-6)
    out.loss.backward()
    # d(-s)/d logp_t = -s / |y|: the same as differentiating s = exp(mean log r) directly
    assert lp.grad.tolist()[0] == pytest.approx([-math.exp(0.3) / 2] * 2, rel=1e-6)


def _random_batch(seed: int, b: int = 8, s: int = 7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, s + 1, (b,), generator=g)
    mask = (torch.arange(s)[None, :] < lengths[:, None]).float()
    mask[3] = 0.0  # a failed sample: no scored token
    old = -torch.rand(b, s, generator=g) * 3
    lp = old + 0.3 * torch.randn(b, s, generator=g)
    gen = old + 0.8 * torch.randn(b, s, generator=g)  # wide train-inference gap: masks and caps fire
    adv = torch.randn(b, generator=g)
    return lp, old, gen, adv, mask


PRESETS = [GRPOLossConfig(), DrGRPOLossConfig(), GSPOLossConfig(clip=ClipHigher(low=0.2, high=0.2)),
           GSPOIcePopLossConfig(), MISCLossConfig(), GRPOLossConfig(correction=TISCorrection()),
           GRPOLossConfig(clip=DualClip(), correction=IcePopCorrection())]


@pytest.mark.parametrize("loss", PRESETS, ids=lambda c: f"{type(c).__name__}-{type(c.correction).__name__}")
def test_gradient_is_invariant_to_the_micro_batch_split(loss):
    # The learner sums micro-batch losses; with step-global normalisers 1 and 4 micro-batches give one gradient.
    lp, old, gen, adv, mask = _random_batch(0)
    tokens, seqs = int(mask.sum()), int((mask.sum(-1) > 0).sum())

    def grad(num_micro: int) -> torch.Tensor:
        leaf = lp.clone().requires_grad_()
        total = 0.0
        for rows in torch.arange(lp.shape[0]).chunk(num_micro):
            x = PolicyLossInputs(logprobs_BS=leaf[rows], old_logprobs_BS=old[rows], advantages_B=adv[rows],
                                 mask_BS=mask[rows], generator_logprobs_BS=gen[rows], ref_logprobs_BS=old[rows],
                                 num_global_tokens=tokens, num_global_seqs=seqs)
            total = total + loss.loss(x).loss
        total.backward()
        return leaf.grad

    one, four = grad(1), grad(4)
    assert one.abs().sum() > 0
    torch.testing.assert_close(four, one, atol=1e-6, rtol=0)
    assert torch.equal(one[mask == 0], torch.zeros_like(one[mask == 0]))  # padding and the failed row: exactly 0


def test_tis_truncates_the_train_inference_ratio_at_the_cap():
    # rho = exp(old - gen) = 3 (capped at 2) and 0.5 (kept); on-policy ratio 1, A = 1
    gen = -t([[math.log(3), -math.log(2)]])
    x = _inputs([[0.0, 0.0]], [[0.0, 0.0]], [1.0], [[1, 1]], generator_logprobs_BS=gen)
    out = GRPOLossConfig(correction=TISCorrection(cap=2.0)).loss(x)
    assert float(out.loss.detach()) == pytest.approx(-(2.0 + 0.5) / 2, rel=1e-6)
    assert out.metrics["correction/capped_frac"] == pytest.approx(0.5)


def test_icepop_masks_tokens_outside_the_band_with_exactly_zero_gradient():
    # rho = 1.0 (kept, weight 1), 6.0 (> beta: masked), 0.4 (< alpha: masked), 2.0 (kept, weight 2)
    rho = [1.0, 6.0, 0.4, 2.0]
    lp = torch.zeros(1, 4, requires_grad=True)
    x = PolicyLossInputs(logprobs_BS=lp, old_logprobs_BS=torch.zeros(1, 4), advantages_B=t([1.0]),
                         mask_BS=torch.ones(1, 4), generator_logprobs_BS=-t([[math.log(r) for r in rho]]))
    out = GRPOLossConfig(correction=IcePopCorrection(alpha=0.5, beta=5.0)).loss(x)
    assert float(out.loss.detach()) == pytest.approx(-(1.0 + 2.0) / 4, rel=1e-6)
    assert out.metrics["correction/masked_frac"] == pytest.approx(0.5)
    out.loss.backward()
    assert lp.grad[0, 1].item() == 0.0 and lp.grad[0, 2].item() == 0.0
    assert lp.grad[0].tolist() == pytest.approx([-1 / 4, 0.0, 0.0, -2 / 4], rel=1e-6)


def test_misc_is_a_token_mask_on_the_gspo_sequence_ratio():
    # one sequence, off-policy by log r = (0.3, 0.0, -0.3) -> s = 1; train-inference rho = (1, 6, 0.8)
    lp = t([[0.3, 0.0, -0.3]]).requires_grad_()
    x = PolicyLossInputs(logprobs_BS=lp, old_logprobs_BS=torch.zeros(1, 3), advantages_B=t([1.0]),
                         mask_BS=torch.ones(1, 3), generator_logprobs_BS=-t([[0.0, math.log(6.0), math.log(0.8)]]))
    out = MISCLossConfig().loss(x)
    # J = 1/|y| sum_j M(rho_j) * min(s A, clip(s) A) with s = 1 inside GSPO's range
    assert float(out.loss.detach()) == pytest.approx(-(1.0 + 0.0 + 0.8) / 3, rel=1e-6)
    assert out.metrics["correction/masked_frac"] == pytest.approx(1 / 3)
    out.loss.backward()
    assert lp.grad[0, 1].item() == 0.0  # the masked token: exactly zero gradient
    assert lp.grad[0].tolist() == pytest.approx([-1.0 / 3, 0.0, -0.8 / 3], rel=1e-5)


def test_gspo_icepop_masks_whole_sequences():
    # seq 0: mean log rho = log 2 (kept, weight 2); seq 1: mean log rho = log 8 (> 5: every token masked)
    lp = torch.zeros(2, 2, requires_grad=True)
    gen = -t([[math.log(2.0), math.log(2.0)], [math.log(4.0), math.log(16.0)]])
    x = PolicyLossInputs(logprobs_BS=lp, old_logprobs_BS=torch.zeros(2, 2), advantages_B=t([1.0, 1.0]),
                         mask_BS=torch.ones(2, 2), generator_logprobs_BS=gen)
    out = GSPOIcePopLossConfig().loss(x)
    assert float(out.loss.detach()) == pytest.approx(-(2.0 + 0.0) / 2, rel=1e-6)
    assert out.metrics["correction/masked_frac"] == pytest.approx(0.5)
    assert isinstance(GSPOIcePopLossConfig().correction, SeqIcePopCorrection)
    out.loss.backward()
    assert torch.equal(lp.grad[1], torch.zeros(2))
    assert lp.grad[0].tolist() == pytest.approx([-0.5, -0.5], rel=1e-6)


def test_a_correction_without_engine_logprobs_says_what_is_missing():
    x = _inputs([[0.0]], [[0.0]], [1.0], [[1.0]])
    with pytest.raises(ValueError, match="generator_logprobs_BS"):
        MISCLossConfig().loss(x)


def test_presets_and_pieces_are_picked_by_name():
    assert {"grpo", "dr_grpo", "gspo", "gspo_icepop", "misc"} <= set(LOSSES.classes())
    config = apply_overrides(LearnerConfig(), ["loss=misc", "loss.correction=tis", "loss.correction.cap=3",
                                               "loss.clip=dual_clip", "loss.aggregation=token_mean"])
    assert config_to_dict(config.loss) == {
        "type": "misc", "kl_coef": 0.0, "ratio": {"type": "sequence"},
        "clip": {"type": "dual_clip", "low": 0.2, "high": 0.28, "c": 3.0},
        "correction": {"type": "tis", "cap": 3.0}, "aggregation": {"type": "token_mean"}}
    with pytest.raises(ConfigError, match="icepop"):
        apply_overrides(LearnerConfig(), ["loss.correction=icepopp"])
    with pytest.raises(ConfigError, match="beta"):
        IcePopCorrection(beta=0.9)


def test_train_infer_metrics_by_hand():
    learner = t([[-1.0, -2.0, -0.1]])
    gen = t([[-1.0, -1.0, -0.1 - math.log(3)]])
    m = train_infer_metrics(learner, gen, t([[1.0, 1.0, 1.0]]))
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
