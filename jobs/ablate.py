"""`python -m jobs.ablate --study stability [--steps K] [--out DIR] [--only a,b] [--set KEY=VALUE ...]`

Runs every variant of a study as its own `python -m jobs.rl` run (same base model, seed and bf16 rollouts, so
the train-inference mismatch is real), then writes the comparison into `<out>/report/`: `summary.md` (the
table), `summary.json` and one PNG per curve (entropy, train-inference KL, reward, held-out pass@1), one
line per variant. A variant whose run finished is not run again, so an interrupted study resumes; delete its
folder to rerun it. `--set` overrides apply to every variant (e.g. `--set base_model.path=...`).

Studies:
    stability  GRPO+R3, GRPO without replay, GSPO, GSPO-IcePop, MISC, MISC+WPSM on the standard split;
               GRPO+R3 with AHRL off/on on the hard split (operands of 4-5 digits, beyond the pretraining
               corpus). docs/rl_algorithms.md, 'Stability ablation'.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobs.ablate_report import write_study_report


@dataclass(frozen=True)
class Variant:
    """One run of a study: a recipe plus `--set` overrides."""

    name: str
    recipe: str
    overrides: tuple[str, ...]
    split: str = "standard"
    """Which prompt split it trains and evaluates on (the report groups by it)."""


@dataclass(frozen=True)
class Study:
    name: str
    variants: tuple[Variant, ...]


HARD_SPLIT = ("prompts.max_digits=5", "prompts.min_digits=4")  # max first: min is checked against it


def stability(steps: int) -> Study:
    """The train-inference stability and ERNIE 5.0 stabiliser study (16 prompts x 8 samples per step)."""
    common = (f"loop.num_steps={steps}", f"eval.every_steps={max(1, steps // 2)}", "eval.num_prompts=256",
              "checkpoint_every=0")
    base = "grpo_tiny_bf16_r3"  # bf16 rollouts, R3, 16 x 8, lr 2e-4, no KL term, constant LR
    variants = [
        Variant("grpo_r3", base, common),
        Variant("grpo_no_replay", base, (*common, "learner.routing_replay=off")),
        Variant("gspo", base, (*common, "learner.loss=gspo")),
        Variant("gspo_icepop", base, (*common, "learner.loss=gspo_icepop")),
        Variant("misc", base, (*common, "learner.loss=misc")),
        Variant("misc_wpsm", base, (*common, "learner.loss=misc", "loop.wpsm.enabled=true")),
        Variant("hard_grpo_r3", base, (*common, *HARD_SPLIT), split="hard"),
        Variant("hard_grpo_r3_ahrl", base, (*common, *HARD_SPLIT, "loop.ahrl.enabled=true"), split="hard"),
    ]
    return Study("stability", tuple(variants))


STUDIES: dict[str, Callable[[int], Study]] = {"stability": stability}


def _run_variant(variant: Variant, run_dir: Path, extra: list[str], log: Path) -> float:
    """Runs one variant to completion (a fresh `jobs.rl` process); returns its wall time in seconds."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished earlier attempt of this study (finished ones are skipped)
    sets = [arg for item in (*variant.overrides, *extra) for arg in ("--set", item)]
    cmd = [sys.executable, "-m", "jobs.rl", "--recipe", variant.recipe, "--run-dir", str(run_dir), *sets]
    start = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ)).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"jobs.ablate: variant {variant.name!r} failed (exit {rc}); its output is in {log}; "
                           f"command: {' '.join(cmd)}")
    return seconds


def run_study(study: Study, out: Path, extra: list[str], only: set[str] | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for variant in study.variants:
        run_dir, done = out / variant.name, out / f"{variant.name}.done.json"
        if (only and variant.name not in only) or done.exists():
            continue
        print(f"[ablate] {variant.name}: {variant.recipe} {' '.join(variant.overrides)}", flush=True)
        seconds = _run_variant(variant, run_dir, extra, out / f"{variant.name}.log")
        done.write_text(json.dumps({"wall_seconds": seconds, "recipe": variant.recipe,
                                    "overrides": [*variant.overrides, *extra]}) + "\n")
        print(f"[ablate] {variant.name}: done in {seconds / 60:.1f} min", flush=True)
    return write_study_report(out, [(v.name, v.split) for v in study.variants])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.ablate", description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, choices=sorted(STUDIES))
    parser.add_argument("--steps", type=int, default=20, help="RL steps per variant (evaluated every steps/2)")
    parser.add_argument("--out", default="", help="study folder (default runs/ablate_<study>)")
    parser.add_argument("--only", default="", help="comma-separated variant names to run (others are reused)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every variant, e.g. --set base_model.path=models/x/full")
    args = parser.parse_args(argv)
    if args.steps < 1:
        print(f"error: jobs.ablate: --steps={args.steps} must be >= 1; use e.g. 30", file=sys.stderr)
        return 2
    study = STUDIES[args.study](args.steps)
    names = {v.name for v in study.variants}
    only = {s for s in args.only.split(",") if s} or None
    if only and only - names:
        print(f"error: jobs.ablate: --only names {sorted(only - names)} are not variants of {args.study!r}; "
              f"choose from {sorted(names)}", file=sys.stderr)
        return 2
    report = run_study(study, Path(args.out or f"runs/ablate_{args.study}"), args.overrides, only)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
