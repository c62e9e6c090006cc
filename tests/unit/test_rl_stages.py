"""Advantage estimators, WPSM, AHRL, DAPO dynamic sampling and the hinted prompts, on hand-made groups; and the
controller running them against the in-process fakes."""

import dataclasses
import math

import pytest

from rl_platform.advantages import DrGRPOAdvantage, GRPOAdvantage, RLOOAdvantage, group_advantages
from rl_platform.ahrl import AHRL, AHRLConfig
from rl_platform.config import ConfigError, apply_overrides
from rl_platform.controller import Controller, ControllerConfig, SamplingConfig
from rl_platform.dynamic_sampling import DynamicSampler, DynamicSamplingConfig, has_signal
from rl_platform.tasks.hints import hinted_prompt
from rl_platform.types import Completion, Prompt, RewardResult, Rollout
from rl_platform.wpsm import WPSM, WPSMConfig, response_entropy
from tests.fakes import FakeGenerator, FakeScorer, FakeTrainer, prompts, resample_prompts


def _rollout(text: str, reward: float | None, logprobs=(-0.5, -0.5), index: int = 0, prompt_id: str = "p") -> Rollout:
    prompt = Prompt(prompt_id=prompt_id, text=text, token_ids=[1, 2],
                    metadata={"answer": 2, "solution": " 1+1=2; so 2\n#### 2"})
    completion = Completion(prompt_id=prompt_id, sample_index=index, token_ids=[5] * len(logprobs), text="",
                            generator_logprobs=list(logprobs), routed_experts=None, finish_reason="stop",
                            policy_versions=[0] * len(logprobs))
    result = (RewardResult(value=None, failed=True, reason="boom") if reward is None
              else RewardResult(value=reward, failed=False))
    return Rollout(prompt=prompt, completion=completion, reward=result)


def test_advantage_estimators_by_hand():
    rewards = [1.0, 0.0, 0.0, 1.0, None]
    assert GRPOAdvantage().group(rewards) == pytest.approx([1.0, -1.0, -1.0, 1.0, None], abs=1e-5)
    assert DrGRPOAdvantage().group(rewards) == [0.5, -0.5, -0.5, 0.5, None]
    # leave-one-out: 1 - mean(0, 0, 1) = 2/3; 0 - mean(0, 1, 1) = -2/3
    assert RLOOAdvantage().group(rewards) == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, None])
    assert RLOOAdvantage().group([1.0, None]) == [0.0, None]
    assert group_advantages([0.5, 0.5]) == [0.0, 0.0] and group_advantages([None, None]) == [None, None]
    assert GRPOAdvantage().batch([1.0, 0.0, 2.0, 2.0], 2) == pytest.approx([1.0, -1.0, 0.0, 0.0], abs=1e-5)
    config = apply_overrides(ControllerConfig(), ["advantage=rloo"])
    assert isinstance(config.advantage, RLOOAdvantage)


def test_wpsm_masks_confident_passing_responses_of_well_learned_queries():
    # acc = 3/4 > tau 0.5. Entropy estimates: 0.05 (well learned), 0.05, 1.0 (uncertain), and a failure.
    group = [_rollout("q", 1.0, (-0.05, -0.05)), _rollout("q", 1.0, (-0.1, 0.0)), _rollout("q", 1.0, (-1.0, -1.0)),
             _rollout("q", 0.0, (-0.05, -0.05))]
    assert response_entropy(group[2]) == pytest.approx(1.0)
    advantages = GRPOAdvantage().group([r.reward.value for r in group])
    wpsm = WPSM(WPSMConfig(enabled=True, tau=0.5, eta=0.2, alpha=0.75), pass_threshold=1.0)
    out, metrics = wpsm.reweight(group, advantages, num_samples_per_prompt=4)
    assert out[0] == pytest.approx(0.25 * advantages[0]) and out[1] == pytest.approx(0.25 * advantages[1])
    assert out[2] == advantages[2] and out[3] == advantages[3]  # uncertain pass / failure: untouched
    assert metrics == {"wpsm/well_learned_frac": 0.5, "wpsm/well_learned_query_frac": 1.0}


