"""Typed configuration: nested dataclasses that validate themselves, plus `--set a.b.c=value` overrides.

Every component owns a `@dataclass(kw_only=True, slots=True)` config whose `__post_init__` raises
`ConfigError` with four parts: where, what, the value, and how to fix it. A run is a tree of such configs
returned by a recipe function (`jobs/recipes/`). This module turns command-line overrides into a new,
re-validated tree:

    apply_overrides(config, ["optim.lr=3e-4", "model.num_experts=64", "reward=rule_verifier"])

- values are parsed through the field's type hint (int, float, bool, str, Literal, Optional, tuple, list,
  Path, a nested config), so `model.num_experts=abc` fails before anything starts;
- unknown keys fail with the list of valid keys at that level;
- a field typed as a *polymorphic* config base (a class with a `registry()` classmethod) accepts a name:
  `--set reward=rule_verifier` replaces the whole sub-config with the registered default of that name.

`config_to_dict` gives the JSON written to `run_dir/config.json`; polymorphic sub-configs carry a `"type"`.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A user-fixable configuration problem; the message says where, what, the value and the fix."""


def check(condition: bool, where: str, value: Any, requirement: str, fix: str) -> None:
    """Raises ConfigError(`where`=value: requirement; fix) unless `condition` holds.

    Example:
        check(self.top_k <= self.num_experts, "MoEConfig.top_k", self.top_k,
              f"must be <= num_experts ({self.num_experts})", "lower top_k or raise num_experts")
    """
    if not condition:
        raise ConfigError(f"{where}={value!r} {requirement}; {fix}.")


def is_config(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _polymorphic_registry(tp: Any) -> dict[str, type] | None:
    """Name -> config class for a polymorphic base (one that defines `registry()`), else None."""
    if isinstance(tp, type) and hasattr(tp, "registry"):
        return tp.registry()
    return None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(tp: Any, text: str, where: str) -> Any:
    """Parses `text` as a value of type `tp`; raises ConfigError naming `where` on failure."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if type(None) in options and text.lower() in ("none", "null"):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return parse_value(option, text, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: cannot parse {text!r} as {tp}; " + " / ".join(errors))
    if origin is Literal:
        allowed = get_args(tp)
        for candidate in allowed:
            if str(candidate) == text:
                return candidate
        raise ConfigError(f"{where}={text!r} is not one of {list(allowed)}; pick one of those.")
    if origin in (tuple, list):
        args = get_args(tp)
        item_type = args[0] if args else str
        items = [] if text.strip() in ("", "[]", "()") else [s.strip() for s in text.strip("[]()").split(",")]
        parsed = [parse_value(item_type, s, f"{where}[{i}]") for i, s in enumerate(items)]
        return tuple(parsed) if origin is tuple else parsed
    registry = _polymorphic_registry(tp)
    if registry is not None:
        if text not in registry:
            raise ConfigError(f"{where}={text!r} is not a registered {tp.__name__}; valid: {sorted(registry)}.")
        return registry[text]()
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{where}={text!r} is not a boolean; use true or false.")
    if tp in (int, float, str, Path):
        try:
            return tp(text)
        except ValueError:
            raise ConfigError(f"{where}={text!r} is not a valid {tp.__name__}; give a {tp.__name__}.") from None
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"{where} is a section ({tp.__name__}), not a value; set one of its fields instead.")
    raise ConfigError(f"{where}: overriding fields of type {tp} from the command line is not supported.")


def _set_path(node: Any, path: list[str], text: str, done: list[str]) -> Any:
    """Returns a copy of `node` with the field at `path` set from `text` (re-validated on the way up)."""
    name = path[0]
    where = ".".join([*done, name])
    names = [f.name for f in dataclasses.fields(node)]
    if name not in names:
        prefix = ".".join(done) or "<root>"
        raise ConfigError(f"unknown key {where!r}: {type(node).__name__} ({prefix}) has {sorted(names)}.")
    hint = _hints(type(node))[name]
    if len(path) == 1:
        value = parse_value(hint, text, where)
    else:
        child = getattr(node, name)
        if not is_config(child):
            raise ConfigError(f"{where} is a value, not a section; set {where}=<value>.")
        value = _set_path(child, path[1:], text, [*done, name])
    return dataclasses.replace(node, **{name: value})


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Applies `key.path=value` strings in order and returns the new validated config tree."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} has no '='; write --set section.field=value.")
        key, text = item.split("=", 1)
        try:
            config = _set_path(config, key.strip().split("."), text.strip(), [])
        except ConfigError as exc:
            raise ConfigError(f"--set {item}: {exc}") from None
    return config


def config_to_dict(config: Any) -> Any:
    """JSON-ready view of a config tree; polymorphic sub-configs record their registered name as 'type'."""
    if is_config(config):
        out: dict[str, Any] = {}
        registered = getattr(type(config), "registered_name", None)
        if registered:
            out["type"] = registered
        for field in dataclasses.fields(config):
            out[field.name] = config_to_dict(getattr(config, field.name))
        return out
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config


def list_keys(config: Any, prefix: str = "") -> list[str]:
    """All settable dotted keys of a config tree (for help text)."""
    keys = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        key = f"{prefix}{field.name}"
        if is_config(value):
            keys.extend(list_keys(value, key + "."))
        else:
            keys.append(key)
    return keys


class Registry:
    """Name -> config class, for polymorphic config fields (rewards, losses, ...).

    Example:
        REWARDS = Registry("reward")
        @REWARDS.register("rule_verifier")
        @dataclass(kw_only=True, slots=True)
        class RuleVerifierConfig(RewardConfig): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str):
        def wrap(cls: type) -> type:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._classes[name]} and {cls})")
            cls.registered_name = name
            self._classes[name] = cls
            return cls

        return wrap

    def classes(self) -> dict[str, type]:
        return dict(self._classes)

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {sorted(self._classes)}.")
        return self._classes[name]


__all__ = [
    "ConfigError",
    "Registry",
    "apply_overrides",
    "check",
    "config_to_dict",
    "is_config",
    "list_keys",
    "parse_value",
]
