"""RMSNorm and RoPE: Triton kernels == reference (forward and gradients); CPU path is the reference itself.

Shape legend: R rows, D normalised dim, B batch, H heads, S positions, Dh head dim, P = Dh / 2.
"""

from __future__ import annotations

import pytest
import torch

from kernels import force_triton
from kernels.norm_rope import rms_norm, rms_norm_reference, rope, rope_reference

NUM_GPUS = 1  # for the `gpu` variants
TOLERANCE = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    # one bf16 rounding of the output (8-bit mantissa); fp32 inside both
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def _grads(fn, inputs, grad_out, wrt):
    out = fn(*inputs)
    return out, *torch.autograd.grad(out, [inputs[i] for i in wrt], grad_out)


def _assert_close_all(got, want, dtype):
    for index, (got_t, want_t) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(got_t.float(), want_t.float(), **TOLERANCE[dtype],
                                   msg=lambda m, i=index: f"output {i}: {m}")  # fmt: skip


@pytest.mark.parametrize("shape", [(3, 5, 48), (2, 7, 3, 20), (1, 130)], ids=str)
def test_rms_norm_kernel_matches_reference(shape, device_dtype):
    device, dtype = device_dtype
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).to(device, dtype).requires_grad_()
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(device, dtype).requires_grad_()
    grad_out = torch.randn(shape, generator=gen).to(device, dtype)
    with force_triton():
        got = _grads(lambda a, w: rms_norm(a, w, 1e-6), (x, weight), grad_out, (0, 1))
    x32, w32 = (t.detach().float().requires_grad_() for t in (x, weight))
    want = _grads(lambda a, w: rms_norm_reference(a, w, 1e-6), (x32, w32), grad_out.float(), (0, 1))
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == dtype
    _assert_close_all(got, want, dtype)


def test_rms_norm_non_contiguous_rows_and_fp32_weight(device_dtype):
    device, dtype = device_dtype
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(1)).to(device, dtype)[:, :32]  # row stride 40
    weight = torch.linspace(0.5, 1.5, 32, device=device)  # fp32 weight: result is fp32 (type promotion)
    with force_triton():
        got = rms_norm(x, weight, 1e-5)
    want = rms_norm_reference(x, weight, 1e-5)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("style", ["interleaved", "neox"])
def test_rope_kernel_matches_reference_on_a_transposed_view(style, device_dtype):
    device, dtype = device_dtype
    gen = torch.Generator().manual_seed(0)
    batch, seq, heads, head_dim = 2, 37, 3, 16
    # the model's layout: projections [B, S, H, Dh] viewed as [B, H, S, Dh]
    x_BHSD = torch.randn(batch, seq, heads, head_dim, generator=gen).to(device, dtype).transpose(1, 2)
    x_BHSD.requires_grad_()
    angles_BSP = torch.rand(batch, seq, head_dim // 2, generator=gen).to(device) * 6.0
    cos_BSP, sin_BSP = angles_BSP.cos(), angles_BSP.sin()
    grad_out = torch.randn(batch, heads, seq, head_dim, generator=gen).to(device, dtype)
    with force_triton():
        got = _grads(lambda a: rope(a, cos_BSP, sin_BSP, style), (x_BHSD,), grad_out, (0,))
    x32 = x_BHSD.detach().float().requires_grad_()
    want = _grads(lambda a: rope_reference(a, cos_BSP, sin_BSP, style), (x32,), grad_out.float(), (0,))
    assert got[0].dtype == dtype
    _assert_close_all(got, want, dtype)


def test_cpu_path_is_the_reference():
    x = torch.randn(4, 3, 8, 16, requires_grad=True)
    weight = torch.rand(16)
    assert torch.equal(rms_norm(x, weight, 1e-6), rms_norm_reference(x, weight, 1e-6))
    cos, sin = torch.rand(4, 8, 8), torch.rand(4, 8, 8)
    assert torch.equal(rope(x, cos, sin, "neox"), rope_reference(x, cos, sin, "neox"))


@pytest.mark.usefixtures("triton_interpreter")
def test_opcheck():
    x = torch.randn(5, 24, requires_grad=True)
    torch.library.opcheck(torch.ops.kernels.rms_norm.default, (x, torch.rand(24, requires_grad=True), 1e-6))
    x_BHSD = torch.randn(2, 3, 5, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.kernels.rope.default, (x_BHSD, torch.rand(2, 5, 4), torch.rand(2, 5, 4), True, 1))


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="weight has shape"):
        rms_norm(torch.zeros(2, 8), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="style='gptj'"):
        rope(torch.zeros(1, 1, 2, 8), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), "gptj")
    with pytest.raises(ValueError, match="even Dh"):
        rope(torch.zeros(1, 1, 2, 8), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))
