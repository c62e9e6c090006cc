"""The DeepSpeed learner in-process on simulated rollouts: replay modes, metrics, every parameter updates."""

import numpy as np
import pytest
import torch

from rl_platform.learner import Learner, LearnerConfig
from rl_platform.model import MoEModelConfig, MoETransformer
from rl_platform.model.hf_interop import export_hf
from rl_platform.types import Completion, Prompt, RewardResult, Rollout

CONFIG = MoEModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                        num_experts=8, top_k=2, expert_ffn_dim=16, initializer_range=0.2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return export_hf(MoETransformer(CONFIG), tmp_path_factory.mktemp("m") / "policy")


def _rollouts(model_dir, perturb_routes: bool):
    """8 samples of 2 prompts whose generator logprobs and routes come from the policy itself."""
    from rl_platform.model.hf_interop import load_hf

    model = load_hf(model_dir)
    g = torch.Generator().manual_seed(3)
    rollouts, advantages = [], []
    for i in range(8):
        prompt_ids = [1, 5 + i % 2, 7]
        response = torch.randint(4, 64, (5,), generator=g).tolist()
        ids = torch.tensor([prompt_ids + response])
        with torch.no_grad():
            out = model(ids, capture_routes=True)
            logp = torch.log_softmax(model.logits(out.hidden_BSD)[0, :-1], -1)
        targets = ids[0, 1:]
        lp = logp.gather(1, targets[:, None])[:, 0][len(prompt_ids) - 1:].tolist()
        routes = out.routes_BSLK[0, :-1].numpy().astype(np.uint8)
        if perturb_routes:
            routes = ((routes.astype(np.int64) + 1) % CONFIG.num_experts).astype(np.uint8)
        prompt = Prompt(prompt_id=f"p{i % 2}", text="", token_ids=prompt_ids)
        completion = Completion(prompt_id=prompt.prompt_id, sample_index=i // 2, token_ids=response, text="",
                                generator_logprobs=lp, routed_experts=routes, finish_reason="length",
                                policy_versions=[0] * len(response))
        reward = float(i % 3 == 0)
        rollouts.append(Rollout(prompt=prompt, completion=completion,
                                reward=RewardResult(value=reward, failed=False)))
        advantages.append(reward - 0.4 if i != 7 else None)  # the last one 'failed'
    return rollouts, advantages


@pytest.mark.parametrize("mode", ["off", "R2", "R3"])
@pytest.mark.parametrize("num_minibatches", [1, 2])
def test_replay_modes_and_metrics(model_dir, mode, num_minibatches):
    learner = Learner(LearnerConfig(routing_replay=mode, micro_batch_size=3, num_minibatches=num_minibatches),
                      str(model_dir))
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    rollouts, advantages = _rollouts(model_dir, perturb_routes=True)
    metrics = learner.train_on_rollouts(rollouts, advantages)
    assert metrics["moe/route_mismatch"] == pytest.approx(1.0)  # every rollout route was shifted
    if mode == "R3":
        assert metrics["moe/route_mismatch_during_update"] == 0.0
    else:
        assert metrics["moe/route_mismatch_during_update"] > 0.9
    for key in ("train/kl_train_infer", "train/logprob_abs_diff_mean", "moe/extreme_token_frac_tau2",
                "loss/clip_frac", "policy/entropy", "train/grad_norm", "moe/route_mismatch_layer1"):
        assert key in metrics, key
    changed = [n for n, p in learner.model.named_parameters() if not torch.equal(p, before[n])]
    assert set(changed) == set(before), set(before) - set(changed)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_exact_routes_give_zero_train_infer_gap_in_float32(model_dir, temperature):
    # At temperature != 1 the loss scores logits / T, while the train-infer metrics still compare the
    # temperature-1 log-probs the engine reports: the gap stays zero.
    learner = Learner(LearnerConfig(routing_replay="R3", temperature=temperature), str(model_dir))
    metrics = learner.train_on_rollouts(*_rollouts(model_dir, perturb_routes=False))
    assert metrics["moe/route_mismatch"] == 0.0
    assert metrics["train/logprob_abs_diff_max"] < 1e-4
    assert metrics["train/kl_train_infer"] < 1e-8