def test_wpsm_running_success_rate_and_off_switch():
    wpsm = WPSM(WPSMConfig(enabled=True, tau=0.5, momentum=0.5), pass_threshold=1.0)
    assert wpsm.observe([_rollout("q", 1.0)] * 4) == 1.0
    assert wpsm.observe([_rollout("q", 0.0)] * 4) == 0.5  # 0.5 * 1 + 0.5 * 0
    group = [_rollout("q", 1.0, (-0.01,)), _rollout("q", 0.0), _rollout("q", 0.0), _rollout("q", 0.0)]
    out, _ = wpsm.reweight(group, [1.0, -1.0, -1.0, -1.0], 4)
    assert out[0] == 1.0  # acc = 0.5 * 0.5 + 0.5 * 0.25 = 0.375 <= tau: not well learned
    off, metrics = WPSM(WPSMConfig(), 1.0).reweight(group, [1.0, -1.0, -1.0, -1.0], 4)
    assert off == [1.0, -1.0, -1.0, -1.0] and metrics == {}
    with pytest.raises(ConfigError, match="alpha"):
        WPSMConfig(alpha=1.5)


def test_ahrl_schedule_by_hand():
    config = AHRLConfig(p_initial=0.5, gamma=0.1)
    assert config.hint_fraction(0, 0.8) == 0.5
    assert config.hint_fraction(10, 0.0) == 0.5  # never solved initially: the hint does not decay
    assert config.hint_fraction(10, 0.25) == pytest.approx(0.5 * math.exp(-0.25))


def _hint(prompt: Prompt, fraction: float) -> Prompt:
    return dataclasses.replace(prompt, prompt_id=prompt.prompt_id + "+hint", text=prompt.text + "H",
                               metadata={**prompt.metadata, "hint_tokens": 3})


def test_ahrl_replaces_only_all_failed_groups_by_hinted_regenerations():
    solved = [_rollout("easy", 1.0), _rollout("easy", 0.0)]
    failed = [_rollout("hard", 0.0, prompt_id="h"), _rollout("hard", 0.0, prompt_id="h")]
    unscored = [_rollout("broken", None), _rollout("broken", None)]
    asked = []

    def regenerate(hinted):
        asked.extend(hinted)
        return [[_rollout(p.text, 1.0), _rollout(p.text, 0.0)] for p in hinted]

    ahrl = AHRL(AHRLConfig(enabled=True, p_initial=0.5), _hint, pass_threshold=1.0)
    groups, metrics = ahrl.apply(3, [solved, failed, unscored], regenerate)
    assert [p.prompt_id for p in asked] == ["h+hint"]
    assert groups[0] is solved and groups[2] is unscored and groups[1][0].prompt.text == "hardH"
    assert metrics["ahrl/hinted_frac"] == pytest.approx(1 / 3) and metrics["ahrl/hint_tokens_mean"] == 3.0
    assert metrics["ahrl/hinted_pass_rate"] == 0.5 and metrics["ahrl/hinted_signal_frac"] == 1.0
    assert ahrl.pass_initial == {"easy": 0.5, "hard": 0.0}


def test_ahrl_uses_a_measured_initial_pass_rate_and_stops_below_min_fraction():
    prompt_group = [_rollout("q", 0.0), _rollout("q", 0.0)]
    measured = [dataclasses.replace(r, prompt=dataclasses.replace(r.prompt, metadata={"pass_initial": 1.0}))
                for r in prompt_group]
    ahrl = AHRL(AHRLConfig(enabled=True, p_initial=0.5, gamma=0.1, min_fraction=0.1), _hint, pass_threshold=1.0)
    # p = 0.5 * exp(-0.1 * 20 * 1.0) = 0.068 < min_fraction: no hint
    groups, metrics = ahrl.apply(20, [measured], lambda hinted: pytest.fail("nothing should be regenerated"))
    assert groups == [measured] and metrics["ahrl/hinted_frac"] == 0.0
    with pytest.raises(ValueError, match="with_hint"):
        AHRL(AHRLConfig(enabled=True), None, 1.0)


def test_hinted_prompt_reveals_whole_tokens_of_the_working_never_the_answer():
    class CharTokenizer:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    prompt = Prompt(prompt_id="train/0.1", text="Q: 12+34=?\nA:", token_ids=[1, 7],
                    metadata={"answer": 46, "solution": " 2+4=6; 1+3=4; so 46\n#### 46"})
    half = hinted_prompt(prompt, 0.5, CharTokenizer())  # working ' 2+4=6; 1+3=4' has 13 characters
    assert half.text == "Q: 12+34=?\nA: 2+4=6;" and half.token_ids == [1, 7, *map(ord, " 2+4=6;")]
    assert half.prompt_id == "train/0.1+hint" and half.metadata["hint_tokens"] == 7
    full = hinted_prompt(prompt, 1.0, CharTokenizer())
    assert full.text.endswith("1+3=4") and "so" not in full.text[len(prompt.text):]
    with pytest.raises(ValueError, match="solution"):
        hinted_prompt(dataclasses.replace(prompt, metadata={}), 0.5, CharTokenizer())


