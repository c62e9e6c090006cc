"""Provides the RL job's base model: a given HF directory, or the pretraining recipe's output, trained once
and cached under `models/<recipe>-<key>/` so that a second `make run` reuses it.

The key hashes everything that decides the trained weights (docs/architecture.md, 'The base-model cache'):
the resolved pretraining config minus the fields that only change how a run is watched (`RESULT_NEUTRAL_KEYS`),
`BASE_MODEL_CODE_VERSION`, and the torch and DeepSpeed versions. Pretraining always runs its whole step
budget; if it hits its safety cap (`loop.max_minutes`) it fails and leaves a resumable checkpoint in the cache
folder instead of caching a model trained for fewer steps than its config says. An unfinished cache folder
(no `models/family.json`) is resumed from its checkpoint by the next run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

from jobs.cli import flatten
from jobs.preflight import check_base_model
from jobs.recipes import recipes_for
from jobs.rl_config import BaseModelConfig
from pretrain.stage import run_pretraining
from rl_platform.checkpointing import CheckpointStore
from rl_platform.config import ConfigError, apply_overrides, config_to_dict
from rl_platform.model.adapter import layer_map_from_dir
from rl_platform.run_dir import RunDir

logger = logging.getLogger(__name__)

BASE_MODEL_CODE_VERSION = 2
"""Bump when a code change makes the same pretraining config train different weights (corpora, tokenizer,
model, loop, export), so cached base models of the old code are not reused. 2: the step budget is no longer
cut short by a wall-clock cap."""

RESULT_NEUTRAL_KEYS = frozenset({"loop.max_minutes", "loop.log_every", "loop.checkpoint_every", "run.run_dir",
                                 "run.use_wandb", "run.wandb_project", "checkpoint.keep_last", "checkpoint.verify"})
"""Pretraining fields that change how a run is watched or stored, never the weights it produces."""


def cache_key(pretrain_config: Any) -> dict[str, Any]:
    """What the base-model cache is keyed on (written to the cache folder as cache_key.json)."""
    config = {k: v for k, v in flatten(config_to_dict(pretrain_config)).items() if k not in RESULT_NEUTRAL_KEYS}
    return {"config": config, "code_version": BASE_MODEL_CODE_VERSION,
            "torch": importlib.metadata.version("torch"), "deepspeed": importlib.metadata.version("deepspeed")}


def cache_dir_for(config: BaseModelConfig) -> tuple[Path, Any]:
    """(the cache folder of `config.pretrain_recipe`, its pretraining config); ConfigError if the recipe is unknown."""
    recipes = recipes_for("pretrain")
    if config.pretrain_recipe not in recipes:
        raise ConfigError(f"base_model.pretrain_recipe={config.pretrain_recipe!r} is unknown; "
                          f"choose one of {sorted(recipes)}")
    try:
        pretrain_config = apply_overrides(recipes[config.pretrain_recipe](), list(config.pretrain_overrides))
        pretrain_config.validate()
    except ConfigError as exc:
        raise ConfigError(f"base_model.pretrain_overrides={','.join(config.pretrain_overrides)!r}: {exc}") from None
    digest = hashlib.sha1(json.dumps(cache_key(pretrain_config), sort_keys=True).encode()).hexdigest()[:10]
    return Path(config.cache_dir) / f"{config.pretrain_recipe}-{digest}", pretrain_config


def describe_base_model(config: BaseModelConfig) -> str:
    """One line saying where the base model comes from; raises ConfigError for a missing model, a bad path,
    an unsupported architecture or an unknown recipe."""
    if not config.path and not config.pretrain_recipe:
        raise ConfigError("base_model: this recipe needs a model: --set base_model.path=<a Hugging Face MoE "
                          "directory>")
    if config.path:
        # a model of an unsupported architecture is refused as such, before its files are checked
        if _declared_architectures(Path(config.path) / "config.json"):
            _check_architecture(config.path)
        check_base_model(config.path)  # config, weights and tokenizer readable, tokenizer fits the model
        _check_architecture(config.path)
        return f"{config.path} (given)"
    root, pretrain_config = cache_dir_for(config)
    if (root / "models" / "family.json").exists():
        return f"{root / 'models' / 'full'} (cached)"
    loop = pretrain_config.loop
    cap = f", safety cap {loop.max_minutes:g} min" if loop.max_minutes else ""
    state = "resumes its unfinished pretraining" if _has_checkpoint(root) else "pretrains it first"
    overrides = f" with {', '.join(config.pretrain_overrides)}" if config.pretrain_overrides else ""
    return (f"{root / 'models' / 'full'} is not cached: {state} (recipe {config.pretrain_recipe}{overrides}, "
            f"{loop.num_steps} steps{cap})")


def ensure_base_model(config: BaseModelConfig) -> Path:
    if config.path:
        describe_base_model(config)
        return Path(config.path)
    root, pretrain_config = cache_dir_for(config)
    model_dir = root / "models" / "full"
    if (root / "models" / "family.json").exists():
        logger.info("reusing the pretrained base model in %s", model_dir)
        return model_dir
    resume = _has_checkpoint(root)
    logger.info("no cached base model: %s %s into %s", "resuming" if resume else "pretraining",
                config.pretrain_recipe, root)
    pretrain_config.run.run_dir = str(root)
    run_dir = RunDir.create(pretrain_config.run, config.pretrain_recipe, pretrain_config)
    (root / "cache_key.json").write_text(json.dumps(cache_key(pretrain_config), indent=2, sort_keys=True) + "\n")
    try:
        hint = " ".join([f"--recipe {config.pretrain_recipe} --run-dir {root}",
                         *(f"--set {o}" for o in config.pretrain_overrides)])
        run_pretraining(pretrain_config, run_dir.path, run_dir.log_metrics, resume=resume, run_files=run_dir,
                        resume_hint=hint)
    finally:
        run_dir.close()
    return model_dir


def _has_checkpoint(root: Path) -> bool:
    return CheckpointStore(root / "checkpoints" / "pretrain").newest_valid() is not None


def _check_architecture(path: str) -> None:
    try:
        layer_map_from_dir(path)  # reads config.json only
    except ValueError as exc:
        raise ConfigError(f"base_model.path={path!r}: {exc}") from None


def _declared_architectures(config_json: Path) -> list:
    try:
        return list(json.loads(config_json.read_text()).get("architectures") or [])
    except (OSError, ValueError, AttributeError, TypeError):
        return []
