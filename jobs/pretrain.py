"""`python -m jobs.pretrain --recipe pretrain_tiny [--set ...]`: train, evaluate and export the base-model family.

Also `--run-dir DIR [--resume]`, `--dry-run`, `--list-keys` (docs/recipes.md).
The step budget (`loop.num_steps`) defines the model; `loop.max_minutes` is a safety cap that stops the run
with a checkpoint (continue it with `--resume`) rather than export a shorter-trained model.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from jobs.cli import run_entry
from pretrain.config import PretrainJobConfig
from pretrain.stage import run_pretraining
from rl_platform.run_dir import RunDir, setup_logging
from rl_platform.shutdown import GracefulStop, resume_command


def run(recipe: str, config: PretrainJobConfig, args: argparse.Namespace) -> int:
    setup_logging("pretrain")
    run_dir = RunDir.create(config.run, recipe, config)
    hint = " ".join(["--recipe", recipe, "--run-dir", str(run_dir.path),
                     *(x for o in args.overrides if not o.startswith("loop.max_minutes=")
                       for x in ("--set", shlex.quote(o)))])
    try:
        with GracefulStop() as stop:
            result = run_pretraining(config, run_dir.path, run_dir.log_metrics, resume=args.resume, resume_hint=hint,
                                     stop=stop, run_files=run_dir)
    finally:
        run_dir.close()
    if result.stopped_by is not None:
        print(f"pretraining stopped at a checkpoint ({result.stopped_by}); continue it with:\n  "
              f"{resume_command('jobs.pretrain', run_dir.path, with_flag=True)}")
        return 0
    print(f"pretraining done in {result.train_minutes:.1f} min; val loss (full) "
          f"{result.family_losses['full']['all']:.4f}")
    print(f"report: {run_dir.report / 'report.html'} (also pretrain.md)")
    print(f"models: {run_dir.path / 'models'}")
    return 0


def plan(recipe: str, config: PretrainJobConfig, args: argparse.Namespace) -> list[str]:
    """What a run of this config would do (printed by --dry-run)."""
    m, loop, data = config.model, config.loop, config.data
    rows = loop.micro_batch_size * loop.grad_accum_steps
    clipping = getattr(type(config.optim.clipping), "registered_name", type(config.optim.clipping).__name__)
    cap = f"safety cap {loop.max_minutes:g} min (fails with a checkpoint, never exports early)" if loop.max_minutes \
        else "no safety cap"
    return [
        f"model: {m.num_params() / 1e6:.2f} M params, {m.num_params(active=True) / 1e6:.2f} M active per token "
        f"({m.num_layers} layers, {m.num_experts} experts, top-{m.top_k}, {m.num_shared_experts} shared)",
        f"process: this one (no Ray), DeepSpeed ZeRO-{loop.zero_stage}, {'bf16' if loop.bf16 else 'float32'}, "
        "0 GPUs on a CPU machine",
        f"budget: {loop.num_steps} steps x {rows} packed rows x {data.seq_len} tokens = "
        f"{loop.num_steps * rows * data.seq_len / 1e6:.1f} M tokens; {cap}",
        f"training: elastic sampling {'on' if config.elastic.enabled else 'off'}, clipping {clipping}, "
        f"SimReg weight {config.simreg.weight:g}, checkpoint every {loop.checkpoint_every or 'end only'} steps",
        f"at the end: validation of 5 family members, routing diagnostics, "
        f"{'export of the family' if config.eval.export_family else 'no export'}, report",
    ]


def main(argv: list[str] | None = None) -> int:
    return run_entry("pretrain", __doc__.splitlines()[0], run, argv, plan=plan, checkpoints="pretrain")


if __name__ == "__main__":
    sys.exit(main())
