"""moe_experts: both GPU backends (Triton / torch._grouped_mm grouped GEMMs, fused Triton SwiGLU kernels) ==
loop-over-experts reference, forward and every gradient; the dispatch rule; CPU path == reference.

On CPU the GPU backends run with Triton in the interpreter and torch._grouped_mm's CPU loop (fp32 only: the
interpreter's bf16 arithmetic is wrong); bf16 variants run on CUDA (`-m gpu`).
Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim, N = T * K token copies.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels import force_triton
from kernels.moe_experts import (
    moe_backend,
    moe_experts,
    moe_experts_grouped_cpu,
    moe_experts_reference,
    permute_tokens_reference,
    permute_tokens_triton,
    select_backend,
)
from kernels.moe_experts.gemm import GEMMS, route

NUM_GPUS = 1  # for the `gpu` variants
SHAPES = [  # (T, D, E, K, F); D and F multiples of 8 so that torch._grouped_mm accepts bf16 rows on a GPU
    (1, 32, 4, 2, 16),  # single token
    (37, 48, 5, 2, 40),  # irregular on every axis: masking in the grouped matmul tiles
    (150, 80, 2, 2, 72),  # >128 copies per expert (2 row tiles), 2 steps of 64 over D, 2 tiles of 64 over F
]
BACKENDS = sorted(GEMMS)
TOLERANCE = {
    # Same fp32 math; only the order of the D/F/token sums differs between tiles and the reference's matmuls.
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    # gate/up/hidden/out are rounded to bf16 between the grouped matmuls (8-bit mantissa), the reference keeps fp32.
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}
GRAD_NAMES = ("x", "topk_weights", "w_gate", "w_up", "w_down")


def _routing(num_tokens, num_experts, top_k, gen, allowed_experts=None):
    allowed = torch.arange(num_experts) if allowed_experts is None else torch.tensor(allowed_experts)
    scores_TE = torch.rand(num_tokens, allowed.numel(), generator=gen)
    topk_ids_TK = allowed[scores_TE.argsort(dim=1)[:, :top_k]]
    topk_weights_TK = torch.softmax(torch.randn(num_tokens, top_k, generator=gen), dim=1)
    return topk_ids_TK, topk_weights_TK


def _inputs(shape, device, dtype, seed=0, allowed_experts=None):
    num_tokens, dim, num_experts, top_k, ffn_dim = shape
    gen = torch.Generator().manual_seed(seed)
    topk_ids_TK, topk_weights_TK = _routing(num_tokens, num_experts, top_k, gen, allowed_experts)
    x_TD = torch.randn(num_tokens, dim, generator=gen)
    w_gate_EFD = torch.randn(num_experts, ffn_dim, dim, generator=gen) / math.sqrt(dim)
    w_up_EFD = torch.randn(num_experts, ffn_dim, dim, generator=gen) / math.sqrt(dim)
    w_down_EDF = torch.randn(num_experts, dim, ffn_dim, generator=gen) / math.sqrt(ffn_dim)
    grad_y_TD = torch.randn(num_tokens, dim, generator=gen)
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (x_TD, topk_weights_TK)]
    weights = [t.to(device=device, dtype=dtype).requires_grad_() for t in (w_gate_EFD, w_up_EFD, w_down_EDF)]
    return leaves[0], topk_ids_TK.to(device), leaves[1], *weights, grad_y_TD.to(device=device, dtype=dtype)


def _forward_backward(fn, x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF, grad_y_TD):
    y_TD = fn(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)
    grads = torch.autograd.grad(y_TD, (x_TD, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF), grad_y_TD)
    return y_TD, *grads


def _assert_matches_reference(inputs, dtype, backend="triton", recompute=False):
    with force_triton(), moe_backend(backend):
        got = _forward_backward(lambda *args: moe_experts(*args, recompute=recompute), *inputs)
    leaves32 = [t.detach().float().requires_grad_() if t.is_floating_point() else t for t in inputs[:-1]]
    want = _forward_backward(moe_experts_reference, *leaves32, inputs[-1].float())
    for name, got_t, want_t in zip(("y", *GRAD_NAMES), got, want, strict=True):
        assert got_t.dtype == inputs[0].dtype or name == "topk_weights"
        torch.testing.assert_close(got_t.float(), want_t, **TOLERANCE[dtype], msg=lambda m, n=name: f"{n}: {m}")
    return got


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gpu_path_matches_reference_forward_and_backward(shape, backend, device_dtype):
    device, dtype = device_dtype
    _assert_matches_reference(_inputs(shape, device, dtype), dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recompute_gives_the_saved_path_result(backend, device_dtype):
    device, dtype = device_dtype
    inputs = _inputs((37, 48, 5, 2, 40), device, dtype)
    saved = _assert_matches_reference(inputs, dtype, backend)
    recomputed = _assert_matches_reference(inputs, dtype, backend, recompute=True)
    for saved_t, recomputed_t in zip(saved, recomputed, strict=True):
        torch.testing.assert_close(recomputed_t, saved_t, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_expert_without_tokens_gets_zero_weight_grads(backend, device_dtype):
    device, dtype = device_dtype
    inputs = _inputs((23, 32, 6, 2, 24), device, dtype, allowed_experts=[0, 1, 3, 4, 5])  # expert 2 unused
    got = _assert_matches_reference(inputs, dtype, backend)
    for grad_EXX in got[3:]:
        assert torch.count_nonzero(grad_EXX[2]) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_tokens_on_one_expert(backend, device_dtype):
    # 41 tokens summed into one expert's weight gradient: bf16 gate/up/dL-dhidden intermediates miss the
    # tolerance here (see test_bf16_intermediates_lose_the_one_expert_weight_gradient); fp32 ones do not.
    device, dtype = device_dtype
    _assert_matches_reference(_inputs((41, 32, 4, 1, 24), device, dtype, allowed_experts=[3]), dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend, device_dtype):
    device, dtype = device_dtype
    x_TD, *rest = _inputs((19, 32, 4, 2, 16), device, dtype)
    x_TD = x_TD.detach().t().contiguous().t().requires_grad_()  # same values, column-major strides
    assert not x_TD.is_contiguous()
    _assert_matches_reference((x_TD, *rest), dtype, backend)


def _swiglu_weight_grads(inputs, intermediate_dtype):
    """d/dW_gate and d/dW_up of one expert that gets every token (K = 1, gate weight 1), with gate, up and
    dL/dhidden stored in `intermediate_dtype` between the matmuls (fp32 accumulation inside each matmul, as
    on the GPU) and grad_gate/grad_up rounded to bf16 as the weight-gradient matmul's operands."""
    x_TD, topk_ids_TK, _, w_gate_EFD, w_up_EFD, w_down_EDF, grad_y_TD = (t.detach().float() for t in inputs)
    expert = int(topk_ids_TK[0, 0])

    def stored(t):
        return t.to(intermediate_dtype).float()

    gate_TF, up_TF = stored(x_TD @ w_gate_EFD[expert].T), stored(x_TD @ w_up_EFD[expert].T)
    grad_hidden_TF = stored(grad_y_TD @ w_down_EDF[expert])
    sig_TF = torch.sigmoid(gate_TF)
    grad_up_TF = (grad_hidden_TF * gate_TF * sig_TF).bfloat16().float()
    grad_gate_TF = (grad_hidden_TF * up_TF * sig_TF * (1 + gate_TF * (1 - sig_TF))).bfloat16().float()
    return grad_gate_TF.T @ x_TD, grad_up_TF.T @ x_TD