@pytest.mark.parametrize("mode", ["off", "R3"])
def test_folding_the_old_forward_into_the_update_changes_nothing(model_dir, mode, monkeypatch):
    """On-policy with one mini-batch the update's forward doubles as the old-policy forward; the step must be
    the same as with the separate no-grad forward."""
    import rl_platform.learner as learner_module

    rollouts, advantages = _rollouts(model_dir, perturb_routes=True)
    config = LearnerConfig(routing_replay=mode, micro_batch_size=3)
    assert learner_module.folds_old_forward(config)
    folded = Learner(config, str(model_dir))
    folded_metrics = folded.train_on_rollouts(rollouts, advantages)
    monkeypatch.setattr(learner_module, "folds_old_forward", lambda config: False)
    separate = Learner(config, str(model_dir))
    separate_metrics = separate.train_on_rollouts(rollouts, advantages)
    for key, value in separate_metrics.items():
        assert folded_metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key  # batch-shape float noise
    assert folded_metrics["loss/ratio_mean"] == 1.0 and folded_metrics["loss/clip_frac"] == 0.0
    for (name, a), (_, b) in zip(folded.model.named_parameters(), separate.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)  # Adam amplifies float noise; lr is 2e-4


def test_the_loss_scores_the_sampling_temperature(model_dir):
    rollouts, advantages = _rollouts(model_dir, perturb_routes=False)
    entropy = {t: Learner(LearnerConfig(temperature=t), str(model_dir)).train_on_rollouts(rollouts, advantages)
               ["policy/entropy"] for t in (1.0, 0.5)}
    assert entropy[0.5] < 0.9 * entropy[1.0]  # a sharper distribution is what the loss sees


def test_versions_count_distinct_weights(model_dir):
    learner = Learner(LearnerConfig(), str(model_dir))
    assert learner.publish_weights().version == 0  # the base weights
    learner.train_on_rollouts(*_rollouts(model_dir, perturb_routes=False))
    first = learner.publish_weights()
    again = learner.publish_weights()  # e.g. a resumed run loading its engines
    assert first.version == again.version == 1
    assert all(torch.equal(a, b) and n == m
               for (n, a), (m, b) in zip(first.named_tensors(), again.named_tensors(), strict=True))


def test_length_sorted_trimmed_micro_batches_give_the_update_of_one_padded_batch(model_dir):
    """Rows of different lengths: 4 micro-batches (sorted by length, each cut to its longest row) and one
    micro-batch padded to the longest row of all must give the same update (float32 summation order only)."""
    from rl_platform.model.hf_interop import load_hf

    model = load_hf(model_dir)
    g = torch.Generator().manual_seed(5)
    rollouts, advantages = [], []
    for i in range(8):
        prompt_ids = [1, 5 + i % 3, 7]
        response = torch.randint(4, 64, (2 + 3 * (i % 4),), generator=g).tolist()  # 2..11 tokens
        ids = torch.tensor([prompt_ids + response])
        with torch.no_grad():
            out = model(ids, capture_routes=True)
            logp = torch.log_softmax(model.logits(out.hidden_BSD)[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
        prompt = Prompt(prompt_id=f"p{i % 2}", text="", token_ids=prompt_ids)
        completion = Completion(prompt_id=prompt.prompt_id, sample_index=i // 2, token_ids=response, text="",
                                generator_logprobs=logp[len(prompt_ids) - 1:].tolist(),
                                routed_experts=out.routes_BSLK[0, :-1].numpy().astype(np.uint8),
                                finish_reason="length", policy_versions=[0] * len(response))
        rollouts.append(Rollout(prompt=prompt, completion=completion, reward=RewardResult(value=1.0, failed=False)))
        advantages.append(float(i % 3) - 1.0)
    after = {}
    for micro in (2, 8):
        learner = Learner(LearnerConfig(routing_replay="R3", micro_batch_size=micro), str(model_dir))
        metrics = learner.train_on_rollouts(rollouts, advantages)
        assert metrics["train/logprob_abs_diff_max"] < 1e-4  # the trimmed rows still score the engine's tokens
        after[micro] = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    for name, value in after[8].items():
        torch.testing.assert_close(after[2][name], value, atol=2e-6, rtol=1e-5, msg=name)
