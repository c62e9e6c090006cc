"""StreamingEngine: a weight update lands between engine steps while requests are in flight.

Checks what the rest of the pipeline relies on (rl_platform/vllm_cpu/streaming.py): every token carries the
version that sampled it; a token's log-prob is exactly the one of the weights of its version given the whole
prefix (the in-flight prefix is recomputed under the new weights), compared with a float32 HF forward of each
version; the routed-experts rows of each segment are the ones of the weights that produced them.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rl_platform.vllm_cpu import build_llm
from rl_platform.vllm_cpu.streaming import StreamingEngine, token_versions
from tests.vllm_cpu.test_routed_capture import LOGPROB_ATOL, _hf_reference, perturbed_checkpoint

UPDATE_AFTER_STEPS = 6
MAX_TOKENS = 14


def test_token_versions_expand_vllm_spans() -> None:
    from vllm.outputs import WeightVersionSpan

    spans = [WeightVersionSpan("3", 0, 2), WeightVersionSpan("4", 2, 5)]
    assert token_versions(spans, 5, fallback_version=0) == [3, 3, 4, 4, 4]
    assert token_versions(None, 3, fallback_version=7) == [7, 7, 7]
    with pytest.raises(RuntimeError, match="cover 5 tokens of a 6-token response"):
        token_versions(spans, 6, fallback_version=0)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Any:
    llm = build_llm(str(tiny_model_dir), dtype="float32", seed=0, max_model_len=256, enforce_eager=True,
                    kv_cache_gib=0.25)
    yield StreamingEngine(llm, version=0)
    del llm
    gc.collect()


def _params(seed: int) -> Any:
    from vllm import SamplingParams

    return SamplingParams(n=1, max_tokens=MAX_TOKENS, temperature=1.0, seed=seed, logprobs=0, ignore_eos=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_in_flight_update_recomputes_the_prefix_and_keeps_each_segments_routes(
    engine: StreamingEngine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    tokenizer = engine.llm.get_tokenizer()
    prompts = {f"r{i}": tokenizer.encode(text) for i, text in enumerate(["def add(a, b):", "import os\n", "for i"])}
    for i, (rid, ids) in enumerate(prompts.items()):
        engine.add(rid, ids, _params(seed=100 + i))
    with pytest.raises(ValueError, match="already in flight"):
        engine.add("r0", prompts["r0"], _params(seed=1))
    _, perturbed, new_dir = perturbed_checkpoint(tiny_model_dir, tmp_path)
    finished, steps = {}, 0
    late_rid = "late"
    while engine.num_unfinished:
        finished.update((s.request_id, s) for s in engine.step())
        steps += 1
        if steps == UPDATE_AFTER_STEPS:
            seconds = engine.update_weights(perturbed.items(), version=1)
            assert seconds < 30
            engine.add(late_rid, prompts["r0"], _params(seed=7))  # starts entirely under version 1
    assert set(finished) == {*prompts, late_rid}
    assert engine.busy_seconds > 0 and engine.generated_tokens == 4 * MAX_TOKENS

    sequences = {rid: (prompts["r0"] if rid == late_rid else prompts[rid]) for rid in finished}
    ordered = sorted(finished)
    full = [sequences[r] + finished[r].token_ids for r in ordered]
    old_ref = dict(zip(ordered, _hf_reference(tiny_model_dir, full), strict=True))
    new_ref = dict(zip(ordered, _hf_reference(new_dir, full), strict=True))
    for rid in ordered:
        seq, P = finished[rid], len(sequences[rid])
        split = seq.versions.count(0)
        if rid == late_rid:
            assert seq.versions == [1] * MAX_TOKENS
        else:  # the update landed after UPDATE_AFTER_STEPS engine steps (the first one also prefilled)
            assert seq.versions == [0] * split + [1] * (MAX_TOKENS - split) and 0 < split < MAX_TOKENS
        for j, (token, logprob) in enumerate(zip(seq.token_ids, seq.logprobs, strict=True)):
            ref = (old_ref if j < split else new_ref)[rid][1]
            assert abs(logprob - float(ref[P - 1 + j, token])) <= LOGPROB_ATOL, (rid, j)
        routes = np.sort(seq.routed_experts, -1)
        assert routes.shape[0] == P + MAX_TOKENS - 1
        # rows 0 .. P+split-2 were forwarded under version 0, the rest under version 1
        old_rows = 0 if rid == late_rid else P + split - 1
        np.testing.assert_array_equal(routes[:old_rows], old_ref[rid][0][:old_rows])
        np.testing.assert_array_equal(routes[old_rows:], new_ref[rid][0][old_rows:P + MAX_TOKENS - 1])
    # the two versions route differently, so the segment checks above can tell them apart
    assert any((old_ref[r][0] != new_ref[r][0]).any() for r in ordered)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_abort_drops_requests_and_rejects_bad_params(engine: StreamingEngine) -> None:
    from vllm import SamplingParams

    engine.add("a", [1, 5, 6], _params(seed=1))
    engine.add("b", [1, 5, 6], _params(seed=2))
    assert engine.abort(["a", "unknown"]) == ["a"]
    done = []
    while engine.num_unfinished:
        done += engine.step()
    assert [s.request_id for s in done] == ["b"]
    with pytest.raises(ValueError, match="logprobs=0"):
        engine.add("c", [1, 5], SamplingParams(max_tokens=2))