def test_bf16_intermediates_lose_the_one_expert_weight_gradient():
    """Reproduces on CPU the bf16 GPU failure of test_all_tokens_on_one_expert (w_up gradient off by 0.052 where
    0.03 + 3 % is allowed, with gate/up/dL-dhidden rounded to bf16) and shows that fp32 intermediates, which
    the fused kernels keep, stay within the tolerance."""
    inputs = _inputs((41, 32, 4, 1, 24), "cpu", torch.bfloat16, allowed_experts=[3])
    leaves32 = [t.detach().float().requires_grad_() if t.is_floating_point() else t for t in inputs[:-1]]
    want = _forward_backward(moe_experts_reference, *leaves32, inputs[-1].float())
    want_gate_FD, want_up_FD = want[3][3], want[4][3]

    def excess(intermediate_dtype):  # > 0: outside atol + rtol * |want| of TOLERANCE[bfloat16]
        got_gate_FD, got_up_FD = _swiglu_weight_grads(inputs, intermediate_dtype)
        tol = TOLERANCE[torch.bfloat16]
        return max(float(((got - ref).abs() - tol["atol"] - tol["rtol"] * ref.abs()).max())
                   for got, ref in ((got_gate_FD, want_gate_FD), (got_up_FD, want_up_FD)))  # fmt: skip

    assert excess(torch.bfloat16) > 0.01  # measured 0.018 over the allowed error
    assert excess(torch.float32) < -0.005  # measured 0.009 inside


