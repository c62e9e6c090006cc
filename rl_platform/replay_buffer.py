"""Which scored groups each step trains on: the rollout modes `sync | april | urb` and the buffer that holds
groups between generation and training (docs/async_rl.md, "Rollout modes").

Vocabulary (ERNIE 5.0's U-RB, arXiv:2602.04705; Omega = prompts per step, N = buffer_groups):
- the *pool* holds every admitted group that has not been trained yet: generating, being scored, or finished
  and waiting in the buffer; it admits groups in dataset order up to its capacity;
- a group's samples are generated, scored and stored in its GroupRecord; a group is *done* when all of its
  samples are scored.

    sync   capacity Omega; a step's groups are admitted only when the step starts (nothing is generated while
           the learner trains); step t trains on its own groups D_t once all are done.
    urb    capacity N * Omega; each group is assigned to a step when it enters the pool, in dataset order
           (the k-th group to step k // Omega); step t trains on exactly D_t once all of D_t is done; groups of
           later steps that finish early wait in the buffer and are never promoted early. sync is urb with N = 1
           that stops generating while the learner trains.
    april  capacity N * Omega (over-provisioned); step t trains on the first Omega groups to be done, whatever
           their position; unfinished groups keep generating into later steps. Biased towards short responses:
           the baseline U-RB is measured against (APRIL, arXiv:2509.18521).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

from rl_platform.config import Registry, check
from rl_platform.losses import LossConfig
from rl_platform.losses.corrections import NoCorrection, TISCorrection
from rl_platform.types import Completion, Prompt, RewardResult, SampleKey

ROLLOUT_MODES = Registry("rollout mode")


@dataclass(slots=True)
class GroupRecord:
    """One prompt's group in the pool: its place in the dataset, its step, and its samples as they arrive."""

    position: int
    """Dataset order (0, 1, 2, ...); the group's prompt is the position's prompt."""
    prompt: Prompt
    epoch: int
    num_samples: int
    step: int | None
    """The step it is trained in: assigned on admission (sync, urb) or on selection (april)."""
    completions: list[Completion | None] = field(default_factory=list)
    rewards: list[RewardResult | None] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    """[G] the current attempt of each sample (+1 per re-issue)."""
    done_order: int = -1
    """Order in which groups became done (-1: not yet)."""

    def __post_init__(self) -> None:
        self.completions = [None] * self.num_samples
        self.rewards = [None] * self.num_samples
        self.attempts = [0] * self.num_samples

    def key(self, sample_index: int) -> SampleKey:
        return SampleKey(prompt_id=self.prompt.prompt_id, sample_index=sample_index, epoch=self.epoch)

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.rewards)


class GroupBuffer:
    """The pool's groups by position, with the completions and rewards that have arrived for them."""

    def __init__(self) -> None:
        self.groups: dict[int, GroupRecord] = {}
        self._by_prompt: dict[tuple[str, int], int] = {}
        self._done_count = 0

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[GroupRecord]:
        return iter(self.groups.values())

    def add(self, group: GroupRecord) -> None:
        self.groups[group.position] = group
        self._by_prompt[(group.prompt.prompt_id, group.epoch)] = group.position

    def find(self, key: SampleKey) -> GroupRecord | None:
        position = self._by_prompt.get((key.prompt_id, key.epoch))
        return None if position is None else self.groups[position]

    def mark_if_done(self, group: GroupRecord) -> None:
        if group.done and group.done_order < 0:
            group.done_order = self._done_count
            self._done_count += 1

    def release(self, groups: list[GroupRecord], step: int) -> list[GroupRecord]:
        """Moves `groups` out of the pool into step `step`'s batch, in dataset order."""
        for g in groups:
            g.step = step
            del self.groups[g.position]
            del self._by_prompt[(g.prompt.prompt_id, g.epoch)]
        return sorted(groups, key=lambda g: g.position)


