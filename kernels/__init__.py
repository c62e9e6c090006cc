"""Compute kernels shared by pretraining, the learner and long-context rollout.

Each op lives in `kernels/<op>/` as reference.py (PyTorch spec and CPU path), kernel.py (Triton), op.py (dispatch
plus torch custom op) and bench.py. Import the op packages explicitly (`from kernels.fused_logprobs import ...`);
this package does not import them itself so that `import kernels` stays cheap. It imports nothing else of ours.
"""

from kernels._dispatch import force_triton, interpreter_enabled, is_interpreted

__all__ = ["force_triton", "interpreter_enabled", "is_interpreted"]
