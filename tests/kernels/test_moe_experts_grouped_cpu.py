"""The CPU grouped-matmul path of moe_experts at ultra-sparse shapes (128-256 experts, top-1..4): it equals
the loop-over-experts reference, forward and every gradient, and handles experts without tokens.

Shape legend: T tokens, D model dim, E experts, K top-k, F expert FFN dim.
"""

from __future__ import annotations

import pytest
import torch

from kernels.moe_experts import moe_experts, moe_experts_grouped_cpu, moe_experts_reference
from tests.kernels.test_moe_experts import GRAD_NAMES, _forward_backward, _inputs


@pytest.mark.parametrize("shape", [(48, 32, 128, 2, 16), (24, 16, 256, 4, 8), (50, 16, 128, 1, 8)], ids=str)
def test_grouped_matches_reference_at_many_experts(shape):
    inputs = _inputs(shape, "cpu", torch.float32)
    got = _forward_backward(moe_experts_grouped_cpu, *inputs)
    want = _forward_backward(moe_experts_reference, *inputs)
    for name, got_t, want_t in zip(("y", *GRAD_NAMES), got, want, strict=True):
        torch.testing.assert_close(got_t, want_t, atol=1e-6, rtol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # with T*K < E most experts get no token: their weight gradients must be exactly zero
    idle_E = torch.bincount(inputs[1].reshape(-1), minlength=shape[2]) == 0
    assert idle_E.any()
    for grad_EXX in got[3:]:
        assert torch.count_nonzero(grad_EXX[idle_E]) == 0


def test_model_calls_the_grouped_path_on_cpu():
    inputs = _inputs((40, 16, 128, 2, 8), "cpu", torch.float32)
    assert torch.equal(moe_experts(*inputs[:-1]), moe_experts_grouped_cpu(*inputs[:-1]))


def test_bfloat16_input_is_computed_in_float32_and_returned_in_bfloat16():
    inputs = _inputs((33, 16, 128, 2, 8), "cpu", torch.bfloat16)
    y_TD = moe_experts_grouped_cpu(*inputs[:-1])
    assert y_TD.dtype == torch.bfloat16
    torch.testing.assert_close(y_TD, moe_experts_reference(*inputs[:-1]), atol=0, rtol=0)


def test_empty_batch():
    x_TD, topk_ids_TK, topk_weights_TK, *weights, _ = _inputs((0, 16, 128, 2, 8), "cpu", torch.float32)
    assert moe_experts_grouped_cpu(x_TD, topk_ids_TK, topk_weights_TK, *weights).shape == (0, 16)
