"""`python -m jobs.replay_study --base DIR --seeds 0,1,2 --steps 30`: routing replay R3 / R2 / off side by side.

Runs `python -m jobs.rl` once per (mode, seed) (same recipe, same base, same prompts per seed), each in its own
run folder under --out, then writes --out/study.md, study.json and one PNG per metric
(rl_platform/replay_study_stats.py: mean / median / p90 / max of the per-step values with hierarchical
bootstrap 95 % intervals; held-out pass@1 over seeds). Finished runs are reused, so an interrupted study
continues where it stopped; --report-only only re-aggregates.

With --decompose every run also dumps its updates (learner.dump) and `jobs.inspect_mismatch --all` scores the
same rollouts with and without the engine's routes (fp32 and bf16): a paired, same-batch measurement of what
replay removes, free of the run-to-run noise of the side-by-side. The weight dumps are deleted afterwards
unless --keep-dumps. Docs: docs/routing_replay.md, 'Study'.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from jobs.replay_study_report import write_study_report
from rl_platform.run_dir import read_metrics


def run_is_complete(run_dir: Path, steps: int) -> bool:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return False
    return any(r.get("step") == steps and "eval/pass_rate" in r for r in read_metrics(path))


def rl_command(args: argparse.Namespace, mode: str, seed: int, run_dir: Path) -> list[str]:
    sets = [f"base_model.path={args.base}", f"run.seed={seed}", f"learner.routing_replay={mode}",
            f"loop.num_steps={args.steps}", f"eval.num_prompts={args.eval_prompts}", "eval.every_steps=0",
            "run.use_wandb=false", "checkpoint_every=0", *args.set]
    if args.decompose:
        sets.append("learner.dump.enabled=true")
    command = [sys.executable, "-m", "jobs.rl", "--recipe", args.recipe, "--run-dir", str(run_dir)]
    for item in sets:
        command += ["--set", item]
    return command


def run_one(args: argparse.Namespace, mode: str, seed: int) -> Path:
    run_dir = args.out / f"{mode}-seed{seed}"
    if run_is_complete(run_dir, args.steps):
        print(f"[study] reuse {run_dir}")
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start it again from scratch
    run_dir.mkdir(parents=True)
    start = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        code = subprocess.call(rl_command(args, mode, seed, run_dir), stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"jobs.rl for {mode} seed {seed} exited {code}; see {run_dir.parent / run_dir.name}.log")
    print(f"[study] {run_dir} done in {time.perf_counter() - start:.0f} s")
    if args.decompose:
        decompose_run(run_dir, keep=args.keep_dumps)
    return run_dir


def decompose_run(run_dir: Path, keep: bool) -> None:
    from jobs.inspect_mismatch import main as inspect_main

    if inspect_main([str(run_dir), "--all", "--core"]) != 0:
        raise RuntimeError(f"decomposition of {run_dir} failed")
    if not keep:
        for weights in (run_dir / "batches").glob("weights_*"):
            shutil.rmtree(weights)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.replay_study", description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=False, default="", help="base model directory (exported HF)")
    parser.add_argument("--recipe", default="grpo_tiny_bf16_r3", help="jobs.rl recipe (mode and seed are set)")
    parser.add_argument("--modes", default="R3,R2,off")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-prompts", type=int, default=256)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra jobs.rl override")
    parser.add_argument("--out", type=Path, default=Path("runs/replay_study"))
    parser.add_argument("--title", default="", help="heading of study.md (default: the recipe and overrides)")
    parser.add_argument("--decompose", action="store_true", help="dump updates and decompose every step")
    parser.add_argument("--keep-dumps", action="store_true", help="keep the per-update weight dumps")
    parser.add_argument("--report-only", action="store_true", help="aggregate the runs already in --out")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    bad = [m for m in args.modes if m not in ("R3", "R2", "off")]
    if bad:
        parser.error(f"--modes: {bad} are not routing-replay modes; use R3, R2, off")
    if not args.report_only and not (Path(args.base) / "config.json").exists():
        parser.error(f"--base {args.base!r} has no config.json; give an exported base model directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    spec = {"recipe": args.recipe, "base": args.base, "modes": args.modes, "seeds": args.seeds, "steps": args.steps,
            "eval_prompts": args.eval_prompts, "set": args.set, "decompose": args.decompose,
            "command": "python -m jobs.replay_study " + " ".join(sys.argv[1:] if argv is None else argv)}
    if not args.report_only:
        (args.out / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
        for seed in args.seeds:  # seed-major: a partial study still compares every mode on the seeds it has
            for mode in args.modes:
                run_one(args, mode, seed)
    elif (args.out / "spec.json").exists():
        spec = json.loads((args.out / "spec.json").read_text())
    title = args.title or f"{spec['recipe']} {' '.join(spec['set'])}".strip()
    md = write_study_report(args.out, spec, title)
    print(f"[study] report: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
