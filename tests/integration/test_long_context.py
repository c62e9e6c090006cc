"""The RRAttention long-context evaluation on a real exported model: needle documents, variants, sparsity."""

import pytest

from pretrain.long_context import (
    AttentionVariant,
    default_variants,
    evaluate_variants,
    markdown_table,
    needle_samples,
)
from rl_platform.model.hf_interop import load_hf
from rl_platform.model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model_and_samples(smoke_base_model):
    tokenizer = load_tokenizer(smoke_base_model)
    return load_hf(smoke_base_model), tokenizer, needle_samples(tokenizer, 3, filler_sentences=20)


def test_needle_samples_end_with_the_key(model_and_samples):
    _, tokenizer, samples = model_and_samples
    for s in samples:
        text = tokenizer.decode(s.token_ids)
        key = tokenizer.decode(s.token_ids[s.key_start:]).strip()
        assert len(key) == 4 and key.isdigit() and f"The secret key is {key}" in text
        assert len(s.token_ids) > 150  # long enough for several 16-token blocks


def test_tau_one_is_dense_and_lower_tau_skips_blocks(model_and_samples):
    model, _, samples = model_and_samples
    variants = default_variants(block_size=16, stride=4, taus=(0.5, 1.0))
    rows = {r["variant"]: r for r in evaluate_variants(model, samples, variants)}
    dense, half, full = rows["dense"], rows["rr tau=0.5"], rows["rr tau=1.0"]
    assert dense["block_sparsity"] == 0.0 and dense["top1_agree"] == 1.0
    assert full["block_sparsity"] == 0.0
    assert full["doc_nll"] == pytest.approx(dense["doc_nll"], abs=1e-5)
    assert full["top1_agree"] > 0.999
    assert 0.2 < half["block_sparsity"] < 1.0
    assert half["doc_nll"] != dense["doc_nll"]
    assert model.config.attention_backend == "dense"  # the evaluation restores the model's own backend
    table = markdown_table(list(rows.values()), len(samples), 200.0)
    assert "| dense | - | 0.000 |" in table and "| rr tau=0.5 | 16 / 4 |" in table


def test_the_first_variant_must_be_dense(model_and_samples):
    model, _, samples = model_and_samples
    with pytest.raises(ValueError, match="first variant must be dense"):
        evaluate_variants(model, samples, [AttentionVariant(name="rr", backend="rrattention", tau=0.9)])
