"""The RL controller: one RL step at a time, against the role protocols only.

    scheduler.next_batch(t) --> [AHRL hints, DAPO refill] --> advantages [WPSM] --> PolicyTrainer.train_step
        --> PolicyTrainer.publish_weights --> Generator.load_weights --> scheduler.end_step

Consumes / waits for / unblocked by, per step:
- next_batch: consumes step t's scored groups, which the rollout mode picks (rl_platform/replay_buffer.py:
  sync | april | urb); waits until they are generated and scored (rl_platform/rollout_scheduler.py); in the
  async modes the engines have been generating them while the learner trained the previous steps; a failed
  sample comes back marked (value None), never as 0;
- train:      consumes the rollouts with their advantages; failed samples are masked out of the loss, groups
  without signal are left out; every sample's fate goes to the ledger (rl_platform/ledger.py);
- sync:       publishes version v+1 to the engines (in-flight requests continue under it, each token recording
  the version that sampled it); sync mode waits until every engine serves it, the async modes do not.
Metrics are returned per step (`area/name` keys) and written by the caller's sink; `reward/*` describe the
step's own prompts as first sampled, before AHRL hints or DAPO refills changed the batch. docs/async_rl.md.
Algorithm stages (each a module, off by default; docs/rl_algorithms.md): AHRL hints all-failed groups
(rl_platform/ahrl.py), DAPO refills the batch with signal-carrying groups (rl_platform/dynamic_sampling.py),
both by extra blocking sampling rounds on the current weights; the advantage estimator is a registered variant
(rl_platform/advantages.py), WPSM down-weights well-learned positive samples (rl_platform/wpsm.py).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from rl_platform.advantages import AdvantageConfig, GRPOAdvantage
from rl_platform.ahrl import AHRL, AHRLConfig, HintFn
from rl_platform.config import check
from rl_platform.dynamic_sampling import DynamicSampler, DynamicSamplingConfig, ResampleFn
from rl_platform.ledger import Ledger
from rl_platform.protocols import Generator, PolicyTrainer, RewardScorer
from rl_platform.replay_buffer import RolloutModeConfig, SyncRolloutConfig
from rl_platform.rollout_scheduler import RolloutScheduler
from rl_platform.types import Completion, Prompt, Rollout
from rl_platform.wpsm import WPSM, WPSMConfig

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class SamplingConfig:
    """How the rollout engines sample."""

    num_samples_per_prompt: int = 8
    """Group size G."""
    max_tokens: int = 48
    """Longest response; longer ones finish with reason 'length'."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    """-1 disables top-k filtering."""
    seed: int = 0
    """Base sampling seed; each sample's seed is a hash of it and the sample's key (SampleKey.seed), so a
    resumed run, a re-issued request or another rollout mode samples the same way on the same weights."""
    ignore_eos: bool = False
    """Always generate max_tokens (benchmarks use it to equalise work)."""

    def __post_init__(self) -> None:
        check(self.num_samples_per_prompt >= 1, "SamplingConfig.num_samples_per_prompt", self.num_samples_per_prompt,
              "must be >= 1", "use 4-16 for training (groups), 1 for evaluation")
        check(self.max_tokens >= 1, "SamplingConfig.max_tokens", self.max_tokens, "must be >= 1", "use 32-1024")
        check(self.temperature >= 0, "SamplingConfig.temperature", self.temperature, "must be >= 0", "use 1.0")


@dataclass(kw_only=True, slots=True)
class ControllerConfig:
    """The loop's shape."""

    num_steps: int = 40
    """RL steps (each: one rollout batch, one or more optimizer steps, one weight sync)."""
    num_prompts_per_step: int = 16
    advantage: AdvantageConfig = field(default_factory=GRPOAdvantage)
    """Group-relative advantage estimator: grpo (std-normalised) | dr_grpo (mean only) | rloo."""
    wpsm: WPSMConfig = field(default_factory=WPSMConfig)
    """Well-learned positive sample mask (ERNIE 5.0), off by default."""
    ahrl: AHRLConfig = field(default_factory=AHRLConfig)
    """Hinted re-sampling of all-failed groups (ERNIE 5.0), off by default."""
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    """DAPO's refill of the batch with signal-carrying groups, off by default."""
    pass_threshold: float = 1.0
    """A sample 'passes' when its reward is >= this (pass-rate metric)."""
    skip_zero_signal_groups: bool = True
    """Leave groups whose rewards are all equal out of the update. Their advantages are 0, so with no KL term
    they add no gradient, only forward/backward work and tokens to the loss's denominator (DAPO's dynamic
    sampling filter, without re-sampling). When kl_coef > 0 they would still pull towards the reference; set
    False to keep them. A step whose every group is flat skips the update (`train/skipped`)."""

    rollout: RolloutModeConfig = field(default_factory=SyncRolloutConfig)
    """How rollouts reach the learner: sync | april | urb (`--set loop.rollout=urb`), docs/async_rl.md."""
    max_staleness: int = 4
    """Versions a trained token may lag the learner; older samples are dropped and regenerated
    (`rollout/stale_dropped`). 4 as TRL's AsyncGRPO; urb with buffer_groups=N lags at most N."""
    auto_resume: int = 0
    """Times the job restarts its roles from the newest checkpoint when the learner fails (dies or raises);
    0 stops the job with the checkpoint's path and the `--resume` command (docs/fault_tolerance.md)."""

    def __post_init__(self) -> None:
        check(self.max_staleness >= 0, "ControllerConfig.max_staleness", self.max_staleness, "must be >= 0",
              "use >= loop.rollout.buffer_groups (4 by default)")
        check(self.auto_resume >= 0, "ControllerConfig.auto_resume", self.auto_resume, "must be >= 0",
              "give the number of restarts to allow (0: stop and print the --resume command)")
        check(self.num_steps >= 1, "ControllerConfig.num_steps", self.num_steps, "must be >= 1", "use e.g. 40")
        check(self.num_prompts_per_step >= 1, "ControllerConfig.num_prompts_per_step", self.num_prompts_per_step,
              "must be >= 1", "use 8-64")

    def check_sampling(self, sampling: SamplingConfig) -> None:
        check(sampling.num_samples_per_prompt >= 2, "sampling.num_samples_per_prompt",
              sampling.num_samples_per_prompt, "must be >= 2 for training (group-relative advantages need a group)",
              "use 4-16")


