"""The reward package's bottom layer: the registry, the scorer protocols, `Failure` and provenance hashes.

Every other module of `rewards/` imports from here (directly or through `rewards.base`), and this module
imports none of them, so the package has no import cycle: core <- guard, shadow <- base <- the variants.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rl_platform.config import Registry, config_to_dict
from rl_platform.types import RewardInput, RewardResult  # the payloads live with every other payload type

REWARDS = Registry("reward")
"""Name -> RewardConfig subclass; filled by the `@REWARDS.register(name)` decorators of `rewards/*`."""


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


def config_version(config: Any, *extra: str, exclude: tuple[str, ...] = ()) -> str:
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
