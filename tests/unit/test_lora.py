"""LoRA RL and elastic RL pieces without DeepSpeed: per-expert adapters, merged weights, the base view, config
errors, and per-row sub-model assignment (learner-level tests: tests/integration/test_lora_elastic_learner.py)."""

import pytest
import torch

from rl_platform.batching import TrainingBatch
from rl_platform.config import ConfigError
from rl_platform.elastic_rl import ElasticRL
from rl_platform.lora import LoRAConfig, LoRAPolicy
from rl_platform.lora_experts import ExpertLoRA
from rl_platform.model import MoEModelConfig, MoETransformer
from rl_platform.model.adapter import MoETransformerAdapter, load_adapter
from rl_platform.model.elastic import ElasticConfig
from rl_platform.model.hf_interop import export_hf
from rl_platform.model.moe import routed_experts

CONFIG = MoEModelConfig(vocab_size=64, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1, head_dim=16,
                        num_experts=8, top_k=2, expert_ffn_dim=16, initializer_range=0.2)
IDS = torch.tensor([[1, 5, 7, 9, 11, 13, 20, 21]])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    return export_hf(MoETransformer(CONFIG), tmp_path_factory.mktemp("lora_unit") / "base")


def _randomise_b(policy: LoRAPolicy) -> None:
    """Non-zero B everywhere (at init B = 0 and the adapters change nothing)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in policy.adapter_parameters().items():
            if "lora_B" in name or ".B_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_expert_lora_adds_exactly_its_merged_delta():
    moe = MoETransformer(CONFIG).moe_layers()[0]
    adapter = ExpertLoRA(num_experts=8, dim=32, ffn_dim=16, rank=4, alpha=8.0)
    x_TD = torch.randn(10, 32)
    ids_TK = torch.stack([torch.randperm(8)[:2] for _ in range(10)])
    gates_TK = torch.softmax(torch.randn(10, 2), -1)
    base = routed_experts(x_TD, ids_TK, gates_TK, moe.w_gate_EFD, moe.w_up_EFD, moe.w_down_EDF)
    torch.testing.assert_close(adapter(x_TD, ids_TK, gates_TK, moe), base, rtol=1e-5, atol=1e-6)  # B = 0
    with torch.no_grad():
        adapter.B_gu_E2FR.normal_(0, 0.1)
        adapter.B_d_EDR.normal_(0, 0.1)
    d_gate, d_up, d_down = adapter.delta_stacks()
    merged = routed_experts(x_TD, ids_TK, gates_TK, moe.w_gate_EFD + d_gate, moe.w_up_EFD + d_up,
                            moe.w_down_EDF + d_down)
    adapted = adapter(x_TD, ids_TK, gates_TK, moe)
    torch.testing.assert_close(adapted, merged, rtol=1e-4, atol=1e-5)
    assert (adapted - base).abs().max() > 1e-3
    adapter.enabled = False
    torch.testing.assert_close(adapter(x_TD, ids_TK, gates_TK, moe), base, rtol=0, atol=0)


def test_merged_weights_and_base_view_of_a_lora_policy(base_dir):
    policy = LoRAPolicy(load_adapter(base_dir), LoRAConfig(enabled=True, rank=4, alpha=8.0), base_path=base_dir)
    trainable = policy.adapter_parameters()
    assert trainable and all("lora_" in n or "expert_adapter" in n for n in trainable)
    assert not any("router" in n for n in trainable)
    _randomise_b(policy)
    frozen = {n: p.detach().clone() for n, p in policy.module.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        adapted = policy(IDS).hidden_BSD
        with policy.merged_weights():
            merged = policy(IDS).hidden_BSD
        base = load_adapter(base_dir)(IDS).hidden_BSD
        torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(policy.base_view()(IDS).hidden_BSD, base, rtol=0, atol=0)
        assert (adapted - base).abs().max() > 1e-3
    for name, p in policy.module.named_parameters():  # merging put the very base tensors back
        if not p.requires_grad:
            assert torch.equal(p, frozen[name]), name
    names = {n for n, _ in policy.checkpoint_tensors()}
    assert names == {n for n, _ in MoETransformerAdapter(MoETransformer(CONFIG)).checkpoint_tensors()}


def test_lora_config_errors_name_the_field(base_dir):
    with pytest.raises(ConfigError, match="LoRAConfig.rank"):
        LoRAConfig(enabled=True, rank=0)
    with pytest.raises(ConfigError, match="LoRAConfig.targets"):
        LoRAConfig(enabled=True, targets=("attention", "attention"))
    with pytest.raises(ValueError, match="selects no weight"):  # this model has no dense FFN layer
        LoRAPolicy(load_adapter(base_dir), LoRAConfig(enabled=True, targets=("dense_mlp",)),
                   base_path=base_dir)


def test_describe_says_what_trains():
    assert "full-parameter" in LoRAConfig().describe()
    line = LoRAConfig(enabled=True, rank=8, targets=("attention",), train_router=True).describe()
    assert "rank 8" in line and "attention" in line and "router trained" in line


def test_elastic_rows_get_reproducible_submodels_and_reduced_rows_route_live():
    b, s, layers, k = 64, 5, CONFIG.num_layers, CONFIG.top_k
    routes = torch.randint(0, 8, (b, s, layers, k), dtype=torch.uint8).to(torch.int64)
    batch = TrainingBatch(torch.zeros(b, s, dtype=torch.long), torch.ones(b, s, dtype=torch.long),
                          torch.ones(b, s), torch.zeros(b, s), torch.zeros(b), routes, b * s)
    elastic = ElasticRL(ElasticConfig(enabled=True), CONFIG, seed=7)
    first, again = elastic.assign(batch, step=3), elastic.assign(batch, step=3)
    assert first.submodels_B == again.submodels_B
    assert first.submodels_B != elastic.assign(batch, step=4).submodels_B
    full = torch.tensor([sm.is_full(CONFIG) for sm in first.submodels_B])
    assert 0 < int(full.sum()) < b  # both kinds at the default probabilities in 64 rows
    assert torch.equal(first.rollout_routes_BSLK[full], routes[full])
    assert bool((first.rollout_routes_BSLK[~full] == -1).all())
    half = first.rows(slice(0, 32))
    assert half.submodels_B == first.submodels_B[:32]
    short = first.rows(slice(0, 8))
    short.attention_mask_BS[:, 3:] = 0  # trailing padding: trimming must keep each row's sub-model
    assert short.trimmed().input_ids_BS.shape[1] == 3 and short.trimmed().submodels_B == first.submodels_B[:8]