def test_dynamic_sampling_refills_with_signal_groups_within_the_round_budget():
    flat = [_rollout("f", 0.0), _rollout("f", 0.0)]
    signal = [_rollout("s", 1.0), _rollout("s", 0.0)]
    assert has_signal(signal) and not has_signal(flat) and not has_signal([_rollout("x", None), _rollout("x", 1.0)])
    calls = []

    def more(k):
        calls.append(k)
        return [flat] * (k - 1) + [signal]  # one useful group per round

    sampler = DynamicSampler(DynamicSamplingConfig(enabled=True, max_rounds=2, oversample=1.0), resample_prompts)
    groups, metrics = sampler.fill([signal, flat, flat, flat], target=4, sample_more=more)
    assert calls == [3, 2] and len(groups) == 3 and all(has_signal(g) for g in groups)
    assert metrics == {"dapo/resample_rounds": 2.0, "dapo/generated_groups": 9.0, "dapo/short_groups": 1.0}
    enough, metrics = sampler.fill([signal, signal], target=1, sample_more=lambda k: pytest.fail("no refill"))
    assert len(enough) == 1 and metrics["dapo/resample_rounds"] == 0.0


def _controller(flat_prompts, **loop):
    gen, scorer, trainer = FakeGenerator(), FakeScorer(frozenset(flat_prompts)), FakeTrainer()
    ctrl = Controller(gen, scorer, trainer, prompts, ControllerConfig(num_prompts_per_step=3, **loop),
                      SamplingConfig(num_samples_per_prompt=4, seed=100), hint_prompt=_hint,
                      resample_prompts=resample_prompts)
    return ctrl, trainer


def test_controller_trains_on_hinted_groups_and_reports_the_unhinted_reward():
    ctrl, trainer = _controller({"train/0.1"}, ahrl=AHRLConfig(enabled=True))
    metrics = ctrl.run_step(0)
    rollouts, _ = trainer.seen[0]
    assert [r.prompt.prompt_id for r in rollouts[4:8]] == ["train/0.1+hint"] * 4
    assert metrics["ahrl/hinted_frac"] == pytest.approx(1 / 3)
    assert metrics["reward/zero_signal_group_frac"] == pytest.approx(1 / 3)  # as first sampled


def test_controller_refills_flat_groups_from_the_step_resample_stream():
    ctrl, trainer = _controller({"train/0.0", "train/0.1", "train/0.r0"},
                                dynamic_sampling=DynamicSamplingConfig(enabled=True, max_rounds=3))
    metrics = ctrl.run_step(0)
    rollouts, _ = trainer.seen[0]
    ids = [r.prompt.prompt_id for r in rollouts[::4]]
    # 2 missing groups * 1.5 = 3 new prompts (r0 flat), then 1 missing * 1.5 = 2 more: the stream continues at r3
    assert ids == ["train/0.2", "train/0.r1", "train/0.r2"]
    assert metrics["dapo/resample_rounds"] == 1.0 and metrics["dapo/generated_groups"] == 6.0
    ctrl, trainer = _controller({"train/1.0", "train/1.1", "train/1.r0", "train/1.r1"},
                                dynamic_sampling=DynamicSamplingConfig(enabled=True, max_rounds=3))
    ctrl.scheduler.resume(1, None)  # a controller that starts at step 1, as a resumed run does
    metrics = ctrl.run_step(1)
    ids = [r.prompt.prompt_id for r in trainer.seen[0][0][::4]]
    assert ids == ["train/1.2", "train/1.r2", "train/1.r3"]
    assert metrics["dapo/resample_rounds"] == 2.0 and metrics["dapo/generated_groups"] == 3 + 3 + 2


def test_dynamic_sampling_without_a_resample_stream_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="resample_batch.*dynamic_sampling.enabled=false"):
        Controller(FakeGenerator(), FakeScorer(), FakeTrainer(), prompts,
                   ControllerConfig(dynamic_sampling=DynamicSamplingConfig(enabled=True)), SamplingConfig())


def test_controller_wpsm_reweights_before_the_update():
    ctrl, trainer = _controller(set(), wpsm=WPSMConfig(enabled=True, tau=0.0, eta=1.0))
    metrics = ctrl.run_step(0)
    rollouts, advantages = trainer.seen[0]
    # the fake's passing sample (index 1) has surprisal 0.3 < eta and its query succeeds 1/3 > tau 0
    assert advantages[1] == 0.0 and metrics["wpsm/well_learned_frac"] == pytest.approx(3 / 9)
