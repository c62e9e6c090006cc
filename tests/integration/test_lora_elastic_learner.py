"""LoRA RL and elastic RL in the DeepSpeed learner, in-process on a tiny model with simulated rollouts:
only adapters train, the reference is the base, merged weights compute what the learner computes, the adapter
exports to peft/transformers, a resumed LoRA learner continues exactly, and one backward trains rows of
different sub-models."""

import numpy as np
import pytest
import torch

from rl_platform.batching import build_training_batch
from rl_platform.learner import Learner, LearnerConfig, response_logprobs
from rl_platform.lora import LoRAConfig, wrap_policy
from rl_platform.model import MoEModelConfig, MoETransformer, SubModel
from rl_platform.model.adapter import load_adapter
from rl_platform.model.elastic import ElasticConfig
from rl_platform.model.hf_interop import export_hf, load_hf
from rl_platform.types import Completion, Prompt, RewardResult, Rollout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = MoEModelConfig(vocab_size=64, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1, head_dim=16,
                        num_experts=8, top_k=2, expert_ffn_dim=16, initializer_range=0.2)
LORA = LoRAConfig(enabled=True, rank=4, alpha=8.0)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    return export_hf(MoETransformer(CONFIG), tmp_path_factory.mktemp("lora") / "base")


def _rollouts(base_dir, seed=3):
    """8 samples of 2 prompts whose engine log-probs and routes come from the base model itself."""
    model = load_hf(base_dir)
    g = torch.Generator().manual_seed(seed)
    rollouts, advantages = [], []
    for i in range(8):
        prompt_ids = [1, 5 + i % 2, 7]
        response = torch.randint(4, 64, (6,), generator=g).tolist()
        ids = torch.tensor([prompt_ids + response])
        with torch.no_grad():
            out = model(ids, capture_routes=True)
            logp = torch.log_softmax(model.logits(out.hidden_BSD)[0, :-1], -1)
        lp = logp.gather(1, ids[0, 1:, None])[:, 0][len(prompt_ids) - 1:].tolist()
        prompt = Prompt(prompt_id=f"p{i % 2}", text="", token_ids=prompt_ids)
        completion = Completion(prompt_id=prompt.prompt_id, sample_index=i // 2, token_ids=response, text="",
                                generator_logprobs=lp, routed_experts=out.routes_BSLK[0, :-1].numpy().astype(np.uint8),
                                finish_reason="length", policy_versions=[0] * len(response))
        reward = float(i % 3 == 0)
        rollouts.append(Rollout(prompt=prompt, completion=completion, reward=RewardResult(value=reward, failed=False)))
        advantages.append(reward - 0.4)
    return rollouts, advantages


def _lora_learner(base_dir, **kwargs):
    config = LearnerConfig(lora=kwargs.pop("lora", LORA), micro_batch_size=4, **kwargs)
    config.optim.lr = 1e-2  # a few steps must visibly move rank-4 adapters
    return Learner(config, str(base_dir))


def _params(learner):
    return {n: p.detach().clone() for n, p in learner.model.named_parameters()}


def test_only_adapters_train_and_the_reference_is_the_base(base_dir):
    learner = _lora_learner(base_dir)
    learner.config.loss.kl_coef = 0.1
    learner.reference = learner.policy.base_view()  # the KL term on (kl_coef was 0 at construction)
    assert learner.reference.module is learner.policy.module  # no second copy of the weights
    before = _params(learner)
    adapters = {n for n, p in learner.model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n or "expert_adapter" in n for n in adapters)
    for _ in range(2):
        metrics = learner.train_on_rollouts(*_rollouts(base_dir))
    after = _params(learner)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == adapters, (sorted(changed - adapters)[:3], sorted(adapters - changed)[:3])
    assert metrics["loss/kl_to_ref"] > 0  # the adapted policy has moved away from its base
    ids = torch.tensor([[1, 5, 7, 9, 11, 13]])
    with torch.no_grad():
        base = load_hf(base_dir)(ids).hidden_BSD
        torch.testing.assert_close(learner.reference(ids).hidden_BSD, base, rtol=0, atol=0)
        assert (learner.policy(ids).hidden_BSD - base).abs().max() > 1e-3


