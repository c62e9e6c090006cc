"""One small protocol per role. The controller depends only on these, so the RL loop runs against
in-process fakes in unit tests and against Ray actors (actors/remote.py) for real."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

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


class Generator(Protocol):
    """Samples completions from the current policy on `num_engines` engines that generate continuously:
    samples are submitted to one engine, stream back through `poll` as they finish, and a weight update
    lands while requests are in flight (each token records the version that sampled it)."""

    num_engines: int

    def submit(self, engine: int, requests: Sequence[SampleRequest], sampling: Any) -> None:
        """Queues samples on engine `engine` (0..num_engines-1); returns at once."""
        ...

    def poll(self, max_wait_s: float) -> GeneratorPoll:
        """Samples finished since the last poll (any engine); waits up to max_wait_s for at least one."""
        ...

    def abort(self, engine: int, keys: Sequence[SampleKey]) -> None:
        """Drops in-flight samples of `engine`; they will not be returned."""
        ...

    def generate(self, prompts: Sequence[Prompt], sampling: Any) -> list[list[Completion]]:
        """Blocking batch (evaluation): [len(prompts)][sampling.num_samples_per_prompt] completions."""
        ...

    def load_weights(self, weights: PolicyWeights) -> float:
        """Every engine serves `weights.version` from its next engine step on (in-flight requests continue
        under it); returns the seconds the slowest update took."""
        ...


class RewardScorer(Protocol):
    """Scores completions; never raises for a bad sample (it returns a failed RewardResult)."""

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[RewardResult]: ...


class PolicyTrainer(Protocol):
    """Owns the policy weights and optimizer state."""

    def train_step(self, rollouts: Sequence[Rollout], advantages: Sequence[float | None]) -> dict[str, float]:
        """Old/ref logprobs, loss, backward and optimizer step(s) over the rollouts; an advantage of None
        (a failed sample) keeps the sample out of the loss. Returns metrics."""
        ...

    def publish_weights(self) -> PolicyWeights:
        """Current weights for the generators, with a new version number."""
        ...

    def save_checkpoint(self, path: str, client_state: dict) -> None: ...

    def load_checkpoint(self, path: str) -> dict:
        """Restores model, optimizer, clipper and RNG; returns the client state saved with it."""
        ...

    def export(self, path: str) -> str:
        """Writes the policy as a Hugging Face directory vLLM can serve; returns the path."""
        ...
