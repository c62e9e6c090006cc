"""Forensics and the precision/routing decomposition on a tiny model that plays both engine and learner: the
engine's routes and log-probs are made by our own forward, optionally with a known defect injected."""

import numpy as np
import pytest
import torch

from rl_platform.batching import build_training_batch
from rl_platform.mismatch_decomposition import LearnerScorer, decompose, default_settings
from rl_platform.model import MoEModelConfig, MoETransformer
from rl_platform.replay_forensics import alignment_report, rare_forced_expert_stats, score, worst_tokens
from rl_platform.types import Completion, Prompt, RewardResult, Rollout

CONFIG = MoEModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                        num_experts=8, top_k=2, expert_ffn_dim=16, initializer_range=0.2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MoETransformer(CONFIG).eval()


def _engine_view(model, ids, forced=None):
    with torch.no_grad():
        out = model(ids, forced_routes_BSLK=forced, capture_routes=True)
        logp = torch.log_softmax(model.logits(out.hidden_BSD)[0, :-1], -1)
    return logp.gather(1, ids[0, 1:, None])[:, 0], out.routes_BSLK[0, :-1]


def _batch(model, engine_routes=None):
    """2 prompts x 3 samples. engine_routes(routes_SLK, p) -> the routes the 'engine' used (default: its own);
    the engine's log-probs are computed under those routes."""
    g = torch.Generator().manual_seed(1)
    rollouts = []
    for i in range(6):
        prompt_ids = [1, 5 + i % 2, 7, 9, 11]
        response = torch.randint(4, 64, (4 + i % 3,), generator=g).tolist()
        ids = torch.tensor([prompt_ids + response])
        lp, routes = _engine_view(model, ids)
        if engine_routes is not None:
            routes = engine_routes(routes.clone(), len(prompt_ids))
            forced = torch.full((1, ids.shape[1], CONFIG.num_layers, CONFIG.top_k), -1, dtype=torch.int16)
            forced[0, :-1] = routes
            lp, _ = _engine_view(model, ids, forced)
        prompt = Prompt(prompt_id=f"p{i % 2}", text="", token_ids=prompt_ids)
        completion = Completion(prompt_id=prompt.prompt_id, sample_index=i // 2, token_ids=response, text="",
                                generator_logprobs=lp[len(prompt_ids) - 1:].tolist(),
                                routed_experts=routes.numpy().astype(np.uint8), finish_reason="length",
                                policy_versions=[0] * len(response))
        rollouts.append(Rollout(prompt=prompt, completion=completion, reward=RewardResult(value=1.0, failed=False)))
    return build_training_batch(rollouts, [1.0] * 6, 0, CONFIG.num_layers, CONFIG.top_k)


def _other_expert(routes_K):
    """An expert set differing from routes_K in its last slot."""
    out = routes_K.clone()
    out[-1] = next(e for e in range(CONFIG.num_experts) if e not in routes_K.tolist())
    return out


def test_exact_routes_align_and_give_no_mismatch(model):
    batch = _batch(model)
    live = score(model, batch)
    report = alignment_report(batch, live.live_routes_BSLK)
    assert report["routes_expected_positions_frac"] == 1.0
    assert report["route_match_shift+0"] == 1.0
    assert report["route_match_shift+1"] < 0.9 and report["route_match_shift-1"] < 0.9
    assert report["prompt_routes_equal_in_group_frac"] == 1.0
    assert (live.logprobs_BS - batch.generator_logprobs_BS).abs()[batch.mask_BS.bool()].max() < 1e-5


def test_alignment_report_catches_routes_shifted_by_one_position(model):
    def shifted(routes, p):  # the engine's rows start one token late (row i holds token i+1's experts)
        return torch.cat([routes[1:], routes[-1:]])

    report = alignment_report(_batch(model, shifted), score(model, _batch(model)).live_routes_BSLK)
    assert report["route_match_shift+1"] > report["route_match_shift+0"]


def test_alignment_report_catches_prompt_routes_that_differ_within_a_group(model):
    calls = {"n": 0}

    def stale_prompt(routes, p):  # one sample of a group gets other experts at its first prompt position
        calls["n"] += 1
        if calls["n"] == 2:
            routes[0, 0] = _other_expert(routes[0, 0])
        return routes

    report = alignment_report(_batch(model, stale_prompt), score(model, _batch(model)).live_routes_BSLK)
    assert report["prompt_routes_equal_in_group_frac"] < 1.0


