"""`python -m jobs.train_reward_model --recipe rm_arithmetic_tiny [--set train.max_steps=300]`.

Trains a sequence-classification reward model with TRL's RewardTrainer on preference pairs built from the
arithmetic task (a correct worked answer vs a corrupted one), saves it as a HF directory in the run folder
(use it with `--set reward=reward_model --set reward.path=<run>/reward_model`) and reports held-out pairwise
accuracy. It keeps no intermediate checkpoint (a run takes minutes): `--resume` on a finished run reports it,
on an unfinished one trains again in the same folder.
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
    train = config.train
    if train.output_dir == TrainRewardModelConfig().output_dir:  # default: keep the model in the run folder
        train = dataclasses.replace(train, output_dir=Path(config.run.run_dir) / "reward_model")
    done = Path(train.output_dir) / "train_metrics.json"
    if args.resume and done.exists():
        print(f"already complete: {done}")
        return 0
    run_dir = RunDir.create(config.run, recipe, config)
    try:
        metrics = train_reward_model(train)
        run_dir.log_metrics(1, metrics)
    finally:
        run_dir.close()
    print(f"held-out pairwise accuracy: {metrics['reward_model/eval_pairwise_accuracy']:.3f}")
    print(f"reward model: {Path(train.output_dir)}")
    return 0


def plan(recipe: str, config: RewardModelJobConfig, args: argparse.Namespace) -> list[str]:
    """What a run of this config would do (printed by --dry-run)."""
    t = config.train
    lora = "LoRA adapters" if t.lora is not None else "full fine-tuning"
    return [
        f"process: this one (no Ray), TRL RewardTrainer on CPU, {lora}",
        f"model: random-init {t.num_layers}-layer classifier, hidden {t.hidden_size}, vocab {t.vocab_size}",
        f"data: {t.num_train_pairs} training pairs, {t.num_eval_pairs} held-out pairs, corruptions "
        f"{', '.join(t.corruptions)}",
        f"budget: {t.max_steps} steps x batch {t.batch_size}",
    ]


def main(argv: list[str] | None = None) -> int:
    return run_entry("train_reward_model", __doc__.splitlines()[0], run, argv, plan=plan)


if __name__ == "__main__":
    sys.exit(main())
