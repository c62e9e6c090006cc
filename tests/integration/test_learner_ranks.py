"""Two learner ranks (real Ray placement group, real DeepSpeed over gloo) give the one-process update.

One fixed batch with engine routes (R3): rows of very different lengths (so the token-balanced shards run
different micro-batch counts and one rank runs filler micro-batches) and a failed row. After one step the
2-rank parameters equal the 1-rank parameters within 1e-5 for ZeRO-1, 2 and 3, and so do the pre-clip gradient
norm (Adam's first step hardly depends on the gradient's scale; the norm does) and the logged metrics.
"""

import numpy as np
import pytest
import torch

from rl_platform.checkpointing import CheckpointError
from rl_platform.distributed import full_parameters
from rl_platform.learner import Learner, LearnerConfig
from rl_platform.model import MoEModelConfig, MoETransformer
from rl_platform.model.hf_interop import export_hf, load_hf
from rl_platform.optim.optimizer import OptimConfig
from rl_platform.types import Completion, Prompt, RewardResult, Rollout

ray = pytest.importorskip("ray")

CONFIG = MoEModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                        num_experts=8, top_k=2, expert_ffn_dim=16, initializer_range=0.2)
LENGTHS = [30, 4, 6, 3, 9, 5, 7, 4, 12, 5]
"""Response lengths: the 30-token row alone outweighs several short ones."""
TOLERANCE = 1e-5


def _config(zero_stage: int, num_ranks: int) -> LearnerConfig:
    # Adam's first step moves each weight by about lr, times g / (|g| + eps): rounding differences in tiny
    # gradients move it by up to ~1e-3 lr, so lr 1e-3 keeps them well inside the tolerance
    optim = OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant", weight_decay=0.0)
    # zero3_persist_below=0: ZeRO-3 partitions even this tiny model's parameters (gathered per forward)
    return LearnerConfig(routing_replay="R3", zero_stage=zero_stage, num_ranks=num_ranks, micro_batch_size=2,
                         optim=optim, zero3_persist_below=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return export_hf(MoETransformer(CONFIG), tmp_path_factory.mktemp("m") / "policy")


@pytest.fixture(scope="module")
def batch(model_dir):
    return make_rollouts(model_dir)


def make_rollouts(model_dir):
    """Rollouts whose engine log-probs and routes come from the policy, routes of every third row shifted."""
    model = load_hf(model_dir)
    g = torch.Generator().manual_seed(7)
    rollouts, advantages = [], []
    for i, length in enumerate(LENGTHS):
        prompt_ids = [1, 5 + i % 3, 7]
        response = torch.randint(4, 64, (length,), generator=g).tolist()
        ids = torch.tensor([prompt_ids + response])
        with torch.no_grad():
            out = model(ids, capture_routes=True)
            logp = torch.log_softmax(model.logits(out.hidden_BSD)[0, :-1], -1)
        lp = logp.gather(1, ids[0, 1:, None])[:, 0][len(prompt_ids) - 1:].tolist()
        routes = out.routes_BSLK[0, :-1].numpy().astype(np.int64)
        if i % 3 == 0:
            routes = (routes + 1) % CONFIG.num_experts
        prompt = Prompt(prompt_id=f"p{i % 3}", text="", token_ids=prompt_ids)
        completion = Completion(prompt_id=prompt.prompt_id, sample_index=i, token_ids=response, text="",
                                generator_logprobs=[v + 0.01 * (i % 2) for v in lp],
                                routed_experts=routes.astype(np.uint8), finish_reason="length",
                                policy_versions=[0] * length)
        reward = float(i % 2)
        rollouts.append(Rollout(prompt=prompt, completion=completion, reward=RewardResult(value=reward, failed=False)))
        advantages.append(None if i == 4 else reward - 0.5 + 0.1 * i)  # row 4 'failed'
    return rollouts, advantages


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _one_rank(model_dir, batch, zero_stage: int):
    learner = Learner(_config(zero_stage, 1), str(model_dir))
    metrics = learner.train_on_rollouts(*batch)
    with full_parameters(learner.model, zero_stage):
        params = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
        published = {n: t.detach().clone() for n, t in learner.policy.checkpoint_tensors()}
    return published, metrics, params


def _group(model_dir, zero_stage: int):
    from actors.cpu_share import CpuShare
    from actors.learner_group import LearnerGroup

    return LearnerGroup(_config(zero_stage, 2), str(model_dir), seed=0, cpu=CpuShare(threads=2), cpus_per_rank=0.5)


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_two_ranks_give_the_one_rank_update(model_dir, batch, ray_instance, zero_stage, tmp_path):
    initial = {n: p.detach().clone() for n, p in load_hf(model_dir).named_parameters()}
    ref_published, ref_metrics, ref_params = _one_rank(model_dir, batch, zero_stage)
    group = _group(model_dir, zero_stage)
    try:
        metrics = group.train_step(*batch)
        rank0, rank1 = group.call_all("trainable_parameters")

        moved = _max_diff(ref_params, initial)
        diff = _max_diff(rank0, ref_params)
        print(f"ZeRO-{zero_stage}: max |2 ranks - 1 rank| = {diff:.3g} (the step moved parameters by up to "
              f"{moved:.3g})")
        assert moved > 5e-4  # the comparison is not between two untouched models
        assert diff <= TOLERANCE
        assert _max_diff(rank0, rank1) == 0.0  # the ranks hold one model
        assert metrics["train/grad_norm"] == pytest.approx(ref_metrics["train/grad_norm"], rel=1e-5)
        for key in ("loss/policy", "loss/clip_frac", "policy/entropy", "train/logprob_abs_diff_mean",
                    "train/kl_train_infer", "moe/route_mismatch", "moe/route_mismatch_during_update"):
            assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-5, abs=1e-7), key
        assert metrics["moe/route_mismatch"] > 0.2  # the shifted routes of every third row are counted

        weights = ray.get(group.publish_weights().ref)  # rank 0's, gathered under ZeRO-3
        assert weights.version == 1
        assert _max_diff({n: torch.as_tensor(t) for n, t in weights.named_tensors()}, ref_published) <= TOLERANCE

        if zero_stage == 2:  # save and resume across ranks; a different rank count is refused
            group.save_checkpoint(str(tmp_path / "ckpt"), {"step": 1})
            state = group.load_checkpoint(str(tmp_path / "ckpt"))
            assert state["learner_step"] == 1
            assert _max_diff(group.call("trainable_parameters"), rank0) == 0.0
            with pytest.raises(CheckpointError, match=r"2 learner rank\(s\).*learner.num_ranks=2"):
                Learner(_config(2, 1), str(model_dir)).load_checkpoint(str(tmp_path / "ckpt"))
    finally:
        group.shutdown()  # frees the placement group for the next stage