def test_merged_weights_compute_what_the_learner_computes(base_dir):
    from rl_platform.model.adapter import MoETransformerAdapter
    from rl_platform.model.architectures import get_architecture

    learner = _lora_learner(base_dir)
    for seed in (3, 4):
        learner.train_on_rollouts(*_rollouts(base_dir, seed=seed))
    weights = learner.publish_weights()  # merged W + s * B A: what the engines load
    merged = MoETransformer(CONFIG)
    arch = get_architecture(CONFIG.hf_architecture)
    merged.load_state_dict(arch.state_dict_from_checkpoint(dict(weights.named_tensors()), CONFIG))
    batch = build_training_batch(_rollouts(base_dir, seed=9)[0], [0.0] * 8, 0, CONFIG.num_layers, CONFIG.top_k)
    with torch.no_grad():
        ours = response_logprobs(learner.policy, batch)[0]
        theirs = response_logprobs(MoETransformerAdapter(merged.eval()), batch)[0]
    assert (ours - theirs)[batch.mask_BS.bool()].abs().max() < 1e-5
    # reading the merged weights out put the very base tensors back
    base = dict(load_hf(base_dir).named_parameters())
    for name, p in learner.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base[name.replace(".base_layer", "")]), name


def test_exported_adapter_is_a_peft_adapter_of_the_transformers_base(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    learner = _lora_learner(base_dir)
    for seed in (3, 4):
        learner.train_on_rollouts(*_rollouts(base_dir, seed=seed))
    merged_dir = learner.export(str(tmp_path / "policy"))
    ids = torch.tensor([[1, 5, 7, 9, 11, 13, 20, 21]])
    with torch.no_grad():
        ours = learner.model.logits(learner.policy(ids).hidden_BSD)
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)),
                                               str(merged_dir) + "-lora").eval()
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        assert (peft_model(ids).logits - ours).abs().max() < 1e-4
        assert (merged(ids).logits - ours).abs().max() < 1e-4
        base = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
        assert (base(ids).logits - ours).abs().max() > 1e-3


def test_a_resumed_lora_learner_continues_exactly(base_dir, tmp_path):
    straight = _lora_learner(base_dir)
    for seed in (3, 4):
        last = straight.train_on_rollouts(*_rollouts(base_dir, seed=seed))
    first = _lora_learner(base_dir)
    first.train_on_rollouts(*_rollouts(base_dir, seed=3))
    path = first.save_checkpoint(str(tmp_path / "ckpt"), {"step": 1})
    saved = sum(f.stat().st_size for f in (tmp_path / "ckpt").rglob("*model_states.pt"))
    assert saved < 0.5 * sum(p.numel() * 4 for p in first.model.parameters())  # adapters only, not the base
    resumed = _lora_learner(base_dir)
    resumed.load_checkpoint(path)
    again = resumed.train_on_rollouts(*_rollouts(base_dir, seed=4))
    for key in ("loss/policy", "train/grad_norm", "policy/entropy"):
        assert again[key] == pytest.approx(last[key], rel=1e-6, abs=1e-7), key
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)


def test_train_router_trains_the_router_and_the_reference_keeps_the_base_router(base_dir):
    learner = _lora_learner(base_dir, lora=LoRAConfig(enabled=True, rank=4, alpha=8.0, train_router=True))
    routers = [n for n, p in learner.model.named_parameters() if p.requires_grad and "router" in n]
    assert len(routers) == CONFIG.num_layers
    before = _params(learner)
    for seed in (3, 4):
        learner.train_on_rollouts(*_rollouts(base_dir, seed=seed))
    assert all(not torch.equal(before[n], dict(learner.model.named_parameters())[n]) for n in routers)
    ids = torch.tensor([[1, 5, 7, 9, 11, 13]])
    with torch.no_grad():
        torch.testing.assert_close(learner.policy.base_view()(ids).hidden_BSD, load_hf(base_dir)(ids).hidden_BSD,
                                   rtol=0, atol=0)


FIXED = (SubModel.full(CONFIG),) * 3 + (SubModel(layers=(0, 2), experts=tuple(range(8)), top_k=2),) * 2 + (
    SubModel(layers=(0, 1, 2), experts=tuple(range(4)), top_k=2), SubModel(layers=(0, 1, 2), experts=tuple(range(8)),
                                                                            top_k=1), SubModel.full(CONFIG))


