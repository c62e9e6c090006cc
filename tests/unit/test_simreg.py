import pytest
import torch

from pretrain.simreg import SimRegConfig, label_cosine_stats, simreg_loss


def _batch(seed=0, b=2, s=24, d=8, vocab=5):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, s, d, generator=g)
    labels = torch.randint(0, vocab, (b, s), generator=g)
    labels[:, -1] = -100
    docs = torch.zeros(b, s, dtype=torch.long)
    docs[:, s // 2:] = 1
    return hidden, labels, docs


@pytest.mark.parametrize("form", ["supcon", "cosine"])
def test_chunk_equal_to_sequence_matches_full(form):
    hidden, labels, docs = _batch()
    full = simreg_loss(hidden, labels, docs, SimRegConfig(weight=1.0, form=form, chunk_size=0))
    chunk = simreg_loss(hidden, labels, docs, SimRegConfig(weight=1.0, form=form, chunk_size=24))
    assert torch.equal(full, chunk)
    smaller = simreg_loss(hidden, labels, docs, SimRegConfig(weight=1.0, form=form, chunk_size=7))
    assert not torch.equal(full, smaller)


def test_supcon_by_hand():
    # two tokens of label 0 that are identical and one of label 1 orthogonal to them, T = 1
    hidden = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[0, 0, 1]])
    loss = simreg_loss(hidden, labels, None, SimRegConfig(weight=1.0, temperature=1.0))
    expected = -torch.log(torch.exp(torch.tensor(1.0)) / (torch.exp(torch.tensor(1.0)) + 1.0))
    torch.testing.assert_close(loss, expected)


def test_gradients_are_finite_with_tokens_without_partners():
    hidden, labels, docs = _batch(vocab=50)
    hidden.requires_grad_(True)
    simreg_loss(hidden, labels, docs, SimRegConfig(weight=1.0)).backward()
    assert torch.isfinite(hidden.grad).all()


def test_optimising_simreg_raises_intra_label_cosine():
    hidden, labels, docs = _batch(seed=3, vocab=4)
    before_same, before_diff = label_cosine_stats(hidden, labels, docs)
    h = hidden.clone().requires_grad_(True)
    opt = torch.optim.SGD([h], lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        simreg_loss(h, labels, docs, SimRegConfig(weight=1.0)).backward()
        opt.step()
    after_same, after_diff = label_cosine_stats(h, labels, docs)
    assert after_same > before_same + 0.2 and after_diff < before_diff
