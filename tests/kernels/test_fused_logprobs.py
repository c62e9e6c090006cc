"""fused_logprobs: Triton path == full-logits reference, forward and backward; CPU path bit-exact.

Shape legend: T tokens, D model dim, V vocab.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels import force_triton
from kernels.fused_logprobs import fused_logprobs, fused_logprobs_reference

NUM_GPUS = 1  # for the `gpu` variants
SHAPES = [  # (T, D, V, chunk_size)
    (1, 16, 50, 16),  # single token; V not a multiple of the chunk
    (37, 24, 301, 128),  # irregular on every axis: masking in both kernels
    (64, 32, 1000, 1024),  # one chunk larger than the vocab
]
TOLERANCE = {
    # Same fp32 math; only the order of the vocab/D sums differs (online logsumexp across chunks).
    torch.float32: dict(atol=5e-5, rtol=5e-5),
    # Forward logits are fp32 from the same bf16 inputs; grads round dlogits and the grads to bf16 (8-bit mantissa).
    torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2),
}


def _inputs(num_tokens, dim, vocab, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden_TD = torch.randn(num_tokens, dim, generator=gen)
    lm_head_VD = torch.randn(vocab, dim, generator=gen) * (3.0 / math.sqrt(dim))  # logits ~ N(0, 9): peaked rows
    targets_T = torch.randint(0, vocab, (num_tokens,), generator=gen)
    grad_logprobs_T = torch.randn(num_tokens, generator=gen)
    grad_entropy_T = torch.randn(num_tokens, generator=gen)
    to = dict(device=device)
    return (
        hidden_TD.to(dtype=dtype, **to).requires_grad_(),
        lm_head_VD.to(dtype=dtype, **to).requires_grad_(),
        targets_T.to(**to),
        grad_logprobs_T.to(**to),
        grad_entropy_T.to(**to),
    )


def _forward_backward(fn, hidden_TD, lm_head_VD, targets_T, grad_logprobs_T, grad_entropy_T, **kwargs):
    logprobs_T, entropy_T = fn(hidden_TD, lm_head_VD, targets_T, **kwargs)
    grads = torch.autograd.grad((logprobs_T, entropy_T), (hidden_TD, lm_head_VD), (grad_logprobs_T, grad_entropy_T))
    return logprobs_T, entropy_T, *grads


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_triton_matches_reference_forward_and_backward(shape, temperature, device_dtype):
    device, dtype = device_dtype
    num_tokens, dim, vocab, chunk_size = shape
    inputs = _inputs(num_tokens, dim, vocab, device, dtype)
    with force_triton():
        got = _forward_backward(fused_logprobs, *inputs, temperature=temperature, chunk_size=chunk_size)
    # The reference sees the same (already dtype-rounded) values, upcast to fp32.
    hidden32, lm_head32 = (t.detach().float().requires_grad_() for t in inputs[:2])
    want = _forward_backward(fused_logprobs_reference, hidden32, lm_head32, *inputs[2:], temperature=temperature)
    for name, got_t, want_t in zip(("logprobs", "entropy", "grad_hidden", "grad_lm_head"), got, want, strict=True):
        torch.testing.assert_close(got_t.float(), want_t, **TOLERANCE[dtype], msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.usefixtures("triton_interpreter")
def test_gradient_through_one_output_only():
    hidden_TD, lm_head_VD, targets_T, grad_logprobs_T, _ = _inputs(5, 16, 40, "cpu", torch.float32)
    with force_triton():
        logprobs_T, _ = fused_logprobs(hidden_TD, lm_head_VD, targets_T, chunk_size=16)
        got = torch.autograd.grad(logprobs_T, (hidden_TD, lm_head_VD), grad_logprobs_T)
    logprobs_T, _ = fused_logprobs_reference(hidden_TD, lm_head_VD, targets_T)
    want = torch.autograd.grad(logprobs_T, (hidden_TD, lm_head_VD), grad_logprobs_T)
    for got_t, want_t in zip(got, want, strict=True):
        torch.testing.assert_close(got_t, want_t, **TOLERANCE[torch.float32])


def test_cpu_path_is_bit_exact_with_reference():
    inputs = _inputs(37, 24, 301, "cpu", torch.float32)
    got = _forward_backward(fused_logprobs, *inputs, temperature=0.7)
    want = _forward_backward(fused_logprobs_reference, *inputs, temperature=0.7)
    for got_t, want_t in zip(got, want, strict=True):
        assert torch.equal(got_t, want_t)


def test_reference_small_case_by_hand():
    # One token, D=1, V=2: logits [0, ln 3] -> p = [1/4, 3/4].
    hidden_TD = torch.tensor([[1.0]])
    lm_head_VD = torch.tensor([[0.0], [math.log(3.0)]])
    logprobs_T, entropy_T = fused_logprobs_reference(hidden_TD, lm_head_VD, torch.tensor([1]))
    torch.testing.assert_close(logprobs_T, torch.tensor([math.log(0.75)]))
    torch.testing.assert_close(entropy_T, torch.tensor([-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]))
    # Temperature 2 halves the logits: [0, ln 3 / 2] -> p = [1, sqrt 3] / (1 + sqrt 3).
    logprobs_T, _ = fused_logprobs_reference(hidden_TD, lm_head_VD, torch.tensor([0]), temperature=2.0)
    torch.testing.assert_close(logprobs_T, torch.tensor([-math.log(1.0 + math.sqrt(3.0))]))


@pytest.mark.usefixtures("triton_interpreter")
def test_opcheck():
    hidden_TD, lm_head_VD, targets_T, _, _ = _inputs(7, 16, 40, "cpu", torch.float32)
    torch.library.opcheck(torch.ops.kernels.fused_logprobs.default, (hidden_TD, lm_head_VD, targets_T, 1.0, 16))


@pytest.mark.usefixtures("triton_interpreter")
def test_torch_compile_traces_the_custom_op_without_graph_breaks():
    hidden_TD, lm_head_VD, targets_T, grad_logprobs_T, grad_entropy_T = _inputs(9, 16, 40, "cpu", torch.float32)
    with force_triton():
        eager = _forward_backward(fused_logprobs, hidden_TD, lm_head_VD, targets_T, grad_logprobs_T, grad_entropy_T)
        compiled_op = torch.compile(fused_logprobs, backend="aot_eager", fullgraph=True)
        compiled = _forward_backward(compiled_op, hidden_TD, lm_head_VD, targets_T, grad_logprobs_T, grad_entropy_T)
    for compiled_t, eager_t in zip(compiled, eager, strict=True):
        torch.testing.assert_close(compiled_t, eager_t, **TOLERANCE[torch.float32])


@pytest.mark.parametrize(
    ("hidden_shape", "lm_head_shape", "targets", "temperature", "match"),
    [
        ((4, 8), (10, 9), torch.zeros(4, dtype=torch.long), 1.0, "same D"),
        ((4, 8), (10, 8), torch.zeros(3, dtype=torch.long), 1.0, "targets"),
        ((4, 8), (10, 8), torch.zeros(4), 1.0, "targets"),
        ((4, 8), (10, 8), torch.zeros(4, dtype=torch.long), 0.0, "temperature"),
    ],
)
def test_bad_input_names_the_problem(hidden_shape, lm_head_shape, targets, temperature, match):
    with pytest.raises(ValueError, match=match):
        fused_logprobs(torch.zeros(hidden_shape), torch.zeros(lm_head_shape), targets, temperature)
