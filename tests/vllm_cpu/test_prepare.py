"""prepare_vllm_process: idempotent, refuses a conflicting second setup, makes vLLM see Triton."""

from __future__ import annotations

import pytest

from rl_platform.vllm_cpu import prepare_vllm_process
from rl_platform.vllm_cpu.triton_backend import register_cpu_backend


def test_repeated_and_compatible_calls_are_no_ops() -> None:
    prepare_vllm_process()
    prepare_vllm_process(triton_interpret=True)  # what conftest prepared
    assert register_cpu_backend() is True  # still ours, not registered twice


def test_conflicting_setup_is_refused_with_a_fix() -> None:
    with pytest.raises(RuntimeError, match="already prepared.*one setting per process"):
        prepare_vllm_process(model_runner_v2=False)
    with pytest.raises(RuntimeError, match="already prepared"):
        prepare_vllm_process(triton_interpret=False)


def test_vllm_sees_triton_and_enables_model_runner_v2() -> None:
    from triton.backends import backends
    from vllm.triton_utils import HAS_TRITON

    assert HAS_TRITON and "cpu" in backends
