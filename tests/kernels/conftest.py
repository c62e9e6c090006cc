"""Kernel tests run the Triton kernels on CPU tensors in Triton's interpreter, and on CUDA when there is one.

TRITON_INTERPRET must be set before triton is first imported (Triton picks interpreted or compiled functions at
@triton.jit time, for our kernels and for its own tl.max/tl.sum/...), hence at the top of this conftest.
setdefault: an explicit TRITON_INTERPRET=0, as benchmarks/gpu_kernels.sh sets for the GPU run, wins. In a
whole-suite run where another test package imported triton first, the interpreter tests skip with that reason;
setting TRITON_INTERPRET=1 in tests/conftest.py (or the environment) avoids it.

Every kernel-vs-reference test takes the `device_dtype` fixture:
  cpu-float32    needs the interpreter; fp32 only (the interpreter's bf16 arithmetic is wrong);
  cuda-float32,  marked `gpu`: need a CUDA device and compiled Triton (TRITON_INTERPRET unset or 0).
  cuda-bfloat16
CPU-only Triton tests use `@pytest.mark.usefixtures("triton_interpreter")`. A fixture, not a marker: a marker
registered by this non-root conftest is unknown under --strict-markers when pytest runs from the repo root.
Tests that cannot run here are skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

_INTERPRETER_SKIP = "runs Triton on CPU tensors: set TRITON_INTERPRET=1 before anything imports triton"


def _triton_is_interpreted() -> bool:
    """Whether Triton's standard library and our kernels were all built for the interpreter."""
    import triton.language.standard as tl_standard

    from kernels import is_interpreted
    from kernels.fused_logprobs import kernel as fused_logprobs_kernel
    from kernels.moe_experts import kernel as moe_experts_kernel
    from kernels.rrattention import kernel as rrattention_kernel

    jitted = (
        tl_standard.max,
        fused_logprobs_kernel.online_softmax_stats_kernel,
        moe_experts_kernel.grouped_mm_kernel,
        rrattention_kernel.rr_estimate_kernel,
    )
    return all(is_interpreted(fn) for fn in jitted)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    interpreting = _triton_is_interpreted()
    has_cuda = torch.cuda.is_available()
    here = Path(__file__).parent
    for item in items:
        if not item.path.is_relative_to(here):  # this hook sees every collected item; touch only kernel tests
            continue
        if item.get_closest_marker("gpu") is not None:
            if not has_cuda:
                reason = "needs a CUDA device (torch.cuda.is_available() is False); run benchmarks/gpu_kernels.sh"
                item.add_marker(pytest.mark.skip(reason=reason))
            elif interpreting:
                reason = "GPU kernel tests need compiled Triton but TRITON_INTERPRET=1; rerun with TRITON_INTERPRET=0"
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def triton_interpreter() -> None:
    """Skips the test unless Triton runs in the interpreter (Triton kernels on CPU tensors)."""
    if not _triton_is_interpreted():
        pytest.skip(_INTERPRETER_SKIP)


@pytest.fixture(
    params=[
        pytest.param(("cpu", torch.float32), id="cpu-float32"),
        pytest.param(("cuda", torch.float32), marks=pytest.mark.gpu, id="cuda-float32"),
        pytest.param(("cuda", torch.bfloat16), marks=pytest.mark.gpu, id="cuda-bfloat16"),
    ]
)
def device_dtype(request: pytest.FixtureRequest) -> tuple[str, torch.dtype]:
    if request.param[0] == "cpu" and not _triton_is_interpreted():
        pytest.skip(_INTERPRETER_SKIP)
    return request.param
