"""Ultra-sparse recipes (< 3 % of expert parameters active per token), the bias-speed schedule, the balance
figures, and elastic sampling / export at 128+ experts."""

import random

import pytest
import torch

from jobs.recipes.pretrain import (
    pretrain_tiny,
    pretrain_ultrasparse_smoke,
    pretrain_ultrasparse_tiny,
    pretrain_ultrasparse_tiny_baseline,
    pretrain_ultrasparse_tiny_e256,
)
from pretrain.balance import layer_balance, normalized_entropy, step_balance_metrics
from pretrain.config import PretrainLoopConfig, bias_speed_at
from pretrain.elastic import ElasticConfig, named_family, sample_submodel
from rl_platform.config import ConfigError
from rl_platform.model import MoEModelConfig, MoETransformer
from rl_platform.model.hf_interop import export_hf, load_hf

ULTRASPARSE = [pretrain_ultrasparse_tiny, pretrain_ultrasparse_tiny_baseline, pretrain_ultrasparse_tiny_e256,
               pretrain_ultrasparse_smoke]


@pytest.mark.parametrize("recipe", ULTRASPARSE, ids=lambda r: r.__name__)
def test_ultrasparse_recipes_activate_under_3_percent_of_expert_parameters(recipe):
    model = recipe().model
    assert model.num_experts >= 128
    assert model.activation_ratio() < 0.03
    assert (model.top_k + model.num_shared_experts) / (model.num_experts + model.num_shared_experts) < 0.03


def test_the_32_expert_base_is_not_ultra_sparse():
    assert pretrain_tiny().model.activation_ratio() > 0.10  # 5 of 33 expert units: an ordinary MoE


def test_ultrasparse_tiny_trains_as_long_as_pretrain_tiny():
    ultra, tiny = pretrain_ultrasparse_tiny(), pretrain_tiny()
    assert ultra.loop.num_steps == tiny.loop.num_steps
    assert (ultra.loop.micro_batch_size, ultra.loop.grad_accum_steps) == (tiny.loop.micro_batch_size,
                                                                          tiny.loop.grad_accum_steps)
    assert ultra.data == tiny.data
    assert not pretrain_ultrasparse_tiny_baseline().elastic.enabled


def test_bias_speed_schedule_switches_once():
    loop = PretrainLoopConfig(num_steps=100, bias_update_speed=1e-4, bias_update_speed_final=1e-5,
                              bias_speed_switch_fraction=0.8)
    speeds = [bias_speed_at(loop, step) for step in range(100)]
    assert speeds[:80] == [1e-4] * 80 and speeds[80:] == [1e-5] * 20
    constant = PretrainLoopConfig(num_steps=100, bias_update_speed=1e-3)
    assert {bias_speed_at(constant, step) for step in range(100)} == {1e-3}


def test_bad_bias_schedule_is_a_clear_error():
    with pytest.raises(ConfigError, match="bias_speed_switch_fraction=1.5 must be in"):
        PretrainLoopConfig(bias_speed_switch_fraction=1.5)
    with pytest.raises(ConfigError, match="bias_update_speed"):
        PretrainLoopConfig(bias_update_speed=-1e-4)


def test_layer_balance_by_hand():
    counts_LE = torch.tensor([[0.0, 2.0, 4.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    balance = layer_balance(counts_LE)
    assert balance.dead_L == [1, 0]
    assert balance.max_over_mean_L == pytest.approx([2.0, 1.0])
    assert balance.min_over_mean_L == pytest.approx([0.0, 1.0])
    assert balance.cv_L == pytest.approx([2.0**0.5 / 2, 0.0])
    p = torch.tensor([0.25, 0.5, 0.25])
    assert balance.entropy_L[0] == pytest.approx(float(-(p * p.log()).sum()) / torch.log(torch.tensor(4.0)).item())
    assert balance.entropy_L[1] == pytest.approx(1.0)
    assert balance.summary()["dead_experts"] == 1.0
    assert normalized_entropy(torch.tensor([1.0, 0.0, 0.0])) == 0.0


def test_step_metrics_report_speed_and_bias_spread():
    loads_LE = torch.tensor([[0.0, 4.0], [2.0, 2.0]])
    bias_LE = torch.tensor([[0.3, -0.1], [0.0, 0.0]])
    metrics = step_balance_metrics(loads_LE, bias_LE, 1e-4)
    assert metrics["moe/bias_speed"] == 1e-4
    assert metrics["moe/bias_spread"] == pytest.approx(0.2)
    assert metrics["moe/dead_experts"] == 0.5
    assert metrics["moe/expert_load_max"] == pytest.approx(1.5)


def test_elastic_sampling_at_128_experts_top_2():
    model = pretrain_ultrasparse_tiny().model
    rng = random.Random(0)
    samples = [sample_submodel(rng, model, ElasticConfig()) for _ in range(2000)]
    assert {len(s.experts) for s in samples} == {64, 128}
    assert {s.top_k for s in samples} == {1, 2}  # the only k below the default 2 is top-1
    assert sum(s.top_k == 1 for s in samples) / len(samples) == pytest.approx(0.2, abs=0.03)
    for s in samples:
        s.validate(model)


def test_named_family_at_top_2_has_no_duplicate_of_the_full_model():
    family = named_family(pretrain_ultrasparse_tiny().model)
    assert set(family) == {"full", "depth-75", "experts-50", "topk-1"}
    assert family["experts-50"].experts == tuple(range(64))
    assert set(named_family(pretrain_ultrasparse_tiny_e256().model)) == {"full", "depth-75", "experts-50", "topk-2",
                                                                        "topk-1"}


def test_export_of_an_expert_subset_at_128_experts_matches_the_elastic_forward(tmp_path):
    config = MoEModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                            num_experts=128, top_k=2, num_shared_experts=1, expert_ffn_dim=8, initializer_range=0.1)
    torch.manual_seed(0)
    model = MoETransformer(config).eval()
    for moe in model.moe_layers():
        moe.router.selection_bias_E.normal_(0, 0.01)
    family = named_family(config)
    ids = torch.randint(3, 64, (2, 24))
    for name in ("experts-50", "topk-1", "depth-75"):
        loaded = load_hf(export_hf(model, tmp_path / name, submodel=family[name])).eval()
        assert loaded.config.num_experts == len(family[name].experts)
        with torch.no_grad():
            want = model.logits(model(ids, submodels=[family[name]] * 2).hidden_BSD)
            out = loaded(ids, capture_routes=True)
            got = loaded.logits(out.hidden_BSD)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert out.routes_BSLK.shape[-2:] == (len(family[name].layers), family[name].top_k)
