"""Plain Python reward functions: TRL's `f(prompts, completions, **kwargs) -> list[float]`, in-process.

Two ways in, one adapter:
- `CallableReward.from_callable(fn)` wraps a function object (a notebook, a test);
- `PythonFunctionConfig(path="pkg.mod:fn")` (registered as `python_function`) imports it, so a user's own
  reward is a recipe change: `--set reward=python_function --set reward.path=my_pkg.rewards:fn`.

The call follows TRL's convention: metadata keys become keyword arguments holding one value per sample
(missing keys -> None), like dataset columns in `GRPOTrainer`. A None in the returned list means "not
applicable to this sample" in TRL; here it fails that sample instead of counting it as 0.

The version hashes the function's source file, so editing the function changes every logged version.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rewards.base import REWARDS, RewardConfig, RewardInput, config_version
from rl_platform.config import ConfigError, check

TrlRewardFn = Callable[..., list[Any]]

_PATH_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def function_digest(fn: Callable[..., Any]) -> str:
    """Hash of the function's source (or bytecode when the source is unavailable, e.g. a lambda in a REPL)."""
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = repr(code.co_code + repr(code.co_consts).encode()) if code is not None else repr(fn)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def import_function(path: str) -> Callable[..., Any]:
    """`"pkg.mod:attr.sub"` -> the object; ConfigError naming the path and the fix on any failure."""
    module_name, _, attr_path = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"PythonFunctionConfig.path={path!r}: cannot import module {module_name!r} ({exc}); "
                          "check the module is on PYTHONPATH / installed") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"PythonFunctionConfig.path={path!r}: {obj.__name__} has no attribute {part!r}; "
                              "check the function name after ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"PythonFunctionConfig.path={path!r} is a {type(obj).__name__}, not a function; "
                          "point it at a callable f(prompts, completions, **kwargs) -> list[float]")
    return obj


class CallableReward:
    """RawScorer adapting a TRL-style reward function.

    Example:
        def brevity(prompts, completions, **kwargs): return [-len(c) / 100 for c in completions]
        scorer = CallableReward.from_callable(brevity)     # a guarded Scorer
        scorer.score([RewardInput(prompt="p", completion="abc")])[0].value   # -0.03
    """

    pass_threshold: float | None = None

    def __init__(self, fn: TrlRewardFn, name: str, version: str) -> None:
        self.fn = fn
        self.name = name
        self.version = version

    @staticmethod
    def from_callable(fn: TrlRewardFn, name: str | None = None, timeout_s: float | None = 60.0) -> Any:
        """A guarded Scorer for `fn`; the version is the hash of its source."""
        from rewards.guard import GuardedScorer

        raw = CallableReward(fn, name=name or getattr(fn, "__name__", "callable"), version=function_digest(fn))
        return GuardedScorer(raw, timeout_s=timeout_s)

    def score_batch(self, samples: Sequence[RewardInput]) -> list[Any]:
        keys = sorted({key for s in samples for key in s.metadata} - {"prompts", "completions"})
        columns = {key: [s.metadata.get(key) for s in samples] for key in keys}
        out = self.fn(prompts=[s.prompt for s in samples], completions=[s.completion for s in samples], **columns)
        # a list-like answer becomes a list; anything else goes to the guard as is, to be named in its error
        return list(out) if hasattr(out, "__iter__") and not isinstance(out, (str, bytes, dict)) else out


@REWARDS.register("python_function")
@dataclass(kw_only=True, slots=True)
class PythonFunctionConfig(RewardConfig):
    """A user's TRL-style reward function, imported from `module:function`.

    Example:
        PythonFunctionConfig(path="my_project.rewards:brevity")
    """

    path: str = "rewards.verifiers:arithmetic_correctness"
    """`module.sub:function` (the module must be importable where the reward runs)."""

    def __post_init__(self) -> None:
        RewardConfig.__post_init__(self)
        check(bool(_PATH_RE.fullmatch(self.path)), "PythonFunctionConfig.path", self.path,
              "is not of the form 'package.module:function'", "write it like 'my_pkg.rewards:my_reward'")

    def make_scorer(self) -> CallableReward:
        fn = import_function(self.path)
        return CallableReward(fn, name=f"python_function:{self.path}",
                              version=config_version(self, function_digest(fn)))
