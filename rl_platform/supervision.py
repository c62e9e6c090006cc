"""Rollout-engine supervision: an engine that dies or misses its call deadline is replaced while the run goes on
(docs/fault_tolerance.md, "Actor faults").

    fleet call (submit / poll / load_weights / generate)
        -> the fleet reports EngineLost(engine, "engine_lost" | "engine_hung")
        -> scheduler.reissue_owed(engine)      what it owed goes to the live engines (same key, attempt + 1)
        -> fleet.restart_engine(engine)        a fresh actor process (Ray max_restarts), up and answering
        -> fleet.load_engine(engine, weights)  the CURRENT policy version, before it takes any work
        -> scheduler.restore_engine(engine)    back in rotation

The supervisor is itself a Generator (it wraps the fleet), so the scheduler and the controller never see a
failure: they see a pool that keeps delivering. The fleet (actors/remote.py) detects the faults: a Ray actor
error on any call is a death; a call still unanswered after `call_deadline_s` is a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from rl_platform.config import check
from rl_platform.protocols import Generator
from rl_platform.types import Completion, GeneratorPoll, PolicyWeights, Prompt, SampleKey, SampleRequest

logger = logging.getLogger(__name__)

LossReason = Literal["engine_lost", "engine_hung"]


@dataclass(kw_only=True, slots=True)
class SupervisionConfig:
    """How rollout and reward actors are watched and replaced (docs/fault_tolerance.md, "Actor faults")."""

    call_deadline_s: float = 120.0
    """Seconds any one call to a rollout or reward actor may take (a poll: its wait plus this) before the actor
    counts as hung, is killed and replaced, and its work is issued again. Longer than the slowest honest call:
    an engine step of the largest batch, a weight update, one reward shard (its own guard included)."""
    max_restarts: int = 3
    """Restarts per rollout or reward actor (Ray `max_restarts`); one more fault after that stops the run."""
    restart_timeout_s: float = 600.0
    """Seconds a restarted actor may take to come up (a vLLM engine loads its model and warms up)."""

    def __post_init__(self) -> None:
        check(self.call_deadline_s > 0, "SupervisionConfig.call_deadline_s", self.call_deadline_s, "must be > 0",
              "use 60-300 seconds")
        check(self.max_restarts >= 0, "SupervisionConfig.max_restarts", self.max_restarts, "must be >= 0",
              "use 3 (0 turns restarts off: an actor fault stops the run)")
        check(self.restart_timeout_s > 0, "SupervisionConfig.restart_timeout_s", self.restart_timeout_s,
              "must be > 0", "use 600")


@dataclass(frozen=True, slots=True)
class EngineLost:
    """A fault the fleet observed on one engine."""

    engine: int
    reason: LossReason
    detail: str


class EngineFault(RuntimeError):
    """Raised by a fleet's blocking batch (generate) when an engine faulted in it; the supervisor recovers the
    engine and runs the batch again."""

    def __init__(self, lost: EngineLost) -> None:
        super().__init__(f"rollout engine {lost.engine} {lost.reason}: {lost.detail}")
        self.lost = lost


class EngineFailed(RuntimeError):
    """A rollout engine or reward worker faulted more often than `max_restarts` allows, or its replacement did
    not come up: the job stops (or `loop.auto_resume` restarts every role from the newest checkpoint)."""


class EngineFleet(Generator, Protocol):
    """A Generator whose engines can be restarted one by one (actors/remote.py RemoteGenerator)."""

    def take_lost(self) -> list[EngineLost]:
        """Faults seen since the last call (each engine once), oldest first."""
        ...

    def restart_engine(self, engine: int, reason: LossReason) -> None:
        """Replaces engine `engine` (kills it first when it hangs); returns once the new one answers."""
        ...

    def load_engine(self, engine: int, weights: Any) -> None:
        """Loads `weights` into engine `engine` only, and waits for it."""
        ...


class Reissuer(Protocol):
    """The scheduler's seam (rl_platform/rollout_scheduler.py)."""

    def reissue_owed(self, engine: int, reason: Any = "engine_lost", exclude: bool = True) -> int: ...

    def restore_engine(self, engine: int) -> None: ...