class Timer:
    """Collects `timing/<phase>` seconds for one step."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"timing/{name}"  # phases that run several times in a step (re-sampling) add up
            self.metrics[key] = self.metrics.get(key, 0.0) + time.perf_counter() - start


class Controller:
    """Runs RL steps; holds no model, only the roles and the rollout scheduler.

    Example:
        controller = Controller(generator, scorer, trainer, prompts.train_batch, ControllerConfig(), sampling)
        for step in range(config.num_steps):
            metrics = controller.run_step(step)
        controller.close()
    """

    def __init__(self, generator: Generator, scorer: RewardScorer, trainer: PolicyTrainer,
                 prompt_batch: Callable[[int, int], list[Prompt]], config: ControllerConfig,
                 sampling: SamplingConfig, policy_version: int = 0,
                 record_rollouts: Callable[[int, list[Rollout]], None] | None = None,
                 hint_prompt: HintFn | None = None, resample_prompts: ResampleFn | None = None,
                 ledger: Ledger | None = None) -> None:
        self.generator = generator
        self.scorer = scorer
        self.trainer = trainer
        self.prompt_batch = prompt_batch
        config.check_sampling(sampling)
        self.config = config
        self.sampling = sampling
        self.policy_version = policy_version
        self.record_rollouts = record_rollouts
        """Called with every step's scored rollouts (sample-level provenance: which reward, which version)."""
        self.scheduler = RolloutScheduler(generator, scorer, prompt_batch, config.rollout, sampling,
                                          config.num_prompts_per_step, config.max_staleness, ledger or Ledger())
        self.ahrl = AHRL(config.ahrl, hint_prompt, config.pass_threshold)
        self.refill = DynamicSampler(config.dynamic_sampling, resample_prompts)
        self.wpsm = WPSM(config.wpsm, config.pass_threshold)

    def run_step(self, step: int) -> dict[str, float]:
        timer, start = Timer(), time.perf_counter()
        G, n = self.sampling.num_samples_per_prompt, self.config.num_prompts_per_step
        with timer.phase("generate"):  # waits for the step's groups; async modes generated them meanwhile
            batch = self.scheduler.next_batch(step, self.policy_version)
        if self.record_rollouts is not None:
            self.record_rollouts(step, batch.rollouts)
        first = [batch.rollouts[i:i + G] for i in range(0, len(batch.rollouts), G)]
        groups, stage_metrics = self.ahrl.apply(step, first, lambda hinted: self._sample(step, hinted, timer))
        drawn = [0]
        groups, refill_metrics = self.refill.fill(groups, n, lambda k: self._refill(step, drawn, k, timer))
        rollouts = [r for group in groups for r in group]
        advantages = self.config.advantage.batch([r.reward.value for r in rollouts], G)
        advantages, wpsm_metrics = self.wpsm.reweight(rollouts, advantages, G)
        stage_metrics.update(refill_metrics | wpsm_metrics)
        train_rows = self._rows_to_train(advantages)
        self.scheduler.consume(batch, {rollouts[i].completion.key for i in train_rows})
        learner_metrics = {"train/rows": float(len(train_rows)), "train/skipped": float(not train_rows)}
        if train_rows:
            with timer.phase("learn"):
                learner_metrics.update(self.trainer.train_step([rollouts[i] for i in train_rows],
                                                               [advantages[i] for i in train_rows]))
            with timer.phase("sync"):
                self.policy_version = self.sync_weights()
        first_advantages = self.config.advantage.batch([r.reward.value for r in batch.rollouts], G)
        metrics = {**rollout_metrics(batch.rollouts, first_advantages, self.config, self.sampling), **batch.metrics,
                   **stage_metrics, **learner_metrics, **timer.metrics, **self.scheduler.end_step(self.policy_version)}
        metrics["perf/step_seconds"] = time.perf_counter() - start
        metrics["perf/learner_busy_frac"] = timer.metrics.get("timing/learn", 0.0) / metrics["perf/step_wall_seconds"]
        metrics["policy/version"] = float(self.policy_version)
        return metrics

    def _sample(self, step: int, prompts: list[Prompt], timer: Timer) -> list[list[Rollout]]:
        """An extra sampling round (AHRL hints, DAPO refill): generates and scores `prompts` on the current weights,
        one group of rollouts per prompt (recorded for provenance)."""
        with timer.phase("generate"):
            groups = self.generator.generate(prompts, self.sampling)
        self._check_versions(groups)
        flat_prompts = [p for p, group in zip(prompts, groups, strict=True) for _ in group]
        flat = [c for group in groups for c in group]
        with timer.phase("score"):
            outcomes = self.scorer.score(flat_prompts, flat)
        rollouts = [Rollout(prompt=p, completion=c, reward=o) for p, c, o in zip(flat_prompts, flat, outcomes,
                                                                                   strict=True)]
        if self.record_rollouts is not None:
            self.record_rollouts(step, rollouts)
        G = self.sampling.num_samples_per_prompt
        return [rollouts[i:i + G] for i in range(0, len(rollouts), G)]

    def _refill(self, step: int, drawn: list[int], count: int, timer: Timer) -> list[list[Rollout]]:
        """The next `count` prompts of the step's re-sample stream (DAPO), generated, scored, hinted like the rest."""
        prompts = self.refill.resample(step, drawn[0], count)
        drawn[0] += count
        groups = self._sample(step, prompts, timer)
        return self.ahrl.apply(step, groups, lambda hinted: self._sample(step, hinted, timer))[0]

    def _rows_to_train(self, advantages: list[float | None]) -> list[int]:
        G = self.sampling.num_samples_per_prompt
        rows = []
        for start in range(0, len(advantages), G):
            if not (self.config.skip_zero_signal_groups and is_flat_group(advantages[start:start + G])):
                rows.extend(range(start, min(start + G, len(advantages))))
        return rows

    def sync_weights(self, wait: bool | None = None) -> int:
        """Publishes the learner's weights to every engine; returns the version. Blocks until the engines serve
        it in sync mode (the next step must be on-policy); the async modes carry on while they load it."""
        weights = self.trainer.publish_weights()  # PolicyWeights, or a Ray handle to them: both carry .version
        self.generator.load_weights(weights, wait=not self.config.rollout.overlap if wait is None else wait)
        return weights.version

    def close(self) -> None:
        """Stops generating: in-flight samples are dropped (and recorded so in the ledger)."""
        self.scheduler.close()

    def _check_versions(self, groups: list[list[Completion]]) -> None:
        versions = {v for group in groups for c in group for v in c.policy_versions}
        if versions - {self.policy_version}:
            raise RuntimeError(f"Controller: completions came from policy versions {sorted(versions)} but the "
                               f"learner is at {self.policy_version}; a weight sync was lost (restart the run with "
                               "--resume) or an engine serves stale weights")