def test_cpu_path_is_the_grouped_matmul_and_matches_reference():
    inputs = _inputs((37, 48, 5, 2, 40), "cpu", torch.float32)
    got = _forward_backward(moe_experts, *inputs)
    grouped = _forward_backward(moe_experts_grouped_cpu, *inputs)
    want = _forward_backward(moe_experts_reference, *inputs)
    for name, got_t, grouped_t, want_t in zip(("y", *GRAD_NAMES), got, grouped, want, strict=True):
        assert torch.equal(got_t, grouped_t), name
        torch.testing.assert_close(got_t, want_t, atol=1e-6, rtol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_permutation_is_stable_by_hand():
    copy_ids_N, tokens_per_expert_E = permute_tokens_reference(torch.tensor([[2, 0], [0, 1], [2, 1]]), num_experts=4)
    # flat copies t*K+k -> expert: [2, 0, 0, 1, 2, 1]; token order kept inside each expert; expert 3 empty.
    assert torch.equal(copy_ids_N, torch.tensor([1, 2, 3, 5, 0, 4]))
    assert torch.equal(tokens_per_expert_E, torch.tensor([2, 2, 2, 0]))


def test_permute_kernel_gathers_rows_exactly(device_dtype):
    device, dtype = device_dtype
    x_TD, topk_ids_TK, *_ = _inputs((37, 48, 5, 3, 40), device, dtype)
    x_ND, copy_ids_N, tokens_per_expert_E = permute_tokens_triton(x_TD.detach(), topk_ids_TK, num_experts=5)
    want_copy_ids_N, want_tokens_per_expert_E = permute_tokens_reference(topk_ids_TK, num_experts=5)
    assert torch.equal(copy_ids_N, want_copy_ids_N) and torch.equal(tokens_per_expert_E, want_tokens_per_expert_E)
    assert torch.equal(x_ND, x_TD.detach()[copy_ids_N // 3])  # a copy, not arithmetic: bit-exact


def test_empty_batch_returns_empty_output():
    x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF, _ = _inputs(
        (0, 16, 3, 2, 8), "cpu", torch.float32
    )
    with force_triton():
        y_TD = moe_experts(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)
    assert y_TD.shape == (0, 16)


def test_reference_small_case_by_hand():
    # D = F = 1, one token, two experts with weights 0.25 / 0.75.
    x_TD = torch.tensor([[2.0]])
    w_gate_EFD = torch.tensor([[[1.0]], [[-1.0]]])
    w_up_EFD = torch.tensor([[[3.0]], [[1.0]]])
    w_down_EDF = torch.tensor([[[0.5]], [[2.0]]])
    y_TD = moe_experts_reference(
        x_TD, torch.tensor([[0, 1]]), torch.tensor([[0.25, 0.75]]), w_gate_EFD, w_up_EFD, w_down_EDF
    )
    expert0 = F.silu(torch.tensor(2.0)) * 6.0 * 0.5
    expert1 = F.silu(torch.tensor(-2.0)) * 2.0 * 2.0
    torch.testing.assert_close(y_TD, (0.25 * expert0 + 0.75 * expert1).reshape(1, 1))


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("save", [True, False])
def test_opcheck(save):
    inputs = [
        t.detach().requires_grad_(t.is_floating_point()) for t in _inputs((9, 32, 3, 2, 16), "cpu", torch.float32)
    ]
    torch.library.opcheck(torch.ops.kernels.moe_experts.default, (*inputs[:-1], "triton", save))


@pytest.mark.usefixtures("triton_interpreter")
def test_torch_compile_traces_the_custom_op_without_graph_breaks():
    inputs = _inputs((9, 32, 3, 2, 16), "cpu", torch.float32)
    with force_triton():
        eager = _forward_backward(moe_experts, *inputs)
        compiled = _forward_backward(torch.compile(moe_experts, backend="aot_eager", fullgraph=True), *inputs)
    for compiled_t, eager_t in zip(compiled, eager, strict=True):
        torch.testing.assert_close(compiled_t, eager_t, **TOLERANCE[torch.float32])


def test_bad_input_names_the_problem():
    inputs = _inputs((4, 16, 3, 2, 8), "cpu", torch.float32)
    x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF, _ = inputs
    with pytest.raises(ValueError, match="w_down_EDF"):
        moe_experts(x_TD, topk_ids_TK, topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF.transpose(1, 2))
    with pytest.raises(ValueError, match="topk_ids_TK must be int"):
        moe_experts(x_TD, topk_ids_TK.float(), topk_weights_TK, w_gate_EFD, w_up_EFD, w_down_EDF)


def test_dispatch_rule_and_forcing():
    x_TD, w_gate_EFD, w_down_EDF = torch.zeros(4, 16), torch.zeros(2, 8, 16), torch.zeros(2, 16, 8)
    assert select_backend(x_TD, w_gate_EFD, w_gate_EFD, w_down_EDF) == "triton"  # CPU: the stock op is a loop here
    with moe_backend("grouped_mm"):
        assert select_backend(x_TD, w_gate_EFD, w_gate_EFD, w_down_EDF) == "grouped_mm"
    assert select_backend(x_TD, w_gate_EFD, w_gate_EFD, w_down_EDF) == "triton"
    with pytest.raises(ValueError, match="unknown backend 'cublas'"), moe_backend("cublas"):
        pass


@pytest.mark.gpu
def test_dispatch_rule_on_the_gpu():
    major = torch.cuda.get_device_capability()[0]

    def pick(dtype, ffn_dim):
        w_gate_EFD = torch.zeros(2, ffn_dim, 64, device="cuda", dtype=dtype)
        w_down_EDF = torch.zeros(2, 64, ffn_dim, device="cuda", dtype=dtype)
        return select_backend(torch.zeros(4, 64, device="cuda", dtype=dtype), w_gate_EFD, w_gate_EFD, w_down_EDF)

    assert pick(torch.bfloat16, 128) == ("grouped_mm" if major in (9, 10) else "triton")
    assert pick(torch.float32, 128) == "triton"  # the stock op loops over groups with a host sync for fp32
    assert pick(torch.bfloat16, 20) == "triton"  # 40-byte rows: not 16-byte aligned


@pytest.mark.usefixtures("triton_interpreter")
def test_grouped_gemm_providers_agree_and_leave_idle_experts_zero():
    gen = torch.Generator().manual_seed(0)
    topk_ids_TK = torch.tensor([[0], [2], [0], [3], [2], [0], [3]])  # expert 1 gets no row
    rt = route(topk_ids_TK, num_experts=4)
    a_NM, b_NP = torch.randn(7, 24, generator=gen), torch.randn(7, 40, generator=gen)
    b_EMP = torch.randn(4, 24, 40, generator=gen)
    ranges = list(zip(rt.offsets_E1[:-1].tolist(), rt.offsets_E1[1:].tolist(), strict=True))
    want_mm = torch.cat([a_NM[start:end] @ b_EMP[expert] for expert, (start, end) in enumerate(ranges)])
    want_wgrad = torch.stack([a_NM[start:end].T @ b_NP[start:end] for start, end in ranges])
    for name, gemm in GEMMS.items():
        torch.testing.assert_close(gemm.mm(a_NM, b_EMP, rt), want_mm, atol=1e-5, rtol=1e-5, msg=name)
        got = gemm.wgrad(a_NM, b_NP, rt, torch.float32)
        torch.testing.assert_close(got, want_wgrad, atol=1e-5, rtol=1e-5, msg=name)
        assert torch.count_nonzero(got[1]) == 0, name
