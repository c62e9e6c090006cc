"""The shared command line of every entry point, so they all behave the same way:

    python -m jobs.pretrain --recipe pretrain_tiny --set optim.lr=1e-3 --set loop.num_steps=50
    python -m jobs.rl --recipe grpo_tiny --dry-run          # validate, print config + resource plan, exit
    python -m jobs.rl --recipe grpo_tiny --run-dir runs/x --resume

- `--recipe` picks the starting config, `--set key=value` overrides fields (applied in order), then the job
  config's cross-section rules (`validate()`) run once on the result, so override order never matters;
- a malformed override, a broken rule, or a bad run directory prints one line and exits 2 before any
  process, actor or engine starts; a ConfigError raised later inside the run does the same;
- run directories: a new one is created (default runs/<recipe>-<timestamp>/); an existing non-empty one is
  only entered with `--resume`, which continues from its newest valid checkpoint; an entry that keeps
  checkpoints refuses `--resume` when there is none (the same rule and message for pretraining and RL;
  docs/recipes.md, 'Resume');
- `--dry-run` stops after printing the resolved config and the entry's resource plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.config_help import describe_keys
from jobs.recipes import recipes_for
from rl_platform.checkpointing import CheckpointError, CheckpointStore
from rl_platform.config import ConfigError, apply_overrides, config_to_dict
from rl_platform.run_dir import default_run_path

Plan = Callable[[str, Any, argparse.Namespace], list[str]]
"""(recipe, config, args) -> lines describing what the run would start: actors, CPUs/GPUs, engines, work."""


def build_parser(entry: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{entry}", description=description)
    parser.add_argument("--recipe", help="recipe name (see --list-recipes)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument("--list-recipes", action="store_true", help="print the recipes of this entry point")
    parser.add_argument("--list-keys", action="store_true",
                        help="print every settable key of the recipe with its value and meaning")
    parser.add_argument("--run-dir", default="", help="run folder (default runs/<recipe>-<timestamp>/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the recipe and overrides, print the resolved config and the plan, exit")
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
        fail(f"jobs.{entry}: --recipe is required; choose one of {sorted(recipes)}.")
    if args.recipe not in recipes:
        fail(f"jobs.{entry}: unknown recipe {args.recipe!r}; choose one of {sorted(recipes)}.")
    try:
        config = apply_overrides(recipes[args.recipe](), list(args.overrides))
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()
    except ConfigError as exc:
        fail(f"jobs.{entry}: {exc}")
    if args.list_keys:
        for key, value, doc in describe_keys(config):
            print(f"{key} = {json.dumps(value)}" + (f"\n    {doc}" if doc else ""))
        sys.exit(0)
    return args.recipe, config


def resolve_run_dir(entry: str, recipe: str, config: Any, args: argparse.Namespace,
                    checkpoints: str | None = None) -> Any:
    """Applies the run-directory rules (module docstring) and returns the config with run.run_dir fixed.
    `checkpoints`: the entry's checkpoint folder under <run>/checkpoints/ (None: it keeps none)."""
    if args.resume and not args.run_dir:
        fail(f"jobs.{entry}: --resume needs --run-dir <the run to continue>.")
    path = Path(args.run_dir) if args.run_dir else default_run_path(recipe)
    if args.resume and not path.is_dir():
        fail(f"jobs.{entry}: --resume: {path} does not exist; check the path, or drop --resume to start a new run "
             "there.")
    if not args.resume and path.exists() and (not path.is_dir() or any(path.iterdir())):
        held = sorted(p.name for p in path.iterdir())[:4] if path.is_dir() else []
        fail(f"jobs.{entry}: run directory {path} already exists and is not empty ({', '.join(held)}); add "
             "--resume to continue that run, or choose a new --run-dir.")
    if args.resume and checkpoints is not None:
        store = CheckpointStore(path / "checkpoints" / checkpoints, getattr(config, "checkpoint", None))
        try:
            args.resume_from = store.require_newest_valid()
        except CheckpointError as exc:  # never a silent fresh start inside the old run's folder
            fail(f"jobs.{entry}: --resume: {exc}")
    run = dataclasses.replace(config.run, run_dir=str(path))
    return dataclasses.replace(config, run=run)


def resume_differences(config: Any, run_dir: Path) -> list[str]:
    """Keys whose value differs from the config a resumed run was started with (empty when there is none)."""
    saved_path = run_dir / "config.json"
    if not saved_path.exists():
        return []
    saved = flatten(json.loads(saved_path.read_text()).get("config", {}))
    now = flatten(config_to_dict(config))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k) and k != "run.run_dir"]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def print_dry_run(entry: str, recipe: str, config: Any, args: argparse.Namespace, plan: Plan | None) -> None:
    """Prints the resolved config and the plan; the plan is built first, so a problem it finds (a missing base
    model, an unknown pretraining override) ends the dry run with its one-line error and nothing else."""
    run_dir = Path(config.run.run_dir)
    resume_from = getattr(args, "resume_from", None)
    state = f"resume from {resume_from.path.name}" if resume_from is not None else "resume" if args.resume else "new"
    lines = [f"run dir: {run_dir} ({state})"]
    if args.resume:
        lines += [f"  differs from the run's saved config: {d}" for d in resume_differences(config, run_dir)]
    lines += plan(recipe, config, args) if plan is not None else []
    print(json.dumps({"recipe": recipe, "config": config_to_dict(config)}, indent=2))
    print(f"\ndry run of jobs.{entry} --recipe {recipe}: the config above is valid; nothing was started.")
    print("plan:")
    for line in lines:
        print(f"  {line}")


def run_entry(entry: str, description: str, run: Callable[[str, Any, argparse.Namespace], int],
              argv: list[str] | None = None,
              extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
              plan: Plan | None = None, checkpoints: str | None = None) -> int:
    """Parses, validates and resolves the run directory (module docstring), then dry-runs or runs. `checkpoints`:
    the entry's folder under <run>/checkpoints/, which `--resume` must find a valid checkpoint in."""
    parser = build_parser(entry, description)
    if extra_args is not None:
        extra_args(parser)
    args = parser.parse_args(argv)
    recipe_name, config = resolve_config(entry, args)
    config = resolve_run_dir(entry, recipe_name, config, args, checkpoints)
    try:
        if args.dry_run:
            print_dry_run(entry, recipe_name, config, args, plan)
            return 0
        if args.resume:
            for change in resume_differences(config, Path(config.run.run_dir)):
                print(f"warning: jobs.{entry}: resuming with a changed setting: {change}", file=sys.stderr)
        return run(recipe_name, config, args)
    except ConfigError as exc:  # found only once the run looked at files or the cluster: still one line, exit 2
        fail(f"jobs.{entry}: {exc}")
        return 2
