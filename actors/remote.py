"""The only module that touches Ray: starts the role actors and wraps them in typed clients that satisfy
rl_platform.protocols, so the controller never sees a Ray handle.

Rules (Ray's own anti-pattern list): every shard is launched before any result is awaited; weights go
learner -> object store -> rollout actors as an ObjectRef, never through the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

from actors.learner import LearnerWorker
from actors.reward_pool import RewardWorker
from actors.rollout import RolloutEngineConfig, RolloutWorker
from rl_platform.config import check
from rl_platform.learner import LearnerConfig
from rl_platform.types import Completion, PolicyWeights, Prompt, RewardResult, Rollout

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class ActorResources:
    """Logical Ray CPUs per actor; the defaults fit the embedded default on 2 cores, where the synchronous
    loop never runs rollout and learner at the same time."""

    rollout_cpus: float = 0.5
    learner_cpus: float = 0.5
    reward_cpus: float = 0.1
    num_reward_workers: int = 2

    def __post_init__(self) -> None:
        check(self.num_reward_workers >= 1, "ActorResources.num_reward_workers", self.num_reward_workers,
              "must be >= 1", "use 1-4")


@dataclass(frozen=True)
class PolicyWeightsHandle:
    """A published policy living in Ray's object store (the driver only learns its version)."""

    version: int
    ref: Any


def _shards(n: int, num_shards: int) -> list[slice]:
    size = -(-n // num_shards)
    return [slice(i, min(n, i + size)) for i in range(0, n, size)] or [slice(0, 0)]


class RemoteGenerator:
    """Generator client over N rollout actors; prompts are split into contiguous shards."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles

    def generate(self, prompts: Sequence[Prompt], sampling: Any) -> list[list[Completion]]:
        shards = _shards(len(prompts), len(self.handles))
        refs = [h.generate.remote(list(prompts[s]), sampling) for h, s in zip(self.handles, shards, strict=False)]
        return [group for part in ray.get(refs) for group in part]

    def load_weights(self, weights: PolicyWeights | PolicyWeightsHandle) -> float:
        ref = weights.ref if isinstance(weights, PolicyWeightsHandle) else ray.put(weights)
        return max(ray.get([h.load_weights.remote(ref) for h in self.handles]))


class RemoteRewardPool:
    """RewardScorer client over a pool of reward actors."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[RewardResult]:
        shards = _shards(len(completions), len(self.handles))
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
        ref = self.handle.publish_weights.remote()
        version = ray.get(self.handle.current_version.remote())
        return PolicyWeightsHandle(version=version, ref=ref)

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
                resources: ActorResources, seed: int) -> tuple[RemoteGenerator, RemoteRewardPool, RemoteTrainer]:
    """Starts every actor (all constructors run concurrently) and returns the typed clients."""
    rollout_cls = ray.remote(num_cpus=resources.rollout_cpus)(RolloutWorker)
    reward_cls = ray.remote(num_cpus=resources.reward_cpus)(RewardWorker)
    learner_cls = ray.remote(num_cpus=resources.learner_cpus)(_VersionedLearner)
    rollouts = [rollout_cls.remote(rollout, model_path, seed, i) for i in range(rollout.num_workers)]
    rewards = [reward_cls.remote(reward_config, i) for i in range(resources.num_reward_workers)]
    trainer = learner_cls.remote(learner, model_path, seed)
    ray.get([h.policy_version.remote() for h in rollouts] + [h.__ray_ready__.remote() for h in rewards]
            + [trainer.current_version.remote()])
    return RemoteGenerator(rollouts), RemoteRewardPool(rewards), RemoteTrainer(trainer)


class _VersionedLearner(LearnerWorker):
    def current_version(self) -> int:
        return self.learner.version
