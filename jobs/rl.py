"""`python -m jobs.rl --recipe <name> [--set ...] [--address ADDR] [--run-dir DIR [--resume]] [--dry-run]`: RL on Ray.

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
import time
from pathlib import Path

from jobs.base_model import describe_base_model, ensure_base_model
from jobs.cli import run_entry
from jobs.preflight import check_base_model, check_ray_address
from jobs.rl_config import RLJobConfig
from jobs.rl_recovery import ROLE, GuardedTrainer, LearnerFailed, RLCheckpoints, learner_failure_message
from jobs.rl_report import write_rl_report
from rl_platform.checkpointing import CheckpointError
from rl_platform.config import ConfigError
from rl_platform.controller import Controller, SamplingConfig
from rl_platform.evaluation import evaluate_pass_rate
from rl_platform.ledger import Ledger
from rl_platform.model.adapter import layer_map_from_dir
from rl_platform.model.tokenizer import load_tokenizer
from rl_platform.progress import Progress, format_duration
from rl_platform.run_dir import RunDir, setup_logging
from rl_platform.shutdown import GracefulStop, resume_command
from rl_platform.supervision import EngineFailed

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


def _local_cpus() -> int:
    return max(2, os.cpu_count() or 2)


def run(recipe: str, config: RLJobConfig, args: argparse.Namespace) -> int:
    setup_logging("driver")
    try:
        base_path = _preflight(recipe, config, args)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: jobs.rl: {exc}", file=sys.stderr)
        return 2
    run_dir = RunDir.create(config.run, recipe, config)
    started = _start_ray(args.address, num_cpus=_local_cpus())
    try:
        with GracefulStop() as stop:  # after ray.init, which installs its own SIGTERM handler
            return _train_with_restarts(config, run_dir, base_path, args.resume, stop)
    finally:
        run_dir.close()
        if started:
            import ray

            ray.shutdown()


def _preflight(recipe: str, config: RLJobConfig, args: argparse.Namespace) -> Path:
    """Everything checkable before Ray starts (docs/fault_tolerance.md, 'Bad input'); returns the base model."""
    # --resume without a valid checkpoint was refused by the shared CLI (jobs/cli.py) already
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address)
    # no model, an unknown recipe, a bad path or an unsupported architecture fails here (and in --dry-run)
    describe_base_model(config.base_model)
    base_path = ensure_base_model(config.base_model)
    try:
        layer_map_from_dir(base_path)  # an unsupported architecture is refused before any actor starts
    except ValueError as exc:
        raise ConfigError(f"base_model.path={str(base_path)!r}: {exc}") from None
    check_base_model(base_path)
    return base_path


def _train_with_restarts(config: RLJobConfig, run_dir: RunDir, base_path: Path, resume: bool,
                         stop: GracefulStop) -> int:
    """`_train`, restarted from the newest checkpoint up to `loop.auto_resume` times when the learner fails."""
    checkpoints = RLCheckpoints(run_dir, config.checkpoint)
    restarts = 0
    while True:
        try:
            return _train(config, run_dir, base_path, resume, stop, checkpoints)
        except (LearnerFailed, EngineFailed) as failure:  # an actor fault supervision could not repair
            if restarts >= config.loop.auto_resume:
                print(learner_failure_message(failure, checkpoints, run_dir), file=sys.stderr)
                return 1
            restarts += 1
            newest = checkpoints.newest()
            logger.error("%s; auto_resume %d/%d: restarting the roles from %s", failure, restarts,
                         config.loop.auto_resume, newest.path if newest else "step 0 (no checkpoint yet)")
            resume = newest is not None
            if newest is None:
                run_dir.truncate_jsonl({})


def _stop_roles(*clients: object) -> None:
    """Kills the actors behind the role clients (a restart starts new ones; the old may hold the cores)."""
    import ray

    from actors.learner_group import LearnerGroup

    for client in clients:
        if isinstance(client, LearnerGroup):  # it also frees its placement group
            client.shutdown()
            continue
        for handle in [*getattr(client, "handles", []), *filter(None, [getattr(client, "handle", None)])]:
            ray.kill(handle)


def _train(config: RLJobConfig, run_dir: RunDir, base_path: Path, resume: bool, stop: GracefulStop,
           checkpoints: RLCheckpoints) -> int:
    from actors.remote import start_roles

    logger.info("starting the actors (rollout engine, reward pool, learner)")
    # the loss must score tokens under the distribution the engine sampled them from
    learner = dataclasses.replace(config.learner, temperature=config.sampling.temperature,
                                  schedule_steps=config.loop.num_steps * config.learner.num_minibatches,
                                  loss=config.loop.rollout.with_default_correction(config.learner.loss))
    if learner.dump.enabled and not learner.dump.dir:
        learner.dump = dataclasses.replace(learner.dump, dir=str(run_dir.path / "batches"))
    generator, scorer, remote_trainer = start_roles(model_path=str(base_path), rollout=config.rollout,
                                                    learner=learner, reward_config=config.reward,
                                                    resources=config.resources, seed=config.run.seed,
                                                    overlap=config.loop.rollout.overlap)
    try:
        return _loop(config, run_dir, base_path, resume, stop, checkpoints, generator, scorer,
                     GuardedTrainer(remote_trainer))
    except (LearnerFailed, EngineFailed):
        _stop_roles(generator, scorer, remote_trainer)
        raise


def _loop(config: RLJobConfig, run_dir: RunDir, base_path: Path, resume: bool, stop: GracefulStop,
          checkpoints: RLCheckpoints, generator, scorer, trainer: GuardedTrainer) -> int:
    tokenizer = load_tokenizer(base_path)
    prompts = config.prompts.build(tokenizer, config.run.seed)
    sampling = dataclasses.replace(config.sampling, seed=config.sampling.seed + 1_000_003 * config.run.seed)
    start = checkpoints.resume(trainer) if resume else 0  # cuts ledger.jsonl back to the checkpoint too
    # a resumed run continues the ledger: what the checkpoint still owed is dropped and issued again
    ledger = Ledger.continue_file(run_dir.path / "ledger.jsonl", run_dir.jsonl("ledger.jsonl"))
    controller = Controller(generator, scorer, trainer, prompts.train_batch, config.loop, sampling,
                            record_rollouts=run_dir.log_rollouts, ledger=ledger,
                            hint_prompt=getattr(prompts, "with_hint", None),  # sources with worked solutions
                            resample_prompts=getattr(prompts, "resample_batch", None))  # DAPO refills
    generator.attach(controller.scheduler)  # a lost engine's samples are re-issued (rl_platform/supervision.py)
    if resume:
        # the dataset cursor and the groups admitted but not trained (a checkpoint without them: step's cursor)
        controller.scheduler.resume(start, checkpoints.resumed_state.get("scheduler"))
        controller.policy_version = controller.sync_weights(wait=True)
        logger.info("resumed at step %d (policy version %d)", start, controller.policy_version)
    evaluate = _evaluator(config, generator, scorer, prompts.held_out(config.eval.num_prompts), run_dir)

    first = evaluate(start) if start == 0 else None
    num_steps = config.loop.num_steps
    with Progress(total=num_steps, initial=start, desc="rl", unit="step", show_lines=False) as progress:
        for step in range(start, num_steps):
            if stop.requested:  # a signal during start-up or an evaluation: nothing of this step ran yet
                return _stopped(checkpoints, trainer, run_dir, step, stop, controller)
            began = time.perf_counter()
            trainer.step = step
            metrics = controller.run_step(step) | generator.metrics() | scorer.metrics()  # + fault counters
            run_dir.log_metrics(step + 1, metrics)
            last = step + 1 == num_steps
            # evaluate before checkpointing, so a checkpoint covers every row logged for its step
            if config.eval.every_steps and (step + 1) % config.eval.every_steps == 0 and not last \
                    and not stop.requested:
                evaluate(step + 1)
            progress.update(reward=f"{metrics['reward/mean']:.3f}")
            progress.write(step_summary(step + 1, num_steps, metrics, time.perf_counter() - began, progress.eta_s))
            if stop.requested and not last:
                return _stopped(checkpoints, trainer, run_dir, step + 1, stop, controller)
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and not last:
                # samples in flight are issued again after a resume; the scheduler state says which groups
                checkpoints.save(trainer, step + 1, {"scheduler": controller.scheduler.state_dict()})
    controller.close()  # stop generating for steps that will not run
    logger.info("ledger: %s", ledger.summary())
    final = evaluate(num_steps)
    checkpoints.save(trainer, num_steps, {"scheduler": controller.scheduler.state_dict()})
    policy_dir = trainer.export(str(run_dir.path / "models" / "policy"))
    if config.learner.elastic.enabled:  # elastic RL post-trained the whole family: ship every member
        family = trainer.call("export_family", str(run_dir.path / "models"), policy_dir)
        print(f"family: {', '.join(family)} under {run_dir.path / 'models'} (family.json)")
    report = write_rl_report(run_dir.path, first, final, policy_dir)
    for key, label in (("eval/pass_rate", "greedy"), ("eval/sampled_pass_rate", "sampled")):
        if key in final:
            print(f"held-out pass rate ({label}): before {first[key] if first else float('nan'):.3f} "
                  f"-> after {final[key]:.3f}")
    print(f"policy: {policy_dir}")
    print(f"report: {report.with_name('report.html')} (also {report.name})")
    return 0


def _stopped(checkpoints: RLCheckpoints, trainer: GuardedTrainer, run_dir: RunDir, step: int,
             stop: GracefulStop, controller: Controller) -> int:
    info = checkpoints.save(trainer, step, {"scheduler": controller.scheduler.state_dict()})
    controller.close()  # after the checkpoint: a resume issues the in-flight samples again
    print(f"stopped after step {step} ({stop.reason}); checkpoint {info.path}. Continue with:\n  "
          f"{resume_command('jobs.rl', run_dir.path)}")
    return 0


def step_summary(step: int, num_steps: int, metrics: dict[str, float], seconds: float, eta_s: float) -> str:
    """The one line per RL step: step, reward, pass rate, KL, mismatch, s/step, ETA of the run."""
    return (f"step {step}/{num_steps} reward {metrics['reward/mean']:.3f} pass {metrics['reward/pass_rate']:.3f} "
            f"kl_ti {metrics.get('train/kl_train_infer', 0.0):.1e} "
            f"mismatch {metrics.get('moe/route_mismatch', 0.0):.3f} {seconds:.1f} s/step "
            f"ETA {format_duration(eta_s)}")


def _evaluator(config: RLJobConfig, generator, scorer, held_out, run_dir: RunDir):
    """evaluate(step) -> held-out metrics, logged; greedy pass@1 and (num_samples > 0) sampled pass@1, each in
    chunks that fill the engines' batch once, with a progress display per pass."""
    greedy = SamplingConfig(num_samples_per_prompt=1, max_tokens=config.eval.max_tokens, temperature=0.0)
    sampled = SamplingConfig(num_samples_per_prompt=max(1, config.eval.num_samples),
                             max_tokens=config.eval.max_tokens, temperature=config.eval.temperature, seed=7_919)
    passes = [(greedy, "eval/", "greedy")]
    if config.eval.num_samples > 0:
        passes.append((sampled, "eval/sampled_", "sampled"))

    def evaluate(step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for sampling, prefix, label in passes:
            samples = sampling.num_samples_per_prompt
            chunk = max(1, config.rollout.num_workers * config.rollout.max_num_seqs // samples)
            with Progress(total=len(held_out) * samples, desc=f"eval {label} (step {step})", unit="sample") as bar:
                metrics.update(evaluate_pass_rate(generator, scorer, held_out, sampling, config.loop.pass_threshold,
                                                  prefix=prefix, chunk_size=chunk, by="task",
                                                  on_chunk=lambda n, k=samples, b=bar: b.update(n * k)))
        run_dir.log_metrics(step, metrics)
        logger.info("step %d held-out pass rate: greedy %.3f, sampled %.3f", step, metrics["eval/pass_rate"],
                    metrics.get("eval/sampled_pass_rate", float("nan")))
        return metrics

    return evaluate


def plan(recipe: str, config: RLJobConfig, args: argparse.Namespace) -> list[str]:
    """What a run of this config would start (printed by --dry-run)."""
    res, roll, learner = config.resources, config.rollout, config.learner
    target = args.address or os.environ.get("RAY_ADDRESS")
    cpus = (roll.num_workers * res.rollout_cpus + res.num_reward_workers * res.reward_cpus
            + res.learner_cpus * learner.num_ranks)
    reward = getattr(type(config.reward), "registered_name", type(config.reward).__name__)
    loss = getattr(type(learner.loss), "registered_name", type(learner.loss).__name__)
    ranks, each = ("1 learner", "") if learner.num_ranks == 1 else (f"{learner.num_ranks} learner ranks", " each")
    reference = "the base (adapters off)" if learner.lora.enabled else "a frozen reference copy"
    kl = f", k3 KL {learner.loss.kl_coef} to {reference}" if learner.loss.kl_coef > 0 else ""
    elastic = "; elastic RL: every row trains a sampled family member" if learner.elastic.enabled else ""
    evals = sorted({0, config.loop.num_steps} | set(range(config.eval.every_steps, config.loop.num_steps,
                                                           config.eval.every_steps or config.loop.num_steps)))
    sampled = (f" + {config.eval.num_samples} samples per prompt at T={config.eval.temperature}"
               if config.eval.num_samples else "")
    s = config.sampling
    ray = f"join {target}" if target else f"local instance, {_local_cpus()} logical CPUs, started and stopped here"
    return [
        f"base model: {describe_base_model(config.base_model)}",
        f"ray: {ray}",
        f"actors: {roll.num_workers} rollout engine(s): vLLM in-process, {roll.dtype}, routed-expert capture, "
        f"{res.rollout_cpus} CPU, max_num_seqs {roll.max_num_seqs}, KV cache {roll.kv_cache_gib} GiB",
        f"        {res.num_reward_workers} reward worker(s): {reward}, {res.reward_cpus} CPU each",
        f"        {ranks}: DeepSpeed ZeRO-{learner.zero_stage}, {'bf16' if learner.bf16 else 'float32'}, "
        f"routing replay {learner.routing_replay}, loss {loss}{kl}, {res.learner_cpus} CPU{each}",
        f"        trains: {learner.lora.describe()}{elastic}",
        f"resources: {cpus:g} logical CPUs requested, 0 GPUs",
        f"per step: {config.loop.num_prompts_per_step} prompts x {s.num_samples_per_prompt} samples = "
        f"{config.loop.num_prompts_per_step * s.num_samples_per_prompt} rollouts of <= {s.max_tokens} tokens at "
        f"T={s.temperature}; {learner.num_minibatches} optimizer step(s), micro-batch {learner.micro_batch_size}",
        f"rollout mode: {_describe_mode(config)}",
        f"steps: {config.loop.num_steps}; checkpoint every {config.checkpoint_every or 'end only'}",
        f"evaluation: {config.eval.num_prompts} held-out prompts, greedy{sampled}, at steps "
        f"{', '.join(map(str, evals))}",
    ]


def _describe_mode(config: RLJobConfig) -> str:
    mode, loop = config.loop.rollout, config.loop
    name = getattr(type(mode), "registered_name", type(mode).__name__)
    if not mode.overlap:
        return f"{name}: generate, then train (engines idle while the learner trains)"
    rollout_share, learner_share = config.resources.shares(True, config.rollout.num_threads)
    correction = getattr(type(mode.with_default_correction(config.learner.loss).correction), "registered_name", "?")
    return (f"{name}: pool of {mode.pool_groups(loop.num_prompts_per_step)} groups generating while the learner "
            f"trains, max staleness {loop.max_staleness}, correction {correction}; cores here: rollout "
            f"{rollout_share.cores()}, learner {learner_share.cores()}")


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")


def main(argv: list[str] | None = None) -> int:
    return run_entry("rl", __doc__.splitlines()[0], run, argv, extra_args=_extra, plan=plan, checkpoints=ROLE)


if __name__ == "__main__":
    sys.exit(main())
