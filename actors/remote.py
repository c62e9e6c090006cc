"""The only module that touches Ray: starts the role actors and wraps them in typed clients that satisfy
rl_platform.protocols, so the controller never sees a Ray handle.

Rules (Ray's own anti-pattern list): every shard is launched before any result is awaited; weights go
learner -> object store -> rollout actors as an ObjectRef, never through the driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import ray

from actors.cpu_share import CpuShare
from actors.learner import LearnerWorker
from actors.reward_pool import RewardWorker
from actors.rollout import RolloutEngineConfig, RolloutWorker
from actors.supervisor import CallBook, SupervisedRewardPool, process_ids, restart_actor
from rl_platform.config import check
from rl_platform.learner import LearnerConfig
from rl_platform.supervision import EngineFault, EngineLost, EngineSupervisor, LossReason, SupervisionConfig
from rl_platform.types import (
    Completion,
    GeneratorPoll,
    PolicyWeights,
    Prompt,
    Rollout,
    SampleKey,
    SampleRequest,
)

logger = logging.getLogger(__name__)

PING_S = 2.0
"""How often each engine's thread is asked to answer (hang detection between submits)."""


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
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    """Deadlines and restarts of the rollout and reward actors (docs/fault_tolerance.md, "Actor faults")."""

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
    the next poll). Every call is tracked with a deadline (actors/supervisor.py): a failed call or one past its
    deadline marks the engine lost (`take_lost`), and the EngineSupervisor replaces it."""

    def __init__(self, handles: list[Any], supervision: SupervisionConfig | None = None) -> None:
        self.handles = handles
        self.num_engines = len(handles)
        self.supervision = supervision or SupervisionConfig()
        self.book = CallBook(self.supervision.call_deadline_s)
        self._busy = [0.0] * len(handles)
        self._clocks = [0.0] * len(handles)
        self._versions = [0] * len(handles)
        self._last_ping = [0.0] * len(handles)
        self._busy_before = [0.0] * len(handles)
        """Busy seconds of an engine's earlier processes (its busy time stays cumulative across restarts)."""
        self.pids = process_ids(handles)

    def _live(self) -> list[int]:
        return [e for e in range(self.num_engines) if e not in self.book.down]

    def submit(self, engine: int, requests: Sequence[SampleRequest], sampling: Any) -> None:
        if requests and engine not in self.book.down:  # a lost engine's work is re-issued by the supervisor
            self.book.track(self.handles[engine].submit.remote(list(requests), sampling), engine, "submit")

    def abort(self, engine: int, keys: Sequence[SampleKey]) -> None:
        if keys and engine not in self.book.down:
            ref = self.book.track(self.handles[engine].abort.remote(list(keys)), engine, "abort")
            ray.wait([ref], timeout=self.book.deadline_s)
            if ref in self.book.calls:
                self.book.get(ref)
            self.book.check_deadlines()

    def poll(self, max_wait_s: float) -> GeneratorPoll:
        self._collect(timeout=0)
        waiting = {c.actor for c in self.book.calls.values() if c.kind == "poll"}
        for engine in self._live():
            if engine not in waiting:
                self.book.track(self.handles[engine].poll.remote(max_wait_s), engine, "poll", wait_s=max_wait_s)
        self._ping()
        polls = self.book.of_kind("poll")
        ready, _ = ray.wait(polls, num_returns=1, timeout=max_wait_s) if polls else ([], [])
        if ready:  # take whatever else is ready too
            ready, _ = ray.wait(polls, num_returns=len(polls), timeout=0)
        completions = []
        for ref in ready:
            if ref not in self.book.calls:  # its engine was lost meanwhile
                continue
            call, result, ok = self.book.get(ref)
            if not ok:
                continue
            completions += result.completions
            engine = call.actor
            self._busy[engine] = self._busy_before[engine] + result.busy_seconds[0]
            self._clocks[engine] = result.clock_seconds[0]
            self._versions[engine] = max(self._versions[engine], result.versions[0])
        self.book.check_deadlines()
        return GeneratorPoll(completions=completions, busy_seconds=list(self._busy), clock_seconds=list(self._clocks),
                             versions=list(self._versions))

    def _ping(self) -> None:
        """A poll does not need the engine thread; a ping does, so a stuck engine misses the ping's deadline."""
        pinged = {c.actor for c in self.book.calls.values() if c.kind == "ping"}
        now = time.monotonic()
        for engine in self._live():
            if engine not in pinged and now - self._last_ping[engine] >= PING_S:
                self._last_ping[engine] = now
                self.book.track(self.handles[engine].ping.remote(), engine, "ping")

    def generate(self, prompts: Sequence[Prompt], sampling: Any) -> list[list[Completion]]:
        self._collect(timeout=None)  # the batch must run on the newest weights
        live = self._live()
        shards = _shards(len(prompts), len(live))
        # a large batch may take long: its engines are watched through pings, not through the batch's duration
        refs = [self.book.track(self.handles[e].generate.remote(list(prompts[s]), sampling), e, "generate",
                                wait_s=float("inf")) for e, s in zip(live, shards, strict=False)]
        while not self.book.lost:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PING_S)
            if len(ready) == len(refs):
                break
            self._ping()
            self._collect(timeout=0)
        parts = [self.book.get(ref) for ref in refs if ref in self.book.calls]
        if self.book.lost:
            raise EngineFault(next(iter(self.book.lost.values())))
        return [group for _, part, _ in parts for group in part]

    def load_weights(self, weights: PolicyWeights | PolicyWeightsHandle, wait: bool = True) -> float:
        ref = weights.ref if isinstance(weights, PolicyWeightsHandle) else ray.put(weights)
        for engine in self._live():
            self.book.track(self.handles[engine].load_weights.remote(ref), engine, "load", version=weights.version)
        return self._collect(timeout=None) if wait else 0.0

    def _collect(self, timeout: float | None) -> float:
        """Takes finished submits and weight updates (every update when timeout is None, up to the deadline);
        returns the longest update's seconds."""
        refs = [r for r, c in self.book.calls.items() if c.kind in ("submit", "load", "ping")]
        if timeout is None:
            loads = self.book.of_kind("load")
            ray.wait(loads, num_returns=len(loads), timeout=self.book.deadline_s)
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
        seconds = 0.0
        for ref in done:
            if ref not in self.book.calls:
                continue
            call, result, ok = self.book.get(ref)
            if ok and call.kind == "load":
                seconds = max(seconds, result)
                self._versions[call.actor] = max(self._versions[call.actor], call.version)
        self.book.check_deadlines()
        return seconds

    # ------------------------------------------------------------------ EngineFleet (rl_platform/supervision.py)
    def take_lost(self) -> list[EngineLost]:
        return self.book.take_lost()

    def restart_engine(self, engine: int, reason: LossReason) -> None:
        self.pids[engine] = restart_actor(self.handles[engine], reason, self.pids[engine],
                                          self.supervision.restart_timeout_s, ready_method="ping")
        self.book.down.discard(engine)
        self._versions[engine] = 0  # a new process serves the base model until load_engine
        self._busy_before[engine] = self._busy[engine]

    def load_engine(self, engine: int, weights: PolicyWeights | PolicyWeightsHandle) -> None:
        ref = weights.ref if isinstance(weights, PolicyWeightsHandle) else ray.put(weights)
        ray.get(self.handles[engine].load_weights.remote(ref), timeout=self.supervision.restart_timeout_s)
        self._versions[engine] = weights.version


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
                overlap: bool = False) -> tuple[EngineSupervisor, SupervisedRewardPool, Any]:
    """Starts every actor (all constructors run concurrently) and returns the typed clients. `overlap`: the
    rollout mode generates while the learner trains (decides the CPU split under cpu_split=auto). The rollout
    client is supervised: a job attaches its scheduler (`generator.attach(scheduler)`) so that the work of a
    lost engine is re-issued."""
    rollout_share, learner_share = resources.shares(overlap, threads=rollout.num_threads)
    # threaded: a long poll must not hold back submit / abort / load_weights
    # restartable (a dead or killed-when-hung actor comes back as a fresh process); a call is never retried by
    # Ray: the supervisor re-issues the work, so nothing runs twice unseen
    sup = resources.supervision
    rollout_cls = ray.remote(num_cpus=resources.rollout_cpus, max_concurrency=8, max_restarts=sup.max_restarts,
                             max_task_retries=0)(RolloutWorker)
    reward_cls = ray.remote(num_cpus=resources.reward_cpus, max_restarts=sup.max_restarts,
                            max_task_retries=0)(RewardWorker)
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
    return (EngineSupervisor(RemoteGenerator(rollouts, sup), sup), SupervisedRewardPool(rewards, sup),
            trainer_client)


class _VersionedLearner(LearnerWorker):
    def current_version(self) -> int:
        return self.learner.version

    def publish(self) -> tuple[int, PolicyWeights]:
        weights = self.learner.publish_weights()
        return weights.version, weights
