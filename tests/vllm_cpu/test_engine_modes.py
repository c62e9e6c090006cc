"""The other engine modes: torch.compile with capture (the opaque-MoE-op fix) and the doctor probe.

Each test builds and frees its own engine, after test_routed_capture.py's shared eager engine is gone.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from rl_platform.vllm_cpu import build_llm, probe_routed_experts, update_weights
from tests.vllm_cpu.test_routed_capture import (
    PROMPTS,
    assert_matches_hf,
    moe_shape,
    perturbed_checkpoint,
    sampling_params,
)


@pytest.mark.slow
def test_compiled_engine_captures_routes_matching_hf_before_and_after_update(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Without patches.py fix 4, torch.compile bakes capture_fn=None into the graph: all-zero routes."""
    llm = build_llm(
        str(tiny_model_dir), dtype="float32", seed=0, max_model_len=256, enforce_eager=False, kv_cache_gib=0.25
    )
    try:
        assert_matches_hf(
            llm.generate(PROMPTS, sampling_params(), use_tqdm=False), tiny_model_dir, *moe_shape(tiny_model_dir)
        )
        _, perturbed, new_dir = perturbed_checkpoint(tiny_model_dir, tmp_path)
        update_weights(llm, perturbed.items())
        assert_matches_hf(llm.generate(PROMPTS, sampling_params(), use_tqdm=False), new_dir, *moe_shape(tiny_model_dir))
    finally:
        del llm
        gc.collect()


@pytest.mark.slow
def test_probe_routed_experts_reports_ok_on_a_tiny_model() -> None:
    result = probe_routed_experts()
    assert result.ok, f"{result.error} (hint: {result.fix_hint})"
    assert result.tokens_per_s > 0 and result.routed_experts_shape is not None
    assert result.routed_experts_shape[1:] == (2, 4)
