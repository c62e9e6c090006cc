"""The shared command line of every entry point: `--recipe`, `--set`, `--list-recipes`, `--run-dir`.

    python -m jobs.pretrain --recipe pretrain_tiny --set optim.lr=1e-3 --set loop.num_steps=50

A malformed override (unknown key, wrong type, failed validation) prints one line and exits 2, before any
process, actor or engine starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from jobs.recipes import recipes_for
from rl_platform.config import ConfigError, apply_overrides, list_keys


def build_parser(entry: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{entry}", description=description)
    parser.add_argument("--recipe", help="recipe name (see --list-recipes)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument("--list-recipes", action="store_true", help="print the recipes of this entry point")
    parser.add_argument("--list-keys", action="store_true", help="print every settable key of the recipe")
    parser.add_argument("--run-dir", default="", help="run folder (default runs/<recipe>-<timestamp>/)")
    return parser


def resolve_config(entry: str, args: argparse.Namespace) -> tuple[str, Any]:
    """Returns (recipe name, validated config) or exits 2 with one clear line."""
    recipes = recipes_for(entry)
    if args.list_recipes:
        for name, fn in sorted(recipes.items()):
            doc = (fn.__doc__ or "").strip().splitlines()
            print(f"{name:32s} {doc[0] if doc else ''}")
        sys.exit(0)
    if not args.recipe:
        _fail(f"jobs.{entry}: --recipe is required; choose one of {sorted(recipes)}.")
    if args.recipe not in recipes:
        _fail(f"jobs.{entry}: unknown recipe {args.recipe!r}; choose one of {sorted(recipes)}.")
    try:
        config = recipes[args.recipe]()
        overrides = list(args.overrides)
        if args.run_dir:
            overrides.append(f"run.run_dir={args.run_dir}")
        config = apply_overrides(config, overrides)
    except ConfigError as exc:
        _fail(f"jobs.{entry}: {exc}")
    if args.list_keys:
        print("\n".join(list_keys(config)))
        sys.exit(0)
    return args.recipe, config


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run_entry(entry: str, description: str, run: Callable[[str, Any, argparse.Namespace], int],
              argv: list[str] | None = None,
              extra_args: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    parser = build_parser(entry, description)
    if extra_args is not None:
        extra_args(parser)
    args = parser.parse_args(argv)
    recipe_name, config = resolve_config(entry, args)
    return run(recipe_name, config, args)
