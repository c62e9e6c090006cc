"""Shared setup for the vLLM-on-CPU tests.

TRITON_INTERPRET=1 must be set before vllm's kernel modules are imported: triton decides at
decoration time whether a kernel is interpreted, and the kernel tests compare each PyTorch stand-in
with the interpreted original. The engine tests in this session therefore also run with the
interpreter available; they assert that no launch actually ran in it.

If something in the same pytest process imported vllm too early, these tests are skipped with the
reason (run `pytest tests/vllm_cpu` on its own) rather than failing the whole session.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from rl_platform.vllm_cpu.testing import TinyErnieConfig, build_tiny_ernie_moe

_SETUP_PROBLEM = ""
if "vllm.v1.worker.gpu.sample.gumbel" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
    _SETUP_PROBLEM = "vllm's MRV2 kernels were imported before TRITON_INTERPRET=1 was set"
else:
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        from rl_platform.vllm_cpu import prepare_vllm_process

        prepare_vllm_process(triton_interpret=True)
    except RuntimeError as exc:
        _SETUP_PROBLEM = str(exc)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _SETUP_PROBLEM:
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason=f"{_SETUP_PROBLEM}; run `pytest tests/vllm_cpu` in its own process")
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(skip)


TINY = TinyErnieConfig(vocab_size=512, hidden_size=128, num_layers=2, num_experts=32, top_k=4, num_shared_experts=1)
"""2 MoE layers x 32 experts, top-4, 1 shared expert, float32: ~2 M params, builds in ~1 s."""


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ernie_moe(tmp_path_factory.mktemp("tiny_ernie"), TINY)
