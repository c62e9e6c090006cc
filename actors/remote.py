"""The only module that touches Ray: starts the role actors and wraps them in typed clients that satisfy
rl_platform.protocols, so the controller never sees a Ray handle.

Rules (Ray's own anti-pattern list): every shard is launched before any result is awaited; weights go
learner -> object store -> rollout actors as an ObjectRef, never through the driver.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import ray

from actors.cpu_share import CpuShare
from actors.learner import LearnerWorker
from actors.reward_pool import RewardWorker
from actors.rollout import RolloutEngineConfig, RolloutWorker
from rl_platform.config import check
from rl_platform.learner import LearnerConfig
from rl_platform.types import (
    Completion,
    GeneratorPoll,
    PolicyWeights,
    Prompt,
    RewardResult,
    Rollout,
    SampleKey,
    SampleRequest,
)

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class ActorResources:
    """Logical Ray CPUs per actor and how the machine's cores are split between the engine and the learner."""

    rollout_cpus: float = 0.5
    learner_cpus: float = 0.5
    reward_cpus: float = 0.1
    num_reward_workers: int = 2
    cpu_split: Literal["auto", "shared", "split"] = "auto"
    """shared: every role uses every core (right when they take turns, as in sync); split: the rollout actors
    are pinned to a `rollout_core_share` of the cores and the learner to the rest, one torch thread per core
    (right when they run at the same time); auto: split when the rollout mode overlaps generation with
    training (docs/async_rl.md, "CPU split"). Each actor splits the cores of its own machine; when both roles
    run on one machine the two sides are disjoint."""
    rollout_core_share: float = 0.5
    """Fraction of the cores the rollout actors get under a split (the learner gets the rest)."""

    def __post_init__(self) -> None:
        check(self.num_reward_workers >= 1, "ActorResources.num_reward_workers", self.num_reward_workers,
              "must be >= 1", "use 1-4")
        check(0.0 < self.rollout_core_share < 1.0, "ActorResources.rollout_core_share", self.rollout_core_share,
              "must be in (0, 1)", "use 0.5")

    def shares(self, overlap: bool, threads: int) -> tuple[CpuShare, CpuShare]:
        """(rollout, learner) CPU shares for a loop that does (overlap) or does not overlap the two roles; each
        actor resolves its share against the cores of its own machine."""
        if self.cpu_split == "split" or (self.cpu_split == "auto" and overlap):
            return (CpuShare(role="rollout", rollout_share=self.rollout_core_share),
                    CpuShare(role="learner", rollout_share=self.rollout_core_share))
        return CpuShare(threads=threads), CpuShare(threads=threads)


@dataclass(frozen=True)
class PolicyWeightsHandle:
    """A published policy living in Ray's object store (the driver only learns its version)."""

    version: int
    ref: Any


