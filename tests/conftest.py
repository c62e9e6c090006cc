"""Shared test setup: offline, quiet, deterministic; no GPU needed anywhere."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Triton fixes interpreter mode when a kernel is decorated, so it must be set before anything imports a
# kernel module (rl_platform.learner imports kernels.fused_logprobs): Triton kernels are tested on CPU through
# the interpreter. Processes that run vLLM inherit it, which only makes kernels that the vLLM-CPU stand-ins
# do not cover fall back to the (slow, correct) interpreter instead of raising.
os.environ.setdefault("TRITON_INTERPRET", "1")


FAST_TIMEOUT_S, SLOW_TIMEOUT_S = 600, 1200


def _gpu_deselected_key():
    import pytest

    return pytest.StashKey[int]()


GPU_DESELECTED = _gpu_deselected_key()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    count = config.stash.get(GPU_DESELECTED, 0)
    if count:
        terminalreporter.write_line(f"{count} tests marked `gpu` deselected: no CUDA device here "
                                    "(benchmarks/gpu_kernels.sh runs them on a GPU machine)")


def pytest_collection_modifyitems(config, items):
    """A per-test timeout for every test that does not set its own: a hung engine fails, CI goes on. Generous,
    because the first DeepSpeed learner of a run compiles a C++ op (minutes on a loaded 2-core machine)."""
    import pytest
    import torch

    if not torch.cuda.is_available():
        # `gpu` tests need a CUDA device (benchmarks/gpu_kernels.sh runs them on one): deselected here, and
        # counted in the summary, instead of a skip line per parameter.
        gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
        if gpu:
            config.hook.pytest_deselected(items=gpu)
            items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
            config.stash[GPU_DESELECTED] = len(gpu)
    for item in items:
        if item.get_closest_marker("timeout") is None:
            slow = item.get_closest_marker("slow") is not None
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S if slow else FAST_TIMEOUT_S))
