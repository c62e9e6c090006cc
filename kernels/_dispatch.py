"""Where an op runs: the Triton kernel on CUDA tensors, the PyTorch reference elsewhere.

Tests need a third choice: run the Triton kernel on CPU tensors in Triton's interpreter, so that
kernel == reference can be checked on a machine without a GPU. `force_triton()` turns that on for the current
thread only, so one test cannot leak the setting into another thread.

The interpreter only exists if TRITON_INTERPRET=1 was set before `import triton`: Triton chooses interpreted or
compiled functions when @triton.jit decorates, for our kernels and for its own standard library (tl.max, tl.sum,
tl.cdiv ...), so an interpreter copy cannot be built afterwards. `launcher` checks that and says so.
`kernels` imports nothing from the rest of the repo (kernels <- rl_platform <- ...).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import torch

_state = threading.local()


def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET=1 (must be set before triton is first imported to take effect)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_interpreted(kernel: Any) -> bool:
    """Whether a @triton.jit kernel was built for the interpreter (runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


@contextlib.contextmanager
def force_triton() -> Iterator[None]:
    """Routes ops to their Triton kernels even for CPU tensors (needs the interpreter there: see module doc)."""
    previous = getattr(_state, "forced", False)
    _state.forced = True
    try:
        yield
    finally:
        _state.forced = previous


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether the op taking `tensor` should launch its Triton kernel."""
    return tensor.is_cuda or getattr(_state, "forced", False)


def launcher(kernel: Any, tensor: torch.Tensor) -> Any:
    """Returns `kernel` to launch on `tensor`'s device, or raises a readable error instead of Triton's."""
    if not tensor.is_cuda and not is_interpreted(kernel):
        raise RuntimeError(
            f"{getattr(kernel, '__name__', kernel)}: a Triton kernel got a {tensor.device} tensor but was compiled "
            f"for GPUs; move the inputs to CUDA, or set TRITON_INTERPRET=1 before anything imports triton to run "
            f"it in the interpreter (CPU, slow: tests only)."
        )
    return kernel