def _shards(n: int, num_shards: int) -> list[slice]:
    size = -(-n // num_shards)
    return [slice(i, min(n, i + size)) for i in range(0, n, size)] or [slice(0, 0)]


class RemoteGenerator:
    """Generator client over N rollout actors. Every engine always has one long poll outstanding, so a
    poll returns as soon as any engine finishes a sample; submits are not awaited (their errors surface at
    the next poll)."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles
        self.num_engines = len(handles)
        self._polls: dict[Any, int] = {}
        """Outstanding poll ObjectRef -> engine index."""
        self._busy = [0.0] * len(handles)
        self._clocks = [0.0] * len(handles)
        self._versions = [0] * len(handles)
        self._submits: list[Any] = []
        self._loads: dict[Any, tuple[int, int]] = {}
        """Weight updates not awaited yet: ObjectRef -> (engine, version)."""

    def submit(self, engine: int, requests: Sequence[SampleRequest], sampling: Any) -> None:
        if requests:
            self._submits.append(self.handles[engine].submit.remote(list(requests), sampling))

    def abort(self, engine: int, keys: Sequence[SampleKey]) -> None:
        if keys:
            ray.get(self.handles[engine].abort.remote(list(keys)))

    def poll(self, max_wait_s: float) -> GeneratorPoll:
        if self._submits:
            done, self._submits = ray.wait(self._submits, num_returns=len(self._submits), timeout=0)
            ray.get(done)  # raises the error of a failed submit
        self._collect_loads(timeout=0)
        waiting = set(self._polls.values())
        for engine, handle in enumerate(self.handles):
            if engine not in waiting:
                self._polls[handle.poll.remote(max_wait_s)] = engine
        ready, _ = ray.wait(list(self._polls), num_returns=1, timeout=max_wait_s)
        if ready:  # take whatever else is ready too
            ready, _ = ray.wait(list(self._polls), num_returns=len(self._polls), timeout=0)
        completions = []
        for ref in ready:
            engine = self._polls.pop(ref)
            result: GeneratorPoll = ray.get(ref)
            completions += result.completions
            self._busy[engine], self._clocks[engine] = result.busy_seconds[0], result.clock_seconds[0]
            self._versions[engine] = max(self._versions[engine], result.versions[0])
        return GeneratorPoll(completions=completions, busy_seconds=list(self._busy), clock_seconds=list(self._clocks),
                             versions=list(self._versions))

    def generate(self, prompts: Sequence[Prompt], sampling: Any) -> list[list[Completion]]:
        self._collect_loads(timeout=None)  # the batch must run on the newest weights
        shards = _shards(len(prompts), len(self.handles))
        refs = [h.generate.remote(list(prompts[s]), sampling) for h, s in zip(self.handles, shards, strict=False)]
        return [group for part in ray.get(refs) for group in part]

    def load_weights(self, weights: PolicyWeights | PolicyWeightsHandle, wait: bool = True) -> float:
        ref = weights.ref if isinstance(weights, PolicyWeightsHandle) else ray.put(weights)
        refs = [h.load_weights.remote(ref) for h in self.handles]
        self._loads.update((r, (engine, weights.version)) for engine, r in enumerate(refs))
        return self._collect_loads(timeout=None) if wait else 0.0

    def _collect_loads(self, timeout: float | None) -> float:
        """Takes the finished weight updates (all of them when timeout is None); returns their longest seconds."""
        if not self._loads:
            return 0.0
        done, _ = ray.wait(list(self._loads), num_returns=len(self._loads), timeout=timeout)
        seconds = 0.0
        for ref in done:
            engine, version = self._loads.pop(ref)
            seconds = max(seconds, ray.get(ref))  # raises the error of a failed update
            self._versions[engine] = max(self._versions[engine], version)
        return seconds


class RemoteRewardPool:
    """RewardScorer client over a pool of reward actors."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[RewardResult]:
        shards = _shards(len(completions), len(self.handles))
        completions = [dataclasses.replace(c, routed_experts=None) for c in completions]  # scorers never read routes
        refs = [h.score.remote(list(prompts[s]), list(completions[s]))
                for h, s in zip(self.handles, shards, strict=False)]
        return [o for part in ray.get(refs) for o in part]


class RemoteTrainer:
    """PolicyTrainer client over the learner actor."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def train_step(self, rollouts: Sequence[Rollout], advantages: Sequence[float | None]) -> dict[str, float]:
        return ray.get(self.handle.train_step.remote(list(rollouts), list(advantages)))

    def publish_weights(self) -> PolicyWeightsHandle:
        # one call: the version comes back to the driver, the weights stay in the object store
        version_ref, weights_ref = self.handle.publish.options(num_returns=2).remote()
        return PolicyWeightsHandle(version=ray.get(version_ref), ref=weights_ref)

    def save_checkpoint(self, path: str, client_state: dict) -> None:
        ray.get(self.handle.save_checkpoint.remote(path, client_state))

    def load_checkpoint(self, path: str) -> dict:
        return ray.get(self.handle.load_checkpoint.remote(path))

    def export(self, path: str) -> str:
        return ray.get(self.handle.export.remote(path))

    def call(self, method: str, *args: Any) -> Any:
        """Test and report hooks (trainable_parameters, teacher_forced_logprobs)."""
        return ray.get(getattr(self.handle, method).remote(*args))


def start_roles(*, model_path: str, rollout: RolloutEngineConfig, learner: LearnerConfig, reward_config: Any,
                resources: ActorResources, seed: int,
                overlap: bool = False) -> tuple[RemoteGenerator, RemoteRewardPool, Any]:
    """Starts every actor (all constructors run concurrently) and returns the typed clients. `overlap`: the
    rollout mode generates while the learner trains (decides the CPU split under cpu_split=auto)."""
    rollout_share, learner_share = resources.shares(overlap, threads=rollout.num_threads)
    # threaded: a long poll must not hold back submit / abort / load_weights
    rollout_cls = ray.remote(num_cpus=resources.rollout_cpus, max_concurrency=8)(RolloutWorker)
    reward_cls = ray.remote(num_cpus=resources.reward_cpus)(RewardWorker)
    learner_cls = ray.remote(num_cpus=resources.learner_cpus)(_VersionedLearner)
    rollouts = [rollout_cls.remote(rollout, model_path, seed, i, rollout_share) for i in range(rollout.num_workers)]
    rewards = [reward_cls.remote(reward_config, i) for i in range(resources.num_reward_workers)]
    waits = [h.policy_version.remote() for h in rollouts] + [h.__ray_ready__.remote() for h in rewards]
    if learner.num_ranks > 1:  # a placement group of ranks (docs/scale_out.md); built while the engines start
        from actors.learner_group import LearnerGroup  # it imports this module

        trainer_client = LearnerGroup(learner, model_path, seed, learner_share, resources.learner_cpus)
    else:
        trainer = learner_cls.remote(learner, model_path, seed, learner_share)
        waits.append(trainer.current_version.remote())
        trainer_client = RemoteTrainer(trainer)
    ray.get(waits)
    logger.info("CPU shares: rollout %s, learner %s", rollout_share, learner_share)
    return RemoteGenerator(rollouts), RemoteRewardPool(rewards), trainer_client


class _VersionedLearner(LearnerWorker):
    def current_version(self) -> int:
        return self.learner.version

    def publish(self) -> tuple[int, PolicyWeights]:
        weights = self.learner.publish_weights()
        return weights.version, weights
