"""Every supported HF MoE architecture through the model-adapter seam, against real transformers (float32):
our forward equals theirs, routes cover the MoE layers only, export keeps the architecture, and an
unsupported architecture is refused with the list of supported ones."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rl_platform.model.adapter import LayerMap, load_adapter
from rl_platform.model.architectures import supported_architectures
from rl_platform.model.hf_interop import INDEX_FILE, load_hf
from rl_platform.model.tiny_hf import TinyHFConfig, build_tiny_hf

CASES = {
    # name: (architecture, tiny config, expected MoE layers)
    "qwen3_dense0_norm": ("Qwen3MoeForCausalLM", TinyHFConfig(dense_layers=(0,), norm_topk_prob=True), (1, 2)),
    "qwen3_dense1_raw_tied": ("Qwen3MoeForCausalLM", TinyHFConfig(dense_layers=(1,), norm_topk_prob=False,
                                                                   tie_word_embeddings=True), (0, 2)),
    "ernie45_dense0": ("Ernie4_5_MoeForCausalLM", TinyHFConfig(dense_layers=(0,), tie_word_embeddings=True), (1, 2)),
    "olmoe": ("OlmoeForCausalLM", TinyHFConfig(), (0, 1, 2)),
}
LOGIT_TOL = 1e-4  # float32, same operations in the same order up to the expert loop's summation order


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    return {name: build_tiny_hf(root / name, arch, config) for name, (arch, config, _) in CASES.items()}


def _ids(vocab_size: int):
    return torch.randint(4, vocab_size, (3, 29), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_transformers_and_routes_cover_moe_layers_only(checkpoints, name):
    path = checkpoints[name]
    assert (path / INDEX_FILE).exists()  # written sharded, read through the index
    adapter = load_adapter(path)
    assert adapter.layer_map.moe_layers == CASES[name][2]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = _ids(adapter.module.config.vocab_size)
    with torch.no_grad():
        out = adapter(ids, capture_routes=True)
        diff = (adapter.module.logits(out.hidden_BSD) - hf(ids).logits).abs().max().item()
    print(f"\n{name}: max |dlogit| vs transformers {diff:.2e}")
    assert diff <= LOGIT_TOL, diff
    assert out.routes_BSLK.shape == (3, 29, len(CASES[name][2]), 2)
    assert bool((out.routes_BSLK >= 0).all())


@pytest.mark.parametrize("name", list(CASES))
def test_export_keeps_the_architecture_and_the_function(checkpoints, name, tmp_path):
    path = checkpoints[name]
    adapter = load_adapter(path)
    with torch.no_grad():
        adapter.module.norm.weight.mul_(1.5)  # an "update" the export must carry
    out = adapter.export(tmp_path / "policy")
    source, exported = (json.loads((p / "config.json").read_text()) for p in (path, out))
    assert exported["architectures"] == source["architectures"]
    for key in ("mlp_only_layers", "moe_layer_start_index", "norm_topk_prob", "tie_word_embeddings"):
        assert exported.get(key) == source.get(key), key
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = _ids(adapter.module.config.vocab_size)
    with torch.no_grad():
        diff = (adapter.module.logits(adapter(ids).hidden_BSD) - hf(ids).logits).abs().max().item()
    assert diff <= LOGIT_TOL, diff
    reloaded = load_hf(out)
    for (key, a), (_, b) in zip(adapter.module.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), key


def test_replayed_routes_reproduce_the_captured_forward(checkpoints):
    adapter = load_adapter(checkpoints["qwen3_dense0_norm"])
    ids = _ids(adapter.module.config.vocab_size)
    with torch.no_grad():
        live = adapter(ids, capture_routes=True)
        shifted = (live.routes_BSLK.long() + 1) % adapter.layer_map.num_experts
        forced = adapter(ids, forced_routes_BSLK=shifted.to(torch.int16), capture_routes=True)
        same = adapter(ids, forced_routes_BSLK=live.routes_BSLK, capture_routes=True)
    assert torch.equal(forced.routes_BSLK.long(), shifted)
    # the first MoE layer's input does not depend on forcing, so its live choice is the unforced one
    assert torch.equal(forced.live_routes_BSLK[:, :, 0], live.routes_BSLK[:, :, 0])
    assert torch.equal(same.hidden_BSD, live.hidden_BSD)
    assert not torch.allclose(forced.hidden_BSD, live.hidden_BSD)


def test_engine_routes_of_every_decoder_layer_are_cut_to_the_moe_layers():
    layer_map = LayerMap(num_layers=4, moe_layers=(1, 3), top_k=2, num_experts=8)
    engine = np.zeros((5, 4, 2), np.uint8)
    engine[:, 1], engine[:, 3] = 5, 7
    assert layer_map.engine_to_moe(engine).tolist() == [[[5, 5], [7, 7]]] * 5
    assert layer_map.engine_to_moe(engine[:, [1, 3]]).shape == (5, 2, 2)
    with pytest.raises(ValueError, match="3 decoder layers|4 decoder layers"):
        layer_map.engine_to_moe(np.zeros((5, 3, 2), np.uint8))


def test_an_unsupported_architecture_is_refused_with_the_supported_list(checkpoints, tmp_path):
    raw = json.loads((checkpoints["olmoe"] / "config.json").read_text())
    raw["architectures"] = ["MixtralForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError) as info:
        load_adapter(tmp_path)
    assert "MixtralForCausalLM" in str(info.value)
    assert all(name in str(info.value) for name in supported_architectures())


def test_an_option_the_decoder_does_not_compute_is_refused_by_name(checkpoints, tmp_path):
    import shutil

    shutil.copytree(checkpoints["olmoe"], tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    raw["clip_qkv"] = 8.0
    (tmp_path / "m" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="clip_qkv=8.0"):
        load_adapter(tmp_path / "m")


def test_per_layer_route_mismatch_is_named_by_decoder_layer():
    from rl_platform.rl_metrics import route_mismatch_metrics

    ours = torch.tensor([[[[0, 1], [2, 3]]]])  # [B=1, S=1, 2 MoE layers, K=2]
    theirs = torch.tensor([[[[1, 0], [2, 4]]]])  # same set in slot 0, a different one in slot 1
    m = route_mismatch_metrics(ours, theirs, torch.tensor([[True]]), layer_ids=(1, 3))
    assert m["moe/route_mismatch_layer1"] == 0.0 and m["moe/route_mismatch_layer3"] == 1.0
    assert "moe/route_mismatch_layer0" not in m and m["moe/route_mismatch"] == 0.5


def test_a_submodel_export_of_a_loaded_checkpoint_is_not_overridden_by_stale_source_fields(checkpoints, tmp_path):
    from rl_platform.model import SubModel
    from rl_platform.model.hf_interop import export_hf

    adapter = load_adapter(checkpoints["qwen3_dense0_norm"])  # its config.json says num_local_experts=8
    sub = SubModel(layers=(0, 2), experts=tuple(range(4)), top_k=2)
    out = export_hf(adapter.module, tmp_path / "sub", submodel=sub, base_config=adapter.base_config)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.num_experts == 4 and hf.config.num_hidden_layers == 2 and hf.config.mlp_only_layers == [0]
    ids = _ids(adapter.module.config.vocab_size)
    with torch.no_grad():
        ours = adapter.module.logits(adapter.module(ids, submodels=[sub] * 3).hidden_BSD)
        assert (ours - hf(ids).logits).abs().max().item() <= LOGIT_TOL
