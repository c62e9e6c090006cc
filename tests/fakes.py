"""Small deterministic in-process implementations of the role protocols, for controller tests."""

from __future__ import annotations

from collections.abc import Callable

from rl_platform.types import Completion, GeneratorPoll, PolicyWeights, Prompt, RewardResult, SampleKey


class FakeGenerator:
    """A streaming engine with a simulated clock: every poll that may wait (max_wait_s > 0) is one engine step,
    which adds one token to every in-flight sample (in submission order); a sample finishes after
    `length_of(key)` tokens; a zero-wait poll only looks. Sample i says '#### i'. A weight update between polls
    makes the following tokens carry the new version."""

    def __init__(self, length_of: Callable[[SampleKey], int] = lambda key: 2, num_engines: int = 1) -> None:
        self.version = 0
        self.num_engines = num_engines
        self.length_of = length_of
        self.loaded: list[int] = []
        self.submitted: list[tuple[int, SampleKey, int, int]] = []
        """(engine, key, attempt, seed) of every submitted request, in order."""
        self.polls = 0
        self._in_flight: dict[SampleKey, list[int]] = {}
        self._engine_of: dict[SampleKey, int] = {}
        self.busy = [0.0] * num_engines
        self.clock = 0.0
        """The engines' clock: one second per fake engine step, busy or not."""

    def submit(self, engine, requests, sampling):
        for r in requests:
            assert r.key not in self._in_flight, f"{r.key} submitted twice"
            self._in_flight[r.key] = []
            self._engine_of[r.key] = engine
            self.submitted.append((engine, r.key, r.attempt, r.seed))

    def poll(self, max_wait_s):
        done = []
        if max_wait_s > 0:
            self.polls += 1
            self._step()
        for key, versions in list(self._in_flight.items()):
            if len(versions) >= self.length_of(key):
                done.append(self._completion(key, versions))
                del self._in_flight[key]
        return GeneratorPoll(completions=done, busy_seconds=list(self.busy),
                             clock_seconds=[self.clock] * self.num_engines, versions=[self.version] * self.num_engines)

    def _step(self) -> None:
        self.clock += 1.0
        for key, versions in self._in_flight.items():
            versions.append(self.version)
            self.busy[self._engine_of[key]] = min(self.busy[self._engine_of[key]] + 1.0, self.clock)

    def abort(self, engine, keys):
        for key in keys:
            self._in_flight.pop(key, None)

    def in_flight(self) -> list[SampleKey]:
        return list(self._in_flight)

    def generate(self, prompts, sampling):
        return [[self._completion(SampleKey(prompt_id=p.prompt_id, sample_index=i), [self.version] * 2)
                 for i in range(sampling.num_samples_per_prompt)] for p in prompts]

    def load_weights(self, weights: PolicyWeights, wait: bool = True) -> float:
        self.version = weights.version
        self.loaded.append(weights.version)
        return 0.0

    @staticmethod
    def _completion(key: SampleKey, versions: list[int]) -> Completion:
        i = key.sample_index
        return Completion(prompt_id=key.prompt_id, sample_index=i, epoch=key.epoch,
                          token_ids=[10 + i] * (len(versions) - 1) + [2], text=f"#### {i}",
                          generator_logprobs=[(-0.5, -0.1)[j % 2] for j in range(len(versions))],
                          routed_experts=None, finish_reason="stop",
                          policy_versions=list(versions))


class FakeScorer:
    """Reward 1 for sample index 1, else 0; sample index 3 fails; every sample of a prompt in `flat_prompts`
    scores 0 (a group with no learning signal)."""

    def __init__(self, flat_prompts: frozenset[str] = frozenset()) -> None:
        self.flat_prompts = flat_prompts
        self.scored: list[SampleKey] = []

    def score(self, prompts, completions):
        out = []
        for c in completions:
            self.scored.append(c.key)
            if c.prompt_id in self.flat_prompts:
                out.append(RewardResult(value=0.0, failed=False, reward_name="fake"))
            elif c.sample_index == 3:
                out.append(RewardResult(value=None, failed=True, reason="boom", reward_name="fake"))
            else:
                out.append(RewardResult(value=float(c.sample_index == 1), failed=False, reward_name="fake"))
        return out


class FakeTrainer:
    def __init__(self) -> None:
        self.version = 0
        self.seen: list[tuple[list, list]] = []

    def train_step(self, rollouts, advantages):
        self.seen.append((list(rollouts), list(advantages)))
        return {"loss/policy": 0.0}

    def publish_weights(self) -> PolicyWeights:
        self.version += 1
        return PolicyWeights.pack(self.version, [])


def prompts(step: int, n: int) -> list[Prompt]:
    return [Prompt(prompt_id=f"train/{step}.{i}", text="Q: 1+1=?\nA:", token_ids=[1, 5, 6], metadata={"answer": 2})
            for i in range(n)]


def resample_prompts(step: int, start: int, n: int) -> list[Prompt]:
    """The fake source's re-sample stream (DAPO refills): ids train/<step>.r<i>."""
    return [Prompt(prompt_id=f"train/{step}.r{i}", text="Q: 1+1=?\nA:", token_ids=[1, 5, 6], metadata={"answer": 2})
            for i in range(start, start + n)]


class FakeFleet(FakeGenerator):
    """A FakeGenerator whose engines can fail (rl_platform/supervision.py's EngineFleet): `kill(e)` loses the
    engine's in-flight samples and reports it lost at the next call; `hang(e)` does the same as a missed
    deadline would. `events` records what the supervisor did, in order."""

    def __init__(self, length_of: Callable[[SampleKey], int] = lambda key: 2, num_engines: int = 2) -> None:
        super().__init__(length_of=length_of, num_engines=num_engines)
        self.engine_versions = [0] * num_engines
        self.events: list[tuple] = []
        self._lost: list = []
        self._down: set[int] = set()

    def _fail(self, engine: int, reason: str) -> None:
        from rl_platform.supervision import EngineLost

        for key in [k for k, e in self._engine_of.items() if e == engine and k in self._in_flight]:
            del self._in_flight[key]
        self._down.add(engine)
        self._lost.append(EngineLost(engine=engine, reason=reason, detail="fake"))

    def kill(self, engine: int) -> None:
        self._fail(engine, "engine_lost")

    def hang(self, engine: int) -> None:
        self._fail(engine, "engine_hung")

    def submit(self, engine, requests, sampling):
        if engine in self._down:
            return  # a dead engine takes nothing (the supervisor re-issues it)
        assert not requests or self.engine_versions[engine] == self.version, "work sent to an engine on old weights"
        super().submit(engine, requests, sampling)

    def load_weights(self, weights: PolicyWeights, wait: bool = True) -> float:
        self.engine_versions = [weights.version if e not in self._down else v
                                for e, v in enumerate(self.engine_versions)]
        return super().load_weights(weights, wait)

    def generate(self, prompts, sampling):
        if self._lost:  # an engine faulted in the batch (RemoteGenerator raises the same)
            from rl_platform.supervision import EngineFault

            raise EngineFault(self._lost[0])
        return super().generate(prompts, sampling)

    def take_lost(self):
        out, self._lost = self._lost, []
        return out

    def restart_engine(self, engine: int, reason: str) -> None:
        self.events.append(("restart", engine, reason))
        self._down.discard(engine)
        self.engine_versions[engine] = 0  # a new process serves the base model

    def load_engine(self, engine: int, weights: PolicyWeights) -> None:
        self.events.append(("load", engine, weights.version))
        self.engine_versions[engine] = weights.version
