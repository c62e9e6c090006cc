"""The inference pool: keeps the engines fed with samples of groups admitted in dataset order, streams their
completions into scoring and the buffer, regenerates what is too stale, and hands the controller each step's
scored groups as the rollout mode decides (docs/async_rl.md).

    controller                     scheduler                                     engines (Generator)
    next_batch(t, v) ---------->   admit groups while the pool has room ------>  submit(engine, samples)
                                   loop: poll <--------------------------------  finished samples (stream)
                                         stale?  drop, re-issue (attempt + 1) -> submit
                                         score (RewardScorer), store in the group
                                         mode.select(buffer, t)?  -> release D_t
    <---------------------------   StepBatch(rollouts of D_t, metrics)
    consume(batch, rows) ------>   ledger: trained / left out
    end_step(seconds) --------->   refill the pool (async modes), perf metrics

Consumes / waits for / unblocked by: next_batch consumes the step's groups; it waits until the mode releases
them, which needs every sample of those groups generated and scored; it is unblocked by engines finishing
samples. Between next_batch calls (while the learner trains) the engines keep generating what the pool holds
(async modes); completions wait in the engines' outboxes and are scored at the next call.

Every sample is named by its SampleKey (prompt id, sample index, epoch) and an attempt number; `owed` maps
each in-flight key to its engine, so re-issuing it elsewhere is a matter of choosing another engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rl_platform.ledger import DropReason, Ledger
from rl_platform.protocols import Generator, RewardScorer
from rl_platform.replay_buffer import GroupBuffer, GroupRecord, RolloutModeConfig
from rl_platform.rollout_stats import RolloutStats
from rl_platform.types import Completion, Prompt, Rollout, SampleKey, SampleRequest

logger = logging.getLogger(__name__)

POLL_S = 0.05
"""Longest wait for a completion per poll; short, so scoring and admission follow completions closely."""


@dataclass(slots=True)
class _Owed:
    engine: int
    attempt: int
    version: int
    """The version the engines served when the request was submitted (its tokens cannot be older)."""


@dataclass(slots=True)
class StepBatch:
    """What a step trains on: the released groups' rollouts in dataset order, and rollout metrics."""

    step: int
    groups: list[GroupRecord]
    rollouts: list[Rollout]
    """[num groups * G], group by group."""
    metrics: dict[str, float] = field(default_factory=dict)