def test_decomposition_attributes_a_layer1_route_flip_to_routing_at_layer1(model):
    def flip_layer1(routes, p):  # the 'engine' picked other experts at layer 1 of its first response position
        routes[p, 1] = _other_expert(routes[p, 1])
        return routes

    batch = _batch(model, flip_layer1)
    result = decompose(LearnerScorer(model), batch, default_settings(CONFIG.num_layers))
    summary, rows = result["summary"], result["settings"]
    assert summary["kl_live"] > 1e-6
    assert summary["kl_engine_routes"] < 1e-9  # same arithmetic, same routes: no mismatch left
    assert summary["routing_share"] == pytest.approx(1.0, abs=1e-3)
    assert summary["layer1_routing_share"] == pytest.approx(1.0, abs=1e-3)
    assert abs(summary["layer0_routing_share"]) < 1e-3
    assert rows["fp32/engine_routes"]["route_mismatch"] == 0.0
    assert rows["fp32/live"]["route_mismatch"] > 0.0
    assert result["flip_split"]["no_flip_kl"] < 1e-9 < result["flip_split"]["after_flip_kl"]
    assert rows["bf16/live"]["kl_train_infer"] > 0.0  # bf16 arithmetic is measured separately


def test_worst_tokens_explain_the_token_after_a_forced_rare_expert(model):
    probs = score(model, _batch(model), with_router=True).probs_BSLE

    def rare_layer0(routes, p):  # force, at position p+1, the expert the learner ranks last
        worst = int(probs[0, p + 1, 0].argmin())
        routes[p + 1, 0, -1] = worst
        return routes

    batch = _batch(model, rare_layer0)
    applied = batch.rollout_routes_BSLK
    router_pass = score(model, batch, applied, with_router=True)
    live = score(model, batch)
    tokens = worst_tokens(batch, live.logprobs_BS, live.live_routes_BSLK, applied, router_pass,
                          {"fp32/engine_routes": router_pass.logprobs_BS}, top=3)
    first = tokens[0]
    assert first.abs_dlogp > 0 and first.position >= int(batch.prompt_lengths_B[first.row]) + 1
    assert first.prefix_route_mismatches >= 1
    assert first.logprob_by_setting["fp32/engine_routes"] == pytest.approx(first.generator_lp, abs=1e-5)
    layer0 = tokens[0].layers[0]
    assert set(layer0) >= {"engine", "learner_live", "applied", "applied_prob", "applied_rank", "gates"}
    stats = rare_forced_expert_stats(router_pass, applied, torch.ones_like(batch.mask_BS), CONFIG.top_k)
    assert stats["forced_rank_ge_2k_frac"] > 0.0


def test_prefix_cache_check_counts_only_what_the_engine_served_from_its_cache():
    from types import SimpleNamespace

    from rl_platform.engine_scoring import cached_prompt_tokens

    # a repeated 70-token prompt with 32-token blocks: two full blocks *could* come from the cache, but an
    # engine that reports none served (cache off, evicted) must not have its positions counted as cached
    assert cached_prompt_tokens(SimpleNamespace(num_cached_tokens=0), 70, 32, repeat=True) == 0
    assert cached_prompt_tokens(SimpleNamespace(num_cached_tokens=64), 70, 32, repeat=True) == 64
    assert cached_prompt_tokens(SimpleNamespace(num_cached_tokens=70), 70, 32, repeat=True) == 69
    assert cached_prompt_tokens(SimpleNamespace(), 70, 32, repeat=True) == 64  # no count reported: full blocks
    assert cached_prompt_tokens(SimpleNamespace(), 70, 32, repeat=False) == 0


def test_short_prompts_are_chained_so_the_prefix_cache_serves_a_block():
    from rl_platform.engine_scoring import chain_prompts

    prompts = [[1, 5, 6], [1, 7], [1, 8, 9, 10]]
    chained = chain_prompts(prompts, min_len=8)
    assert [len(c) >= 8 for c in chained] == [True, True, True]
    assert chained[0][:3] == [1, 5, 6] and chained[0][3:5] == [1, 7]  # own prompt first, then the next ones
    assert chained[2][:4] == [1, 8, 9, 10] and chained[2][4:7] == [1, 5, 6]
    assert chain_prompts([[1] * 9], min_len=8) == [[1] * 9]  # long enough already: unchanged
