"""Provides the RL job's base model: a given HF directory, or the pretraining recipe's output, trained once
and cached under `models/<recipe>-<config hash>/` so that a second `make run` reuses it."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from jobs.recipes import recipes_for
from jobs.rl_config import BaseModelConfig
from pretrain.stage import run_pretraining
from rl_platform.config import ConfigError, config_to_dict
from rl_platform.run_dir import RunDir

logger = logging.getLogger(__name__)


def ensure_base_model(config: BaseModelConfig) -> Path:
    if config.path:
        path = Path(config.path)
        if not (path / "config.json").exists():
            raise ConfigError(f"base_model.path={config.path!r} has no config.json; give an exported HF "
                              "directory or leave it empty to pretrain one")
        return path
    recipes = recipes_for("pretrain")
    if config.pretrain_recipe not in recipes:
        raise ConfigError(f"base_model.pretrain_recipe={config.pretrain_recipe!r} is unknown; "
                          f"choose one of {sorted(recipes)}")
    pretrain_config = recipes[config.pretrain_recipe]()
    tree = config_to_dict(pretrain_config)
    tree.pop("checkpoint", None)  # how checkpoints are kept does not change the model: same cache entry
    digest = hashlib.sha1(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(config.cache_dir) / f"{config.pretrain_recipe}-{digest}"
    model_dir = root / "models" / "full"
    if (root / "models" / "family.json").exists():
        logger.info("reusing the pretrained base model in %s", model_dir)
        return model_dir
    logger.info("no cached base model: pretraining %s into %s", config.pretrain_recipe, root)
    pretrain_config.run.run_dir = str(root)
    run_dir = RunDir.create(pretrain_config.run, config.pretrain_recipe, pretrain_config)
    try:
        run_pretraining(pretrain_config, run_dir.path, run_dir.log_metrics, run_files=run_dir)
    finally:
        run_dir.close()
    return model_dir