@dataclass(kw_only=True, slots=True)
class RolloutModeConfig:
    """Base of the rollout modes (`--set loop.rollout=sync|april|urb`)."""

    @classmethod
    def registry(cls) -> dict[str, type]:
        return ROLLOUT_MODES.classes()

    @property
    def overlap(self) -> bool:
        """True when the engines generate while the learner trains (async modes)."""
        return True

    def pool_groups(self, num_prompts_per_step: int) -> int:
        """Capacity of the inference pool, in groups."""
        raise NotImplementedError

    def assign_step(self, position: int, num_prompts_per_step: int) -> int | None:
        """The step a group is assigned to when it enters the pool (None: decided when selected)."""
        return position // num_prompts_per_step

    def with_default_correction(self, loss: LossConfig) -> LossConfig:
        """The loss this mode trains with: async modes train on tokens sampled by older weights, so a loss
        without a train-inference correction gets TIS (docs/async_rl.md, "Off-policy correction")."""
        correct = getattr(self, "correct_off_policy", False)
        if correct and isinstance(getattr(loss, "correction", None), NoCorrection):
            return dataclasses.replace(loss, correction=TISCorrection())
        return loss

    def select(self, buffer: GroupBuffer, step: int, num_prompts_per_step: int) -> list[GroupRecord] | None:
        """The groups step `step` trains on, or None while they are not all done."""
        mine = [g for g in buffer if g.step == step]
        if len(mine) == num_prompts_per_step and all(g.done for g in mine):
            return mine
        return None


@ROLLOUT_MODES.register("sync")
@dataclass(kw_only=True, slots=True)
class SyncRolloutConfig(RolloutModeConfig):
    """Generate exactly the step's groups on the newest weights, score, train, sync; engines idle while the
    learner trains, and the step waits for its longest response."""

    @property
    def overlap(self) -> bool:
        return False

    def pool_groups(self, num_prompts_per_step: int) -> int:
        return num_prompts_per_step


@ROLLOUT_MODES.register("urb")
@dataclass(kw_only=True, slots=True)
class URBRolloutConfig(RolloutModeConfig):
    """ERNIE 5.0's Unbiased Replay Buffer: the pool keeps N steps of groups generating; each step trains on
    exactly its own groups, in dataset order."""

    buffer_groups: int = 2
    """N: steps' worth of groups in the inference pool (the pool holds N * prompts-per-step groups). 2 keeps
    the engines busy with the next step's groups while the learner trains the current one."""
    correct_off_policy: bool = True
    """A loss whose correction is `none` trains with TIS (cap 2.0) instead; set the loss's correction to choose
    another one (`--set learner.loss.correction=icepop`), or False to train the stale tokens uncorrected."""

    def __post_init__(self) -> None:
        check(self.buffer_groups >= 1, "URBRolloutConfig.buffer_groups", self.buffer_groups, "must be >= 1",
              "use 2-4")

    def pool_groups(self, num_prompts_per_step: int) -> int:
        return self.buffer_groups * num_prompts_per_step


@ROLLOUT_MODES.register("april")
@dataclass(kw_only=True, slots=True)
class AprilRolloutConfig(RolloutModeConfig):
    """APRIL: over-provision the pool, train on the first groups to finish, carry the rest over (biased
    towards short responses; the baseline U-RB removes the bias of)."""

    buffer_groups: int = 2
    """Over-provisioning: the pool holds buffer_groups * prompts-per-step groups."""
    correct_off_policy: bool = True
    """As for urb: a loss without a correction trains with TIS (cap 2.0)."""

    def __post_init__(self) -> None:
        check(self.buffer_groups >= 1, "AprilRolloutConfig.buffer_groups", self.buffer_groups, "must be >= 1",
              "use 2-4")

    def pool_groups(self, num_prompts_per_step: int) -> int:
        return self.buffer_groups * num_prompts_per_step

    def assign_step(self, position: int, num_prompts_per_step: int) -> int | None:
        return None

    def select(self, buffer: GroupBuffer, step: int, num_prompts_per_step: int) -> list[GroupRecord] | None:
        done = sorted((g for g in buffer if g.done), key=lambda g: g.done_order)
        return done[:num_prompts_per_step] if len(done) >= num_prompts_per_step else None
