"""The reward protocol: typed configs in a registry, batched scorers, and per-sample results with provenance.

A reward is chosen by config, never by code: every reward is a `RewardConfig` subclass registered under a
name in `REWARDS`, so a recipe field typed `RewardConfig` accepts `--set reward=arithmetic_verifier`. Its
`build()` returns a `Scorer` whose one method is batched:

    scorer = ArithmeticVerifierConfig().build()
    results = scorer.score([RewardInput(prompt="Q: 2+2=?\\nA:", completion=" 2+2=4; so 4\\n#### 4")])
    results[0].value, results[0].failed, results[0].reward_name, results[0].reward_version

Two things every user of verl/TRL has been bitten by are settled here, once, for every reward:

- *silent zero rewards*: a reward that raises, times out or returns a non-finite value does not produce
  0.0; it produces `RewardResult(value=None, failed=True, reason=...)`, which the loss excludes and the
  metrics count (`reward/failed_count`). `build()` always wraps the concrete scorer in that guard
  (`rewards.guard.GuardedScorer`), so a new reward cannot opt out of it.
- *unversioned rewards*: every result names the reward and its version, a hash of the config, of the
  source of the module implementing it and, for a learned model, of its weights.

Concrete rewards implement `make_scorer()` returning a `RawScorer`: an object with `name`, `version`,
`pass_threshold` and `score_batch(samples) -> list[float | Failure | RewardResult]`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from rl_platform.config import Registry, check, config_to_dict
from rl_platform.types import RewardInput, RewardResult  # the payloads live with every other payload type

REWARDS = Registry("reward")
"""Name -> RewardConfig subclass; filled by the `@REWARDS.register(name)` decorators of `rewards/*`."""

# Modules whose import registers the built-in rewards; `RewardConfig.registry()` imports them so a config
# tree can resolve `reward=<name>` even if the caller only imported `rewards.base`.
_BUILTIN_MODULES = (
    "rewards.verifiers",
    "rewards.python_function",
    "rewards.combine",
    "rewards.reward_model",
    "rewards.remote",
    "rewards.code_verifier",
    "rewards.answer_match",
    "rewards.reasoning_gym",
)


@dataclass(frozen=True, slots=True)
class Failure:
    """Returned by a RawScorer for a sample it cannot score; becomes a failed RewardResult."""

    reason: str


@runtime_checkable
class Scorer(Protocol):
    """What `RewardConfig.build()` returns: a batched, guarded, versioned reward."""

    name: str
    version: str
    pass_threshold: float | None
    """Values >= this count as a pass in `reward/pass_rate` (verifiers: 1.0); None: not a verifier."""

    def score(self, samples: Sequence[RewardInput]) -> list[RewardResult]:
        """Returns one result per sample, in order; never raises for a bad sample or a crashing reward."""
        ...


class RawScorer(Protocol):
    """What a concrete reward implements; `GuardedScorer` turns it into a Scorer."""

    name: str
    version: str
    pass_threshold: float | None

    def score_batch(self, samples: Sequence[RewardInput]) -> list[float | Failure | RewardResult]: ...


def _source_digest(obj: Any) -> str:
    """Hash of the source file defining `obj` (falls back to its qualified name when there is no file)."""
    module = inspect.getmodule(obj)
    try:
        text = inspect.getsource(module) if module is not None else obj.__qualname__
    except (OSError, TypeError):
        text = getattr(obj, "__qualname__", repr(obj))
    return hashlib.sha256(text.encode()).hexdigest()


def config_version(config: RewardConfig, *extra: str, exclude: tuple[str, ...] = ()) -> str:
    """12-hex provenance hash of a reward: its config (minus `shadow`), implementing source, and `extra`.

    The shadow is left out because it never changes the trained-on value; so are the `exclude` fields
    (where a model is stored, which device runs it). `extra` carries what the config does not pin: a
    weights digest, a user function's source, components' versions.
    """
    tree = config_to_dict(config)
    for name in ("shadow", *exclude):
        tree.pop(name, None)
    payload = json.dumps(
        {"type": type(config).__qualname__, "config": tree, "source": _source_digest(type(config)),
         "extra": list(extra)},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass(kw_only=True, slots=True)
class RewardConfig:
    """Base of every reward config; pick a subclass by registered name (`--set reward=<name>`).

    Example:
        scorer = REWARDS.get("arithmetic_verifier")().build()
    """

    registered_name: ClassVar[str]

    timeout_s: float | None = 60.0
    """Per-batch wall-clock limit; a batch that takes longer has every sample failed ("timeout"). None: no limit."""
    shadow: RewardConfig | None = None
    """A second reward that scores every sample for comparison only (metrics `reward/shadow_*`)."""

    def __post_init__(self) -> None:
        where = f"{type(self).__name__}.timeout_s"
        check(self.timeout_s is None or self.timeout_s > 0, where, self.timeout_s, "must be > 0 or None",
              "give a positive number of seconds, or None for no limit")

    @classmethod
    def registry(cls) -> dict[str, type]:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        return REWARDS.classes()

    def make_scorer(self) -> RawScorer:
        raise NotImplementedError(f"{type(self).__name__} must implement make_scorer()")

    def build(self) -> Scorer:
        """The guarded scorer (and its shadow, if configured); see the module docstring for why always guarded."""
        from rewards.combine import ShadowedReward
        from rewards.guard import GuardedScorer

        scorer: Scorer = GuardedScorer(self.make_scorer(), timeout_s=self.timeout_s)
        if self.shadow is not None:
            scorer = ShadowedReward(primary=scorer, shadow=self.shadow.build())
        return scorer


__all__ = [
    "REWARDS",
    "Failure",
    "RawScorer",
    "RewardConfig",
    "RewardInput",
    "RewardResult",
    "Scorer",
    "config_version",
]
