"""`python -m jobs.train_reward_model --recipe rm_arithmetic_tiny [--set train.max_steps=300]`.

Trains a sequence-classification reward model with TRL's RewardTrainer on preference pairs built from the
arithmetic task (a correct worked answer vs a corrupted one), saves it as a HF directory in the run folder
(use it with `--set reward=reward_model --set reward.path=<run>/reward_model`) and reports held-out pairwise
accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jobs.cli import run_entry
from rewards.train_rm import TrainRewardModelConfig, train_reward_model
from rl_platform.run_dir import RunConfig, RunDir, setup_logging


@dataclass(kw_only=True, slots=True)
class RewardModelJobConfig:
    """What `python -m jobs.train_reward_model` needs."""

    train: TrainRewardModelConfig = field(default_factory=TrainRewardModelConfig)
    run: RunConfig = field(default_factory=RunConfig)


def run(recipe: str, config: RewardModelJobConfig, args: argparse.Namespace) -> int:
    setup_logging("reward-model")
    run_dir = RunDir.create(config.run, recipe, config)
    try:
        train = config.train
        if train.output_dir == TrainRewardModelConfig().output_dir:  # default: keep the model in the run folder
            train = dataclasses.replace(train, output_dir=run_dir.path / "reward_model")
        metrics = train_reward_model(train)
        run_dir.log_metrics(1, metrics)
    finally:
        run_dir.close()
    print(f"held-out pairwise accuracy: {metrics['reward_model/eval_pairwise_accuracy']:.3f}")
    print(f"reward model: {Path(train.output_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_entry("train_reward_model", __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    sys.exit(main())
