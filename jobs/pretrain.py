"""`python -m jobs.pretrain --recipe pretrain_tiny [--set ...]`: train, evaluate and export the base family.

Re-running with the same `--run-dir` resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from jobs.cli import run_entry
from pretrain.config import PretrainJobConfig
from pretrain.stage import run_pretraining
from rl_platform.run_dir import RunDir, setup_logging
from rl_platform.shutdown import GracefulStop, resume_command


def run(recipe: str, config: PretrainJobConfig, args: argparse.Namespace) -> int:
    setup_logging("pretrain")
    run_dir = RunDir.create(config.run, recipe, config)
    try:
        with GracefulStop() as stop:
            result = run_pretraining(config, run_dir.path, run_dir.log_metrics, stop=stop, run_files=run_dir)
    finally:
        run_dir.close()
    if result.stopped_by is not None:
        print(f"pretraining stopped at a checkpoint ({result.stopped_by}); continue it with:\n  "
              f"{resume_command('jobs.pretrain', run_dir.path, with_flag=hasattr(args, 'resume'))}")
        return 0
    print(f"pretraining done in {result.train_minutes:.1f} min; val loss (full) "
          f"{result.family_losses['full']['all']:.4f}")
    print(f"report: {run_dir.report / 'pretrain.md'}")
    print(f"models: {run_dir.path / 'models'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_entry("pretrain", __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    sys.exit(main())
