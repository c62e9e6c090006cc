"""Recipes: plain functions that return a complete, validated config for one entry point.

    @recipe("pretrain")
    def pretrain_tiny() -> PretrainJobConfig: ...

`python -m jobs.<entry> --recipe <name>` looks the name up here; `--list-recipes` prints them.
Recipe modules are imported lazily by `load_recipes()` so that `--help` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

_RECIPES: dict[str, dict[str, Callable[[], Any]]] = {}


def recipe(entry: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Registers a recipe function under its own name for the entry point `entry`."""

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        table = _RECIPES.setdefault(entry, {})
        if fn.__name__ in table:
            raise ValueError(f"recipe {fn.__name__!r} is defined twice for jobs.{entry}")
        table[fn.__name__] = fn
        return fn

    return wrap


def load_recipes() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def recipes_for(entry: str) -> dict[str, Callable[[], Any]]:
    load_recipes()
    return dict(_RECIPES.get(entry, {}))
