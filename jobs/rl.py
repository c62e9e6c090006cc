"""`python -m jobs.rl --recipe <name> [--set ...] [--address ADDR] [--resume]`: RL on Ray.

Embedded default: no address -> a local Ray instance (dashboard on 127.0.0.1) is started and stopped here.
With `--address` (or RAY_ADDRESS, as set by `ray job submit`) it joins that cluster; the same command is
the entrypoint of `ray job submit --working-dir . -- python -m jobs.rl --recipe <name>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from jobs.base_model import ensure_base_model
from jobs.cli import run_entry
from jobs.rl_config import RLJobConfig
from jobs.rl_report import write_rl_report
from rl_platform.controller import Controller, SamplingConfig
from rl_platform.evaluation import evaluate_pass_rate
from rl_platform.ledger import Ledger
from rl_platform.model.tokenizer import load_tokenizer
from rl_platform.run_dir import RunDir, setup_logging
from rl_platform.tasks.prompts import ArithmeticPrompts

logger = logging.getLogger(__name__)


def _start_ray(address: str | None, num_cpus: int) -> bool:
    """Connects to `address` (or RAY_ADDRESS) or starts a private local instance; True if we started it."""
    import ray

    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}}
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        ray.init(address=target, runtime_env=env, log_to_driver=True)
        return False
    context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", runtime_env=env,
                       log_to_driver=True)
    logger.info("local Ray started (dashboard http://%s)", context.dashboard_url or "off")
    return True


def run(recipe: str, config: RLJobConfig, args: argparse.Namespace) -> int:
    setup_logging("driver")
    if args.resume and not config.run.run_dir:
        print("error: jobs.rl: --resume needs --run-dir <the run to continue>", file=sys.stderr)
        return 2
    base_path = ensure_base_model(config.base_model)
    run_dir = RunDir.create(config.run, recipe, config)
    started = _start_ray(args.address, num_cpus=max(2, os.cpu_count() or 2))
    try:
        return _train(config, run_dir, base_path, resume=args.resume)
    finally:
        run_dir.close()
        if started:
            import ray

            ray.shutdown()


def _train(config: RLJobConfig, run_dir: RunDir, base_path: Path, resume: bool) -> int:
    from actors.remote import start_roles

    # the loss must score tokens under the distribution the engine sampled them from
    learner = dataclasses.replace(config.learner, temperature=config.sampling.temperature)
    generator, scorer, trainer = start_roles(model_path=str(base_path), rollout=config.rollout,
                                             learner=learner, reward_config=config.reward,
                                             resources=config.resources, seed=config.run.seed,
                                             overlap=config.loop.rollout.overlap)
    tokenizer = load_tokenizer(base_path)
    prompts = ArithmeticPrompts(config.prompts, tokenizer, config.run.seed)
    held_out = prompts.held_out(config.eval.num_prompts)
    sampling = dataclasses.replace(config.sampling, seed=config.sampling.seed + 1_000_003 * config.run.seed)
    ledger = Ledger(run_dir.path / "ledger.jsonl")
    controller = Controller(generator, scorer, trainer, prompts.train_batch, config.loop, sampling,
                            record_rollouts=run_dir.log_rollouts, ledger=ledger)
    ckpt = run_dir.checkpoints / "rl"
    start = 0
    if resume and (ckpt / "latest").exists():
        state = trainer.load_checkpoint(str(ckpt))
        start = int(state["step"])
        if "scheduler" in state:  # the dataset cursor and the groups admitted but not trained
            controller.scheduler.load_state_dict(state["scheduler"])
        else:
            controller.scheduler.resume_at(start)
        controller.policy_version = controller.sync_weights()
        logger.info("resumed at step %d (policy version %d)", start, controller.policy_version)
    greedy = SamplingConfig(num_samples_per_prompt=1, max_tokens=config.eval.max_tokens, temperature=0.0)
    sampled = SamplingConfig(num_samples_per_prompt=max(1, config.eval.num_samples), max_tokens=config.eval.max_tokens,
                             temperature=config.eval.temperature, seed=7_919)

    def evaluate(step: int) -> dict[str, float]:
        metrics = evaluate_pass_rate(generator, scorer, held_out, greedy, config.loop.pass_threshold)
        if config.eval.num_samples > 0:
            metrics.update(evaluate_pass_rate(generator, scorer, held_out, sampled, config.loop.pass_threshold,
                                              prefix="eval/sampled_"))
        run_dir.log_metrics(step, metrics)
        logger.info("step %d held-out pass rate: greedy %.3f, sampled %.3f", step, metrics["eval/pass_rate"],
                    metrics.get("eval/sampled_pass_rate", float("nan")))
        return metrics

    first = evaluate(start) if start == 0 else None
    for step in range(start, config.loop.num_steps):
        metrics = controller.run_step(step)
        run_dir.log_metrics(step + 1, metrics)
        logger.info("step %d reward %.3f pass %.3f kl_ti %.2e mismatch %.3f (%.1f s)", step + 1,
                    metrics["reward/mean"], metrics["reward/pass_rate"], metrics.get("train/kl_train_infer", 0.0),
                    metrics.get("moe/route_mismatch", 0.0), metrics["perf/step_seconds"])
        last = step + 1 == config.loop.num_steps
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and not last:
            # in-flight samples are regenerated after a resume; the cursor says which groups were trained
            trainer.save_checkpoint(str(ckpt), {"step": step + 1, "scheduler": controller.scheduler.state_dict()})
        if config.eval.every_steps and (step + 1) % config.eval.every_steps == 0 and not last:
            evaluate(step + 1)
    controller.close()  # stop generating for steps that will not run
    logger.info("ledger: %s", ledger.summary())
    ledger.close()
    final = evaluate(config.loop.num_steps)
    trainer.save_checkpoint(str(ckpt), {"step": config.loop.num_steps})
    policy_dir = trainer.export(str(run_dir.path / "models" / "policy"))
    report = write_rl_report(run_dir.path, first, final, policy_dir)
    for key, label in (("eval/pass_rate", "greedy"), ("eval/sampled_pass_rate", "sampled")):
        if key in final:
            print(f"held-out pass rate ({label}): before {first[key] if first else float('nan'):.3f} "
                  f"-> after {final[key]:.3f}")
    print(f"policy: {policy_dir}")
    print(f"report: {report}")
    return 0


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")


def main(argv: list[str] | None = None) -> int:
    return run_entry("rl", __doc__.splitlines()[0], run, argv, extra_args=_extra)


if __name__ == "__main__":
    sys.exit(main())
