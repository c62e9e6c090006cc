"""The DeepSpeed learner in-process with the RL objectives: corrections get the engine's log-probs, the reference
replays the policy's routes, the LR schedule runs, GSPO's gradient ignores the micro-batch split."""

import dataclasses
import math

import pytest
import torch

from rl_platform.config import ConfigError
from rl_platform.learner import Learner, LearnerConfig
from rl_platform.losses import GRPOLossConfig, GSPOLossConfig, MISCLossConfig
from rl_platform.model import MoETransformer
from rl_platform.model.hf_interop import export_hf
from rl_platform.optim.adagc import AdaGCConfig, GlobalNormClipConfig
from rl_platform.optim.optimizer import OptimConfig

# 8 samples whose logprobs and routes come from the policy itself, on a tiny MoE
from tests.integration.test_learner import CONFIG, _rollouts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return export_hf(MoETransformer(CONFIG), tmp_path_factory.mktemp("m") / "policy")


def test_reference_replays_the_policy_routes_so_identical_weights_have_zero_kl(model_dir):
    # The rollout routes are shifted away from what the learner would pick: a reference that routes freely
    # while the policy is forced to these routes sees a different network and a KL above zero.
    learner = Learner(LearnerConfig(routing_replay="R3", loss=GRPOLossConfig(kl_coef=0.1)), str(model_dir))
    metrics = learner.train_on_rollouts(*_rollouts(model_dir, perturb_routes=True))
    assert metrics["moe/route_mismatch"] == pytest.approx(1.0)
    assert metrics["loss/kl_to_ref"] == 0.0


def _optim(**kw) -> OptimConfig:
    return OptimConfig(**{"lr": 1e-3, "weight_decay": 0.0, "clipping": GlobalNormClipConfig(max_norm=1.0), **kw})


def test_the_learning_rate_schedule_and_warmup_are_applied(model_dir):
    config = LearnerConfig(optim=_optim(warmup_steps=2, schedule="cosine", min_lr_ratio=0.1), schedule_steps=4)
    learner = Learner(config, str(model_dir))
    rollouts, advantages = _rollouts(model_dir, perturb_routes=False)
    lrs = [learner.train_on_rollouts(rollouts, advantages)["train/lr"] for _ in range(4)]
    # warm-up 1e-3 * 1/2, 2/2; then cosine from the peak to 1e-4 over the remaining 2 steps
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi / 2))], rel=1e-6)
    with pytest.raises(ConfigError, match="schedule_steps"):
        Learner(LearnerConfig(optim=_optim(schedule="cosine")), str(model_dir))


def test_adagc_warmup_longer_than_the_run_is_rejected_with_the_fix():
    with pytest.raises(ConfigError, match="warmup_steps.*covers all 30 optimizer steps.*3"):
        LearnerConfig(optim=_optim(clipping=AdaGCConfig()), schedule_steps=30)
    LearnerConfig(optim=_optim(clipping=AdaGCConfig(warmup_steps=3)), schedule_steps=30)


def test_gspo_gradient_does_not_depend_on_the_micro_batch_size(model_dir):
    rollouts, advantages = _rollouts(model_dir, perturb_routes=False)
    norms = [Learner(LearnerConfig(loss=GSPOLossConfig(), micro_batch_size=size), str(model_dir))
             .train_on_rollouts(rollouts, advantages)["train/grad_norm"] for size in (8, 2)]
    assert norms[0] > 0
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)  # float32 summation order only


def test_misc_masks_the_tokens_whose_engine_logprob_is_far_off(model_dir):
    rollouts, advantages = _rollouts(model_dir, perturb_routes=False)
    # the engine reported a 10x lower probability for the second token of every sample: rho = 10 > beta = 5
    shifted = []
    for r in rollouts:
        lp = list(r.completion.generator_logprobs)
        lp[1] -= math.log(10.0)
        shifted.append(dataclasses.replace(r, completion=dataclasses.replace(r.completion, generator_logprobs=lp)))
    metrics = Learner(LearnerConfig(loss=MISCLossConfig()), str(model_dir)).train_on_rollouts(shifted, advantages)
    scored = [len(r.completion.token_ids) for r, a in zip(shifted, advantages, strict=True) if a is not None]
    assert metrics["correction/masked_frac"] == pytest.approx(len(scored) / sum(scored), rel=1e-5)
    assert 0.0 < metrics["correction/weight_mean"] < 1.0
