"""Our forward == transformers' Ernie4.5-MoE forward of the exported directory (float32), for the full
model and for an exported sub-model; import is the inverse of export."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rl_platform.model import MoEModelConfig, MoETransformer, SubModel
from rl_platform.model.hf_interop import export_hf, load_hf
from rl_platform.model.tokenizer import train_tokenizer

CONFIG = MoEModelConfig(vocab_size=300, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16,
                        num_experts=32, top_k=4, expert_ffn_dim=32, initializer_range=0.1)
SUB = SubModel(layers=(0, 1, 3), experts=tuple(range(16)), top_k=2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = MoETransformer(CONFIG).eval()
    for moe in model.moe_layers():
        moe.router.selection_bias_E.normal_(0, 0.01)  # exercise the selection bias through the interchange
    tok = train_tokenizer([f"Q: {a}+{b}=?\nA: {a + b}" for a in range(40) for b in range(40)], vocab_size=300)
    root = tmp_path_factory.mktemp("hf")
    return model, tok, export_hf(model, root / "full", tokenizer=tok), export_hf(model, root / "sub", tokenizer=tok,
                                                                                    submodel=SUB)


def _ids():
    return torch.randint(4, CONFIG.vocab_size, (3, 37), generator=torch.Generator().manual_seed(5))


def test_full_model_logits_match_transformers(exported):
    model, _, full_dir, _ = exported
    hf = AutoModelForCausalLM.from_pretrained(full_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (model.logits(model(_ids()).hidden_BSD) - hf(_ids()).logits).abs().max().item()
    assert diff <= 1e-4, diff


def test_exported_submodel_matches_our_elastic_forward_and_generates(exported):
    model, tok, _, sub_dir = exported
    hf = AutoModelForCausalLM.from_pretrained(sub_dir, dtype=torch.float32).eval()
    assert hf.config.num_hidden_layers == 3 and hf.config.moe_num_experts == 16 and hf.config.moe_k == 2
    with torch.no_grad():
        ours = model.logits(model(_ids(), submodels=[SUB] * 3).hidden_BSD)
        diff = (ours - hf(_ids()).logits).abs().max().item()
    assert diff <= 1e-4, diff
    prompt = tok("Q: 3+4=?\nA:", return_tensors="pt")
    generated = hf.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8


def test_import_is_the_inverse_of_export(exported):
    model, _, full_dir, _ = exported
    loaded = load_hf(full_dir)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