class EngineSupervisor:
    """Generator over an EngineFleet that recovers every engine fault before it returns.

    Example:
        generator = EngineSupervisor(fleet, SupervisionConfig(call_deadline_s=60))
        controller = Controller(generator, ...)
        generator.attach(controller.scheduler)
    """

    def __init__(self, fleet: EngineFleet, config: SupervisionConfig) -> None:
        self.fleet = fleet
        self.config = config
        self.num_engines = fleet.num_engines
        self.scheduler: Reissuer | None = None
        self.weights: Any = None
        """The newest weights sent to the engines (what a replacement loads); None: the base model."""
        self.restarts = [0] * fleet.num_engines
        self.counters = {"faults/engine_restarts": 0, "faults/engine_lost": 0, "faults/engine_hung": 0,
                         "faults/samples_reissued": 0}
        self._recovering = False

    @property
    def handles(self) -> list[Any]:
        """The fleet's actor handles (a job kills them when the learner fails)."""
        return getattr(self.fleet, "handles", [])

    def attach(self, scheduler: Reissuer) -> None:
        """The scheduler whose owed samples are re-issued when an engine is lost."""
        self.scheduler = scheduler

    # ------------------------------------------------------------------ Generator
    def submit(self, engine: int, requests: Sequence[SampleRequest], sampling: Any) -> None:
        self.fleet.submit(engine, requests, sampling)
        self._recover()

    def poll(self, max_wait_s: float) -> GeneratorPoll:
        polled = self.fleet.poll(max_wait_s)
        self._recover()
        return polled

    def abort(self, engine: int, keys: Sequence[SampleKey]) -> None:
        self.fleet.abort(engine, keys)
        self._recover()

    def load_weights(self, weights: PolicyWeights, wait: bool = True) -> float:
        self.weights = weights
        seconds = self.fleet.load_weights(weights, wait=wait)
        self._recover()
        return seconds

    def generate(self, prompts: Sequence[Prompt], sampling: Any) -> list[list[Completion]]:
        """A blocking batch; a fault in it recovers the engine and runs the batch again (seeds are per key)."""
        return self._retrying(lambda: self.fleet.generate(prompts, sampling))

    def metrics(self) -> dict[str, float]:
        """Cumulative fault counters (logged with every step)."""
        return {k: float(v) for k, v in self.counters.items()}

    # ------------------------------------------------------------------ recovery
    def _retrying(self, call: Callable[[], Any]) -> Any:
        while True:
            try:
                result = call()
            except EngineFault:
                self._recover()
                continue
            if not self._recover():
                return result

    def _recover(self) -> bool:
        """Handles every fault the fleet reported; True if there was one."""
        if self._recovering:  # a submit made while re-issuing: the outer call handles its faults
            return False
        self._recovering = True
        handled = False
        try:
            while lost := self.fleet.take_lost():
                for fault in lost:
                    self._replace(fault)
                handled = True
        finally:
            self._recovering = False
        return handled

    def _replace(self, fault: EngineLost) -> None:
        e = fault.engine
        self.counters[f"faults/{fault.reason}"] += 1
        if self.restarts[e] >= self.config.max_restarts:
            raise EngineFailed(f"rollout engine {e}: {fault.reason} ({fault.detail}) after {self.restarts[e]} "
                               f"restarts (resources.supervision.max_restarts={self.config.max_restarts}); look "
                               "at the engine's log in the run directory, or raise max_restarts")
        logger.error("rollout engine %d %s (%s): replacing it", e, fault.reason.removeprefix("engine_"), fault.detail)
        others_live = self.num_engines > 1 and self.scheduler is not None and \
            len(getattr(self.scheduler, "excluded_engines", ())) < self.num_engines - 1
        if self.scheduler is not None and others_live:  # the live engines take its work at once
            self.counters["faults/samples_reissued"] += self.scheduler.reissue_owed(e, fault.reason)
        self.restarts[e] += 1
        self.counters["faults/engine_restarts"] += 1
        try:
            self.fleet.restart_engine(e, fault.reason)
            if self.weights is not None:  # before it takes work: it came up with the base model's weights
                self.fleet.load_engine(e, self.weights)
        except Exception as exc:  # the replacement did not come up: nothing more to try in this job
            raise EngineFailed(f"rollout engine {e}: its replacement after {fault.reason} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        if self.scheduler is None:
            return
        if others_live:
            self.scheduler.restore_engine(e)
        else:  # the only engine: its work waits for its replacement
            self.counters["faults/samples_reissued"] += self.scheduler.reissue_owed(e, fault.reason, exclude=False)
        logger.info("rollout engine %d replaced (restart %d/%d, serves version %s)", e, self.restarts[e],
                    self.config.max_restarts, getattr(self.weights, "version", 0))