@pytest.mark.parametrize("lora", [False, True])
def test_one_backward_trains_rows_of_different_submodels(base_dir, monkeypatch, lora):
    """The update's single backward over a batch mixing full, depth, width and top-k rows has the gradient of
    each row run through its own sub-model (computed here by hand) and not the full-model gradient."""
    config = LearnerConfig(micro_batch_size=8, elastic=ElasticConfig(enabled=True),
                           lora=LORA if lora else LoRAConfig())
    learner = Learner(config, str(base_dir))
    monkeypatch.setattr(learner.elastic, "submodels", lambda num_rows, step: FIXED)
    grads = {}
    clip = learner.clipper.clip
    monkeypatch.setattr(learner.clipper, "clip", lambda access: (grads.update(access[0]()), clip(access))[1])
    rollouts, advantages = _rollouts(base_dir)
    batch = build_training_batch(rollouts, advantages, 0, CONFIG.num_layers, CONFIG.top_k)
    expected = {}
    for subs in (FIXED, None):  # by hand, on a plain (not DeepSpeed) copy with the same adapter init
        torch.manual_seed(0)
        policy = wrap_policy(load_adapter(base_dir), config.lora, base_dir)
        b = learner.elastic.assign(batch, 0) if subs else batch
        lp, _, _ = response_logprobs(policy, b, forced_routes=b.rollout_routes_BSLK)
        config.loss.loss(_inputs(lp, b)).loss.backward()
        expected[subs is None] = {n: p.grad for n, p in policy.module.named_parameters() if p.grad is not None}
    metrics = learner.train_on_rollouts(rollouts, advantages)
    assert metrics["elastic/submodel_rows_frac"] == pytest.approx(4 / 8)
    assert metrics["moe/route_mismatch_during_update"] == 0.0  # full rows replay (R3); sub-model rows route live
    elastic, full = expected[False], expected[True]
    assert set(grads) == set(elastic)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, elastic[name], rtol=1e-5, atol=1e-7, msg=name)
    assert max((elastic[n] - full[n]).abs().max() for n in elastic) > 1e-4


def _inputs(logprobs_BS, batch):
    from rl_platform.losses import PolicyLossInputs

    num_seqs = int((batch.mask_BS.sum(-1) > 0).sum())
    return PolicyLossInputs(logprobs_BS=logprobs_BS, old_logprobs_BS=logprobs_BS.detach(),
                            advantages_B=batch.advantages_B, mask_BS=batch.mask_BS,
                            generator_logprobs_BS=batch.generator_logprobs_BS,
                            old_logprobs_t1_BS=logprobs_BS.detach(), num_global_tokens=batch.num_tokens,
                            num_global_seqs=num_seqs)


def test_every_family_member_of_an_elastic_lora_policy_exports_and_loads_in_transformers(base_dir, tmp_path):
    """After elastic LoRA RL, each named member is written merged and computes in transformers what the learner's
    own forward of that sub-model computes (vLLM serves the same export format: tests/integration/
    test_vllm_parity.py serves an exported sub-model)."""
    from transformers import AutoModelForCausalLM

    from rl_platform.model.elastic import named_family

    config = LearnerConfig(micro_batch_size=8, elastic=ElasticConfig(enabled=True), lora=LORA)
    config.optim.lr = 1e-2
    learner = Learner(config, str(base_dir))
    for seed in (3, 4):
        learner.train_on_rollouts(*_rollouts(base_dir, seed=seed))
    full_dir = learner.export(str(tmp_path / "models" / "policy"))
    dirs = learner.export_family(str(tmp_path / "models"), full_dir)
    family = named_family(CONFIG)
    assert set(dirs) == set(family) and len(family) >= 4
    ids = torch.tensor([[1, 5, 7, 9, 11, 13, 20, 21]])
    base = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    for name, submodel in family.items():
        with torch.no_grad():
            ours = learner.model.logits(learner.policy(ids, submodels=[submodel]).hidden_BSD)
            theirs = AutoModelForCausalLM.from_pretrained(dirs[name]).eval()(ids).logits
        assert (theirs - ours).abs().max() < 1e-4, name
        if name == "full":
            assert (base(ids).logits - ours).abs().max() > 1e-3  # the adapters reached the export
