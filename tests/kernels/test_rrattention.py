"""RRAttention: estimate and block-sparse attention kernels (forward and backward) == reference; the FlexAttention
block mask; the dense fallback; selection rules; cost scaling.

Shape legend: B batch, H query heads, G kv heads, L seq len, d head dim, nb blocks, S stride.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import force_triton
from kernels.rrattention import (
    attention_backend,
    block_sparse_attention_flex,
    block_sparse_attention_reference,
    block_sparse_attention_triton,
    flex_block_mask,
    rr_attention,
    rr_attention_reference,
    rr_estimate_flops,
    rr_estimate_reference,
    rr_estimate_triton,
    select_attention_backend,
    select_blocks,
)

NUM_GPUS = 1  # for the `gpu` variants
SHAPES = [  # (B, H, G, L, d, block_size, stride)
    (1, 4, 2, 83, 24, 16, 4),  # L not a multiple of the block, GQA ratio 2, d not a power of two
    (2, 2, 2, 100, 16, 32, 8),  # batch 2, MHA, last block 4 of 32 tokens
    (1, 8, 2, 130, 32, 64, 8),  # GQA ratio 4, 8 heads cover every in-stride offset
]
TOLERANCE = {
    # Same fp32 math; only the order of the d/key sums differs (online softmax over tiles vs one softmax).
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    # bf16 q/k/v and bf16 P in the P @ V dot (8-bit mantissa); tf32 estimate dot (10-bit) on ksum.
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def _qkv(shape, device="cpu", dtype=torch.float32, seed=0):
    batch, heads, kv_heads, seq_len, head_dim = shape[:5]
    gen = torch.Generator().manual_seed(seed)
    q_BHLd = torch.randn(batch, heads, seq_len, head_dim, generator=gen)
    k_BGLd = torch.randn(batch, kv_heads, seq_len, head_dim, generator=gen)
    v_BGLd = torch.randn(batch, kv_heads, seq_len, head_dim, generator=gen)
    return tuple(t.to(device=device, dtype=dtype) for t in (q_BHLd, k_BGLd, v_BGLd))


def _dense_causal_sdpa(q_BHLd, k_BGLd, v_BGLd):
    group = q_BHLd.shape[1] // k_BGLd.shape[1]
    k_BHLd, v_BHLd = (t.float().repeat_interleave(group, dim=1) for t in (k_BGLd, v_BGLd))
    return F.scaled_dot_product_attention(q_BHLd.float(), k_BHLd, v_BHLd, is_causal=True)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_estimate_kernel_matches_reference(shape, device_dtype):
    device, dtype = device_dtype
    q_BHLd, k_BGLd, _ = _qkv(shape, device, dtype)
    block_size, stride = shape[5:]
    got_BHnn = rr_estimate_triton(q_BHLd, k_BGLd, block_size, stride)
    want_BHnn = rr_estimate_reference(q_BHLd, k_BGLd, block_size, stride)
    torch.testing.assert_close(got_BHnn, want_BHnn, **TOLERANCE[dtype])
    if dtype == torch.float32:  # at fp32 error the top-tau decisions are the same (no near-ties in these seeds)
        assert torch.equal(select_blocks(got_BHnn, 0.9), select_blocks(want_BHnn, 0.9))


def _random_mask(shape, block_size, device, keep=0.5, seed=1):
    """A causal block mask with sink and diagonal and a random `keep` share of the other blocks."""
    nb = -(-shape[3] // block_size)
    gen = torch.Generator().manual_seed(seed)
    random_BHnn = torch.rand(shape[0], shape[1], nb, nb, generator=gen) < keep
    block_mask_BHnn = select_blocks(random_BHnn.float().to(device), tau=0.0) | random_BHnn.to(device)  # + sink, diag
    return block_mask_BHnn & torch.ones(nb, nb, dtype=torch.bool, device=device).tril()


def _attention_grads(fn, q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, block_size, seed=3):
    leaves = [t.detach().requires_grad_() for t in (q_BHLd, k_BGLd, v_BGLd)]
    out_BHLd = fn(*leaves, block_mask_BHnn, block_size)
    grad_out_BHLd = torch.randn(out_BHLd.shape, generator=torch.Generator().manual_seed(seed)).to(out_BHLd)
    return out_BHLd, *torch.autograd.grad(out_BHLd, leaves, grad_out_BHLd)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_block_sparse_attention_kernel_matches_reference(shape, device_dtype):
    device, dtype = device_dtype
    q_BHLd, k_BGLd, v_BGLd = _qkv(shape, device, dtype)
    block_mask_BHnn = _random_mask(shape, shape[5], device)
    got_BHLd = block_sparse_attention_triton(q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, shape[5])
    want_BHLd = block_sparse_attention_reference(q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, shape[5])
    torch.testing.assert_close(got_BHLd.float(), want_BHLd.float(), **TOLERANCE[dtype])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_block_sparse_backward_kernels_match_reference_gradients(shape, device_dtype):
    # dq over each query block's selected key blocks; dk/dv over the query blocks (of every head of the GQA
    # group) that selected each key block: no L x L tensor, same gradients as autograd through the reference.
    device, dtype = device_dtype
    q_BHLd, k_BGLd, v_BGLd = _qkv(shape, device, dtype)
    block_mask_BHnn = _random_mask(shape, shape[5], device)
    got = _attention_grads(block_sparse_attention_triton, q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, shape[5])
    q32, k32, v32 = (t.float() for t in (q_BHLd, k_BGLd, v_BGLd))
    want = _attention_grads(block_sparse_attention_reference, q32, k32, v32, block_mask_BHnn, shape[5])
    for name, got_t, want_t in zip(("out", "q", "k", "v"), got, want, strict=True):
        torch.testing.assert_close(got_t.float(), want_t, **TOLERANCE[dtype], msg=lambda m, n=name: f"{n}: {m}")


def test_flex_block_mask_holds_the_rr_mask_with_only_the_diagonal_partial():
    shape = (2, 3, 1, 700, 16)
    block_mask_BHnn = _random_mask(shape, 128, "cpu", keep=0.4)
    flex_mask = flex_block_mask(block_mask_BHnn, 128, seq_len=700)
    assert torch.equal(flex_mask.to_dense().bool(), block_mask_BHnn)
    nb = block_mask_BHnn.shape[-1]
    assert torch.equal(flex_mask.kv_num_blocks, torch.ones(2, 3, nb, dtype=torch.int32))  # partial: diagonal
    assert torch.equal(flex_mask.kv_indices[..., 0], torch.arange(nb, dtype=torch.int32).expand(2, 3, nb))
    assert torch.equal(flex_mask.full_kv_num_blocks, block_mask_BHnn.sum(-1, dtype=torch.int32) - 1)
    assert flex_mask.seq_lengths == (700, 700)


def test_backend_rule_on_cpu_and_forcing():
    q_BHLd = torch.zeros(1, 2, 256, 16)
    assert select_attention_backend(q_BHLd, 128) == "triton"  # FlexAttention's compiled kernels need CUDA here
    with attention_backend("flex"):
        assert select_attention_backend(q_BHLd, 128) == "flex"
    with pytest.raises(ValueError, match="unknown backend 'dense'"), attention_backend("dense"):
        pass


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [128])
def test_flex_matches_reference_forward_and_backward_on_gpu(block_size):
    shape = (1, 4, 2, 300, 64)
    q_BHLd, k_BGLd, v_BGLd = _qkv(shape, "cuda", torch.bfloat16)
    block_mask_BHnn = _random_mask(shape, block_size, "cuda", keep=0.5)
    got = _attention_grads(block_sparse_attention_flex, q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, block_size)
    q32, k32, v32 = (t.float() for t in (q_BHLd, k_BGLd, v_BGLd))
    want = _attention_grads(block_sparse_attention_reference, q32, k32, v32, block_mask_BHnn, block_size)
    for name, got_t, want_t in zip(("out", "q", "k", "v"), got, want, strict=True):
        torch.testing.assert_close(got_t.float(), want_t, **TOLERANCE[torch.bfloat16],
                                   msg=lambda m, n=name: f"{n}: {m}")  # fmt: skip


@pytest.mark.usefixtures("triton_interpreter")
def test_dense_fallback_below_the_break_even_sparsity():
    q_BHLd, k_BGLd, v_BGLd = _qkv((1, 4, 2, 256, 16))  # random q/k: flat attention; tau 0.6 skips a little
    with force_triton():
        sparse_out, sparse_mask, sparsity = rr_attention(q_BHLd, k_BGLd, v_BGLd, 32, 8, 0.6, dense_below=0.0)
        dense_out, dense_mask, dense_sparsity = rr_attention(q_BHLd, k_BGLd, v_BGLd, 32, 8, 0.6,
                                                             dense_below=float(sparsity) + 0.01)  # fmt: skip
    assert 0.0 < sparsity.item() < 0.5  # measured 0.146: something was skipped, so the two paths differ
    torch.testing.assert_close(dense_out, _dense_causal_sdpa(q_BHLd, k_BGLd, v_BGLd), **TOLERANCE[torch.float32])
    assert dense_sparsity.item() == 0.0 and torch.equal(dense_mask, torch.ones_like(dense_mask).tril())
    want = rr_attention_reference(q_BHLd, k_BGLd, v_BGLd, 32, 8, 0.6)
    assert torch.equal(sparse_mask, want[1])
    torch.testing.assert_close(sparse_out, want[0], **TOLERANCE[torch.float32])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tau_one_selects_every_causal_block_and_matches_dense_attention(shape, device_dtype):
    device, dtype = device_dtype
    q_BHLd, k_BGLd, v_BGLd = _qkv(shape, device, dtype)
    with force_triton():
        out_BHLd, block_mask_BHnn, sparsity = rr_attention(q_BHLd, k_BGLd, v_BGLd, *shape[5:], tau=1.0,
                                                           dense_below=0.0)  # fmt: skip
    nb = block_mask_BHnn.shape[-1]
    assert torch.equal(block_mask_BHnn, torch.ones_like(block_mask_BHnn).tril().expand(shape[0], shape[1], nb, nb))
    assert sparsity.item() == 0.0
    torch.testing.assert_close(out_BHLd.float(), _dense_causal_sdpa(q_BHLd, k_BGLd, v_BGLd), **TOLERANCE[dtype])


def test_reference_tau_one_matches_dense_attention_at_official_block_size():
    shape = (1, 8, 4, 300, 16, 128, 8)
    q_BHLd, k_BGLd, v_BGLd = _qkv(shape)
    out_BHLd, block_mask_BHnn, sparsity = rr_attention(q_BHLd, k_BGLd, v_BGLd, 128, 8, tau=1.0)  # CPU path
    assert block_mask_BHnn.shape == (1, 8, 3, 3) and sparsity.item() == 0.0
    torch.testing.assert_close(out_BHLd, _dense_causal_sdpa(q_BHLd, k_BGLd, v_BGLd), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("tau", [0.0, 0.5, 0.9, 0.95])
def test_mask_always_has_sink_and_diagonal_and_nothing_above(tau):
    q_BHLd, k_BGLd, _ = _qkv((2, 4, 2, 16 * 12 + 5, 16))
    block_mask_BHnn = select_blocks(rr_estimate_reference(q_BHLd, k_BGLd, 16, 4), tau)
    nb = block_mask_BHnn.shape[-1]
    assert block_mask_BHnn[..., 0].all() and block_mask_BHnn.diagonal(dim1=-2, dim2=-1).all()
    assert not (block_mask_BHnn & ~torch.ones(nb, nb, dtype=torch.bool).tril()).any()
    if tau == 0.0:  # nothing beyond the mandatory blocks
        mandatory_nn = torch.eye(nb, dtype=torch.bool)
        mandatory_nn[:, 0] = True
        assert torch.equal(block_mask_BHnn, mandatory_nn.expand_as(block_mask_BHnn))


def test_selection_by_hand():
    # One row (query block 4): descending 0.6 (kb1), 0.15 (kb3), 0.1 (kb2), 0.1 (kb4), 0.05 (kb0); total 1.0.
    scores_BHnn = torch.zeros(1, 1, 5, 5)
    scores_BHnn[0, 0, 4] = torch.tensor([0.05, 0.6, 0.1, 0.15, 0.1])
    row = select_blocks(scores_BHnn, tau=0.5)[0, 0, 4]
    assert row.tolist() == [True, True, False, False, True]  # kb1 (before 0 < 0.5), stop at kb3 (0.6); sink, diag
    row = select_blocks(scores_BHnn, tau=0.7)[0, 0, 4]
    assert row.tolist() == [True, True, False, True, True]  # kb3 added (before 0.6 < 0.7), kb2 not (0.75)


def test_round_robin_sampling_uses_token_i_times_s_plus_h_mod_s():
    shape = (1, 4, 2, 64, 16, 16, 4)
    q_BHLd, k_BGLd, _ = _qkv(shape)
    base_BHnn = rr_estimate_reference(q_BHLd, k_BGLd, 16, 4)
    # Token 21 = 5 * 4 + 1 is the sample of stride 5 for head 1 only (1 mod 4 = 1); heads 0, 2, 3 must not move.
    q_BHLd[:, :, 21] += 3.0
    moved_BHnn = rr_estimate_reference(q_BHLd, k_BGLd, 16, 4)
    changed_H = (moved_BHnn != base_BHnn).flatten(2).any(dim=2)[0]
    assert changed_H.tolist() == [False, True, False, False]


def test_local_attention_is_pruned_with_small_error():
    # RoPE-like positional features: q_i . k_j is largest for |i - j| small, so the mass sits near the diagonal.
    positions_L1 = torch.arange(512, dtype=torch.float32)[:, None]
    freqs_1F = 2 * torch.pi / torch.linspace(128.0, 512.0, 16)[None, :]
    x_BHLd = 2.0 * torch.cat([torch.cos(positions_L1 * freqs_1F), torch.sin(positions_L1 * freqs_1F)], dim=1)
    x_BHLd = x_BHLd.expand(1, 2, 512, 32).contiguous()
    v_BHLd = torch.randn(1, 2, 512, 32, generator=torch.Generator().manual_seed(0))
    out_BHLd, _, sparsity = rr_attention(x_BHLd, x_BHLd, v_BHLd, 32, 8, tau=0.9)
    dense_BHLd = _dense_causal_sdpa(x_BHLd, x_BHLd, v_BHLd)
    assert sparsity.item() > 0.5  # measured 0.67
    assert (out_BHLd - dense_BHLd).norm() / dense_BHLd.norm() < 0.02  # measured 0.0046


def test_estimate_cost_grows_as_l_squared_over_s_squared():
    def scores(seq_len, stride):
        return rr_estimate_flops(1, 32, 8, seq_len, 128, 128, stride)["scores"]

    def total(seq_len, stride):
        return rr_estimate_flops(1, 32, 8, seq_len, 128, 128, stride)["total"]

    assert scores(65536, 8) / scores(32768, 8) == pytest.approx(4.0, rel=1e-3)
    assert scores(65536, 8) / scores(65536, 16) == pytest.approx(4.0, rel=1e-3)
    assert total(131072, 8) / total(65536, 8) == pytest.approx(4.0, rel=1e-2)  # linear terms vanish at long L
    dense_qk = 32 * 131072 * 131073 // 2 * 128
    assert scores(131072, 8) / dense_qk == pytest.approx(1 / 64, rel=1e-3)


def test_cpu_path_is_bit_exact_with_reference():
    shape = SHAPES[0]
    q_BHLd, k_BGLd, v_BGLd = _qkv(shape)
    for got_t, want_t in zip(rr_attention(q_BHLd, k_BGLd, v_BGLd, 16, 4, 0.9),
                             rr_attention_reference(q_BHLd, k_BGLd, v_BGLd, 16, 4, 0.9), strict=True):  # fmt: skip
        assert torch.equal(got_t, want_t)


@pytest.mark.usefixtures("triton_interpreter")
def test_attention_kernel_at_official_block_size_splits_rows_and_keys():
    # block 128 runs as 2 x 2 sub-tiles of 64 (BLOCK_M, BLOCK_N < BLOCK): the path the shapes above do not reach.
    q_BHLd, k_BGLd, v_BGLd = _qkv((1, 2, 1, 200, 16))
    block_mask_BHnn = torch.ones(1, 2, 2, 2, dtype=torch.bool).tril()  # every causal block: dense attention
    got_BHLd = block_sparse_attention_triton(q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, 128)
    torch.testing.assert_close(got_BHLd, _dense_causal_sdpa(q_BHLd, k_BGLd, v_BGLd), **TOLERANCE[torch.float32])
    scores_BHnn = rr_estimate_triton(q_BHLd, k_BGLd, 128, 8)
    torch.testing.assert_close(scores_BHnn, rr_estimate_reference(q_BHLd, k_BGLd, 128, 8), **TOLERANCE[torch.float32])


@pytest.mark.usefixtures("triton_interpreter")
def test_triton_op_matches_reference_end_to_end():
    q_BHLd, k_BGLd, v_BGLd = _qkv(SHAPES[0])
    with force_triton():
        out_BHLd, block_mask_BHnn, sparsity = rr_attention(q_BHLd, k_BGLd, v_BGLd, 16, 4, 0.9, dense_below=0.0)
    want = rr_attention_reference(q_BHLd, k_BGLd, v_BGLd, 16, 4, 0.9)
    assert torch.equal(block_mask_BHnn, want[1]) and torch.equal(sparsity, want[2])
    torch.testing.assert_close(out_BHLd, want[0], **TOLERANCE[torch.float32])


@pytest.mark.usefixtures("triton_interpreter")
def test_backward_matches_reference_gradients():
    q_BHLd, k_BGLd, v_BGLd = (t.requires_grad_() for t in _qkv(SHAPES[0]))
    grad_out_BHLd = torch.randn(q_BHLd.shape, generator=torch.Generator().manual_seed(3))
    with force_triton():
        out_BHLd, _, _ = rr_attention(q_BHLd, k_BGLd, v_BGLd, 16, 4, 0.5, dense_below=0.0)
    got = torch.autograd.grad(out_BHLd, (q_BHLd, k_BGLd, v_BGLd), grad_out_BHLd)
    want = torch.autograd.grad(rr_attention_reference(q_BHLd, k_BGLd, v_BGLd, 16, 4, 0.5)[0],
                               (q_BHLd, k_BGLd, v_BGLd), grad_out_BHLd)  # fmt: skip
    for got_t, want_t in zip(got, want, strict=True):
        torch.testing.assert_close(got_t, want_t, **TOLERANCE[torch.float32])


@pytest.mark.usefixtures("triton_interpreter")
def test_opcheck():
    q_BHLd, k_BGLd, v_BGLd = (t.requires_grad_() for t in _qkv(SHAPES[0]))
    torch.library.opcheck(torch.ops.kernels.rr_estimate.default, (q_BHLd.detach(), k_BGLd.detach(), 16, 4))
    block_mask_BHnn = _random_mask(SHAPES[0], 16, "cpu")
    torch.library.opcheck(torch.ops.kernels.rr_block_sparse_attention.default,
                          (q_BHLd, k_BGLd, v_BGLd, block_mask_BHnn, 16))  # fmt: skip


@pytest.mark.parametrize(
    ("kv_heads", "block_size", "stride", "tau", "match"),
    [(3, 16, 4, 0.9, "multiple of kv heads"), (2, 16, 3, 0.9, "stride=3"), (2, 24, 8, 0.9, "power of two"),
     (2, 16, 4, 1.5, "tau=1.5")],
)  # fmt: skip
def test_bad_input_names_the_problem(kv_heads, block_size, stride, tau, match):
    q_BHLd = torch.zeros(1, 4, 40, 16)
    k_BGLd = torch.zeros(1, kv_heads, 40, 16)
    with pytest.raises(ValueError, match=match):
        rr_attention(q_BHLd, k_BGLd, k_BGLd, block_size, stride, tau)