class RolloutScheduler:
    """Owns the inference pool, the buffer and the ledger; talks to the roles through their protocols.

    Example:
        scheduler = RolloutScheduler(generator, scorer, prompts.train_batch, URBRolloutConfig(), sampling,
                                     num_prompts_per_step=32, max_staleness=2, ledger=Ledger())
        batch = scheduler.next_batch(step=0, version=0)
    """

    def __init__(self, generator: Generator, scorer: RewardScorer, prompt_batch: Callable[[int, int], list[Prompt]],
                 mode: RolloutModeConfig, sampling: Any, num_prompts_per_step: int, max_staleness: int,
                 ledger: Ledger, clock: Callable[[], float] = time.perf_counter) -> None:
        self.generator = generator
        self.scorer = scorer
        self.prompt_batch = prompt_batch
        self.mode = mode
        self.sampling = sampling
        self.num_prompts = num_prompts_per_step
        self.max_staleness = max_staleness
        self.ledger = ledger
        self.clock = clock
        self.buffer = GroupBuffer()
        self.owed: dict[SampleKey, _Owed] = {}
        self._load = [0] * generator.num_engines
        """Samples owed per engine (the least-loaded engine gets the next one)."""
        self.excluded_engines: set[int] = set()
        """Engines taken out of rotation (reissue_owed); nothing new is sent to them."""
        self.released: dict[SampleKey, GroupRecord] = {}
        """Samples handed to the controller and not consumed yet."""
        self.version = 0
        """The learner's version (set by the controller every step); staleness counts from it."""
        self.engine_versions = [0] * generator.num_engines
        """The version each engine serves, as its last poll reported (weight updates may still be landing)."""
        self.stats = RolloutStats(generator.num_engines, clock)
        self._next_position = 0
        self._readmit: list[int] = []
        """Positions to admit before `_next_position` (groups a resumed run had admitted but not trained)."""
        self._pages: dict[int, list[Prompt]] = {}

    # ------------------------------------------------------------------ the controller's calls
    def next_batch(self, step: int, version: int) -> StepBatch:
        """Blocks until the rollout mode releases step `step`'s groups; `version` is the learner's version."""
        self.version = version
        self._admit()
        full = len(self.buffer) >= self.mode.pool_groups(self.num_prompts)
        if full and all(g.step is not None and g.step < step for g in self.buffer):
            # only next_batch of those earlier steps frees the pool: waiting would never end
            earliest = min(g.step for g in self.buffer)
            raise ValueError(f"RolloutScheduler.next_batch: step {step} asked for, but the pool holds step "
                             f"{earliest}'s groups; steps are taken in order, and a run that starts later than "
                             f"step 0 calls resume({step}, state) first (jobs.rl does this on --resume)")
        while (groups := self.mode.select(self.buffer, step, self.num_prompts)) is None or self._drop_stale(groups):
            self._pump(POLL_S)
        groups = self.buffer.release(groups, step)
        self.released.update((g.key(i), g) for g in groups for i in range(g.num_samples))
        if self.mode.overlap:
            self._admit()
        rollouts = [Rollout(prompt=g.prompt, completion=c, reward=r)
                    for g in groups for c, r in zip(g.completions, g.rewards, strict=True)]
        metrics = self.stats.on_release(step, groups, rollouts, version)
        metrics["rollout/pool_groups"] = float(len(self.buffer))
        return StepBatch(step=step, groups=groups, rollouts=rollouts, metrics=metrics)

    def consume(self, batch: StepBatch, trained: set[SampleKey]) -> None:
        """Records in the ledger what became of every sample of the batch: trained (its key is in `trained`), or
        left out (its group had no signal, or an AHRL hint replaced it) or its reward failed."""
        for rollout in batch.rollouts:
            c = rollout.completion
            group = self.released[c.key]
            outcome = ("trained" if c.key in trained else "failed_reward" if rollout.reward.failed else "left_out")
            self.ledger.consumed(c.key, group.attempts[c.sample_index], batch.step, outcome)
            del self.released[c.key]

    def end_step(self, version: int) -> dict[str, float]:
        """After the weight sync: refill the pool (async modes), take what finished meanwhile, perf metrics."""
        self.version = version
        if self.mode.overlap:
            self._admit()
            self._pump(0.0)
        self.ledger.flush()
        return self.stats.end_step()

    def close(self) -> None:
        """Drops every in-flight sample (the run ended); the ledger records them as dropped."""
        by_engine: dict[int, list[SampleKey]] = {}
        for key, owed in self.owed.items():
            by_engine.setdefault(owed.engine, []).append(key)
        for engine, keys in by_engine.items():
            self.generator.abort(engine, keys)
        for key, owed in self.owed.items():
            self.ledger.dropped(key, owed.attempt, "run_ended")
        for group in self.buffer:
            for i, c in enumerate(group.completions):
                if c is not None and group.key(i) not in self.owed:
                    self.ledger.dropped(group.key(i), group.attempts[i], "run_ended")
        self.owed.clear()
        self._load = [0] * len(self._load)

    def reissue_owed(self, engine: int, reason: DropReason = "engine_lost", exclude: bool = True) -> int:
        """Takes engine `engine` out of rotation and re-issues every sample it owes to the other engines (same key,
        next attempt); returns how many. The seam for supervision (rl_platform/supervision.py): whoever sees an
        engine die or hang calls it (and `restore_engine` once a replacement serves the current weights).
        exclude=False: the engine stays in rotation (its replacement already serves; the only engine's case)."""
        if exclude:
            self.excluded_engines.add(engine)
        if len(self.excluded_engines) == self.generator.num_engines:
            raise RuntimeError(f"RolloutScheduler: no engine left to re-issue to ({self.generator.num_engines} "
                               "excluded); restart the rollout actors")
        keys = [k for k, owed in self.owed.items() if owed.engine == engine]
        for key in keys:
            group = self.buffer.find(key)
            assert group is not None  # an owed sample always belongs to a group in the pool
            owed = self.owed.pop(key)
            self._load[engine] -= 1
            self.ledger.dropped(key, owed.attempt, reason)
            group.attempts[key.sample_index] += 1
            self._issue(group, [key.sample_index])
        return len(keys)

    def restore_engine(self, engine: int) -> None:
        self.excluded_engines.discard(engine)

    def state_dict(self) -> dict[str, Any]:
        """Where the dataset cursor is and which admitted groups were not trained yet (for --resume)."""
        return {"next_position": self._next_position, "pending": sorted(g.position for g in self.buffer)}

    def resume(self, step: int, state: dict[str, Any] | None) -> None:
        """Continues a checkpointed run at step `step`: `state` (from `state_dict`, None for a checkpoint
        without one) names the groups to admit again before the dataset cursor moves on; their samples are
        issued under the attempt the ledger says comes next."""
        if state is None:
            self._next_position = step * self.num_prompts
            return
        self._readmit = list(state["pending"])
        self._next_position = int(state["next_position"])

    # ------------------------------------------------------------------ admission and submission
    def _admit(self) -> None:
        capacity = self.mode.pool_groups(self.num_prompts)
        if len(self.buffer) < capacity:
            self._pump(0.0)  # learn which version each engine serves before issuing to it
        G = self.sampling.num_samples_per_prompt
        while len(self.buffer) < capacity:
            if self._readmit:
                position = self._readmit.pop(0)
            else:
                position, self._next_position = self._next_position, self._next_position + 1
            if self.stats.first_position is None:
                self.stats.first_position = position
            group = GroupRecord(position=position, prompt=self._prompt(position), epoch=0, num_samples=G,
                                step=self.mode.assign_step(position, self.num_prompts))
            group.attempts = [self.ledger.next_attempt(group.key(i)) for i in range(G)]  # >0 after a resume
            self.buffer.add(group)
            self._issue(group, range(G))

    def _issue(self, group: GroupRecord, sample_indices: Sequence[int]) -> None:
        by_engine: dict[int, list[SampleRequest]] = {}
        for i in sample_indices:
            key = group.key(i)
            engine = self._least_loaded_engine()
            version = self.engine_versions[engine]
            self.owed[key] = _Owed(engine=engine, attempt=group.attempts[i], version=version)
            self._load[engine] += 1
            self.ledger.issued(key, group.attempts[i], engine, version)
            by_engine.setdefault(engine, []).append(SampleRequest(
                key=key, prompt=group.prompt, seed=key.seed(self.sampling.seed), attempt=group.attempts[i]))
        for engine, requests in by_engine.items():
            self.generator.submit(engine, requests, self.sampling)

    def _least_loaded_engine(self) -> int:
        live = [e for e in range(len(self._load)) if e not in self.excluded_engines]
        return min(live, key=self._load.__getitem__)

    def _prompt(self, position: int) -> Prompt:
        page, index = divmod(position, self.num_prompts)
        if page not in self._pages:
            self._pages = {p: v for p, v in self._pages.items() if p >= page - 1}  # keep the cache small
            self._pages[page] = self.prompt_batch(page, self.num_prompts)
        return self._pages[page][index]

    # ------------------------------------------------------------------ arrivals
    def _pump(self, max_wait_s: float) -> None:
        """Takes finished samples from the engines, regenerates stale ones, scores the rest."""
        polled = self.generator.poll(max_wait_s)
        self.stats.on_poll(polled)
        self.engine_versions = list(polled.versions)
        kept: list[tuple[GroupRecord, Completion]] = []
        for c in polled.completions:
            group, owed = self.buffer.find(c.key), self.owed.pop(c.key, None)
            if group is None or owed is None:
                raise RuntimeError(f"RolloutScheduler: engine returned sample {c.key} that is not owed; an abort "
                                   "raced a completion or an engine answered twice")
            self._load[owed.engine] -= 1
            self._check_versions(c, owed)
            self.ledger.generated(c.key, owed.attempt, (c.policy_version, c.policy_versions[-1] if c.token_ids
                                                        else c.policy_version), len(c.token_ids))
            if self.version - c.policy_version > self.max_staleness:
                self._reissue(group, c.sample_index)
                continue
            group.completions[c.sample_index] = c
            kept.append((group, c))
        if kept:
            self._score(kept)

    def _score(self, kept: list[tuple[GroupRecord, Completion]]) -> None:
        start = self.clock()
        results = self.scorer.score([g.prompt for g, _ in kept], [c for _, c in kept])
        self.stats.scoring_seconds += self.clock() - start
        for (group, c), result in zip(kept, results, strict=True):
            group.rewards[c.sample_index] = result
            self.ledger.scored(c.key, group.attempts[c.sample_index], result.failed)
            if group.done:
                self.buffer.mark_if_done(group)
                self.stats.on_done(group)

    def _drop_stale(self, groups: list[GroupRecord]) -> bool:
        """Re-issues the samples of `groups` that became too stale while they waited; True if any did."""
        dropped = False
        for group in groups:
            for i, c in enumerate(group.completions):
                if c is not None and self.version - c.policy_version > self.max_staleness:
                    self._reissue(group, i)
                    dropped = True
        return dropped

    def _reissue(self, group: GroupRecord, index: int) -> None:
        key = group.key(index)
        self.ledger.dropped(key, group.attempts[index], "stale")
        self.stats.stale_dropped += 1
        group.completions[index] = None
        group.rewards[index] = None
        group.done_order = -1
        group.attempts[index] += 1
        self._issue(group, [index])

    def _check_versions(self, c: Completion, owed: _Owed) -> None:
        versions = sorted(set(c.policy_versions))
        if versions and (versions[0] < owed.version or versions[-1] > self.version):
            raise RuntimeError(f"RolloutScheduler: sample {c.key} came from policy versions {versions} but it was "
                               f"submitted at version {owed.version} and the learner is at {self.version}; a weight "
                               "sync was lost (restart the run with --resume) or an engine serves stale weights")
