"""The Ray side of actor supervision (docs/fault_tolerance.md, "Actor faults"): every call to a rollout or reward
actor is tracked with a deadline; a Ray actor error is a death, a call past its deadline is a hang; a hung
actor is killed, and Ray restarts it (the actors are created with `max_restarts`).

The recovery policy for rollout engines (re-issue, replace, reload the current weights, restore) lives in
rl_platform/supervision.py; the reward pool's is here (`SupervisedRewardPool`): a shard whose worker died or
hung is scored again on the next worker, so every sample is scored exactly once from the ledger's view.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

from rl_platform.supervision import EngineFailed, EngineLost, LossReason, SupervisionConfig
from rl_platform.types import Completion, Prompt, RewardResult

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Call:
    """One outstanding actor call."""

    actor: int
    kind: str
    sent: float
    wait_s: float = 0.0
    """The wait the call itself asked for (a long poll's max_wait_s); the deadline counts after it."""
    version: int = 0


class CallBook:
    """Outstanding calls (ObjectRef -> Call) and the faults they revealed (actor -> EngineLost)."""

    def __init__(self, deadline_s: float, clock=time.monotonic) -> None:
        self.deadline_s = deadline_s
        self.clock = clock
        self.calls: dict[Any, Call] = {}
        self.lost: dict[int, EngineLost] = {}
        self.down: set[int] = set()
        """Actors lost and not restarted yet (nothing is sent to them)."""

    def track(self, ref: Any, actor: int, kind: str, wait_s: float = 0.0, version: int = 0) -> Any:
        self.calls[ref] = Call(actor=actor, kind=kind, sent=self.clock(), wait_s=wait_s, version=version)
        return ref

    def of_kind(self, kind: str) -> list[Any]:
        return [ref for ref, call in self.calls.items() if call.kind == kind]

    def get(self, ref: Any) -> tuple[Call, Any, bool]:
        """(call, result, ok): takes a finished call; a failed one marks its actor lost."""
        call = self.calls.pop(ref)
        try:
            return call, ray.get(ref), True
        except Exception as exc:  # any error of an engine call leaves the engine unusable: replace it
            reason: LossReason = "engine_lost"
            self.lose(call.actor, reason, f"{call.kind}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            return call, None, False

    def lose(self, actor: int, reason: LossReason, detail: str) -> None:
        if actor in self.down:
            return
        self.down.add(actor)
        self.lost[actor] = EngineLost(engine=actor, reason=reason, detail=detail)
        for ref in [r for r, c in self.calls.items() if c.actor == actor]:
            del self.calls[ref]  # the old incarnation's answers are never awaited

    def check_deadlines(self) -> None:
        """Marks hung the actors of calls past their deadline that have no answer yet (an answer that waits to be
        collected, e.g. while the driver was busy replacing another actor, is not a hang)."""
        now = self.clock()
        late = [ref for ref, call in self.calls.items() if now - call.sent > call.wait_s + self.deadline_s]
        answered, _ = ray.wait(late, num_returns=len(late), timeout=0) if late else ([], [])
        for ref in set(late) - set(answered):
            call = self.calls.get(ref)
            if call is not None:
                self.lose(call.actor, "engine_hung", f"{call.kind} unanswered after {now - call.sent:.0f} s "
                          f"(resources.supervision.call_deadline_s={self.deadline_s:g})")

    def take_lost(self) -> list[EngineLost]:
        out, self.lost = list(self.lost.values()), {}
        return out


def process_ids(handles: Sequence[Any]) -> list[int]:
    """The process id behind each actor (a restart is known by a new one)."""
    return ray.get([h.process_id.remote() for h in handles])


def restart_actor(handle: Any, reason: LossReason, old_pid: int, timeout_s: float,
                  ready_method: str = "__ray_ready__") -> int:
    """Kills `handle` when it hangs (Ray restarts it: max_restarts), waits until a new process answers (a call
    can still reach the old one while it dies) and is ready; returns the new process id."""
    if reason == "engine_hung":
        ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            left = max(1.0, deadline - time.monotonic())
            pid = ray.get(handle.process_id.remote(), timeout=left)
            if pid != old_pid:
                ray.get(getattr(handle, ready_method).remote(), timeout=left)
                return pid
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # dead, or restarting: ask again
        if time.monotonic() > deadline:
            raise RuntimeError(f"actor restart: no new process answered within {timeout_s:g} s "
                               f"(resources.supervision.restart_timeout_s) after {reason}")
        time.sleep(0.5)


class SupervisedRewardPool:
    """RewardScorer over a pool of reward actors: each shard has a deadline; a shard whose worker died or hung
    is scored again on a live worker, and the faulted worker gets no work until its new process answers."""

    def __init__(self, handles: list[Any], config: SupervisionConfig) -> None:
        self.handles = handles
        self.config = config
        self.pids = process_ids(handles)
        self.restarts = [0] * len(handles)
        self._restarting: dict[int, float] = {}
        """Worker -> when its fault was seen (it takes no work until a new process answers)."""
        self.counters = {"faults/reward_restarts": 0, "faults/reward_shards_rescored": 0}

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[RewardResult]:
        completions = [dataclasses.replace(c, routed_experts=None) for c in completions]  # scorers never read routes
        workers = self._available()
        size = -(-len(completions) // len(workers)) or 1
        shards = [slice(i, min(len(completions), i + size)) for i in range(0, len(completions), size)]
        book = CallBook(self.config.call_deadline_s)
        pending: dict[Any, tuple[int, int]] = {}
        """ObjectRef -> (shard, worker)."""
        for index, (worker, shard) in enumerate(zip(workers, shards, strict=False)):
            self._send(book, pending, index, worker, prompts[shard], completions[shard])
        results: dict[int, list[RewardResult]] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                index, worker = pending.pop(ref)
                _, value, ok = book.get(ref)
                if ok:
                    results[index] = value
                else:
                    self._fault(worker, "engine_lost")
                    self._send(book, pending, index, None, prompts[shards[index]], completions[shards[index]])
            book.check_deadlines()
            for ref in [r for r in pending if r not in book.calls]:  # a hung worker's calls left the book
                index, worker = pending.pop(ref)
                self._fault(worker, "engine_hung")
                self._send(book, pending, index, None, prompts[shards[index]], completions[shards[index]])
            book.take_lost()
        return [r for i in range(len(shards)) for r in results[i]]

    def _send(self, book: CallBook, pending: dict, index: int, worker: int | None, prompts, completions) -> None:
        if worker is None:  # scoring again: the least busy live worker
            busy = [w for _, w in pending.values()]
            worker = min(self._available(), key=busy.count)
            self.counters["faults/reward_shards_rescored"] += 1
            logger.error("reward: scoring a shard of %d samples again on worker %d", len(completions), worker)
        ref = self.handles[worker].score.remote(list(prompts), list(completions))
        pending[book.track(ref, worker, "score")] = (index, worker)

    def _fault(self, worker: int, reason: LossReason) -> None:
        if worker in self._restarting:
            return
        if self.restarts[worker] >= self.config.max_restarts:
            raise EngineFailed(f"reward worker {worker}: {reason} after {self.restarts[worker]} restarts "
                               f"(resources.supervision.max_restarts={self.config.max_restarts}); look at the "
                               "reward's log in the run directory, or raise max_restarts")
        logger.error("reward worker %d %s: restarting it", worker, reason.removeprefix("engine_"))
        self.restarts[worker] += 1
        self.counters["faults/reward_restarts"] += 1
        self._restarting[worker] = time.monotonic()
        if reason == "engine_hung":
            ray.kill(self.handles[worker], no_restart=False)  # Ray restarts it

    def _available(self) -> list[int]:
        """Workers that take work; waits while every worker restarts."""
        while True:
            for worker, since in list(self._restarting.items()):
                try:
                    pid = ray.get(self.handles[worker].process_id.remote(), timeout=0.5)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    pid = self.pids[worker]
                if pid != self.pids[worker]:
                    self.pids[worker] = pid
                    del self._restarting[worker]
                    logger.info("reward worker %d is back (process %d)", worker, pid)
                elif time.monotonic() - since > self.config.restart_timeout_s:
                    raise EngineFailed(f"reward worker {worker}: no new process within "
                                       f"{self.config.restart_timeout_s:g} s (resources.supervision."
                                       "restart_timeout_s)")
            live = [w for w in range(len(self.handles)) if w not in self._restarting]
            if live:
                return live
            time.sleep(0.5)

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.counters.items()}