def is_flat_group(advantages: Sequence[float | None]) -> bool:
    """No learning signal: every scored sample of the group has a zero advantage (failed ones have None)."""
    return all(a is None or abs(a) < 1e-8 for a in advantages)


def rollout_metrics(rollouts: list[Rollout], advantages: list[float | None], config: ControllerConfig,
                    sampling: SamplingConfig) -> dict[str, float]:
    values = [r.reward.value for r in rollouts if not r.reward.failed and r.reward.value is not None]
    failed = [r for r in rollouts if r.reward.failed]
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[r.reward.reason or "unknown"] = reasons.get(r.reward.reason or "unknown", 0) + 1
    for reason, count in reasons.items():
        logger.warning("%d samples failed scoring: %s", count, reason)
    lengths = [len(r.completion.token_ids) for r in rollouts]
    G = sampling.num_samples_per_prompt
    flat_groups = 0
    for start in range(0, len(rollouts), G):
        group = advantages[start:start + G]
        flat_groups += any(a is not None for a in group) and is_flat_group(group)
    shadow = [r.reward.shadow_value for r in rollouts if r.reward.shadow_value is not None]
    out = {
        "reward/mean": statistics.fmean(values) if values else float("nan"),
        "reward/std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "reward/pass_rate": sum(v >= config.pass_threshold for v in values) / max(1, len(values)),
        "reward/failed_count": float(len(failed)),
        "reward/zero_signal_group_frac": flat_groups / max(1, len(rollouts) // G),
        "rollout/response_length_mean": statistics.fmean(lengths) if lengths else 0.0,
        "rollout/response_length_max": float(max(lengths, default=0)),
        "rollout/truncated_frac": sum(r.completion.finish_reason == "length" for r in rollouts) / max(1, len(rollouts)),
        # every sampled token of the step, not only the trained ones (policy/entropy): the mean surprisal under
        # the engine estimates the per-token entropy when sampling at temperature 1 (the engine's log-probs are
        # the model's own, so at another temperature it is a cross-entropy)
        "rollout/entropy": -statistics.fmean(lp for r in rollouts for lp in r.completion.generator_logprobs)
        if any(r.completion.generator_logprobs for r in rollouts) else float("nan"),
    }
    if shadow:
        out["reward/shadow_mean"] = statistics.fmean(shadow)
    return out
