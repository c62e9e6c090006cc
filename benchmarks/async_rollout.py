"""Rollout modes on a long-tailed task: samples/s of `urb` and `april` as a ratio to `sync`, and the response
lengths each trains on against `sync`'s (mean, two-sample KS distance). Writes benchmarks/results/async_rollout.json.

    python benchmarks/async_rollout.py [--steps 8] [--warmup 2] [--prompts 16] [--samples 8] [--modes sync,april,urb]
                                       [--model DIR]

The task: arithmetic prompts from the project's generator where 90 % have 1-digit operands (worked answer ~14
tokens) and 10 % 3-digit operands (~42 tokens): most answers short, a tail three times longer. The policy is
the cached `pretrain_tiny` base (built by `make run`), trained with the demo recipe's learner (`grpo_tiny`).
Every mode trains the same number of samples; samples/s counts the trained samples of the steps after the
warm-up over their wall time. Sampling seeds are a function of each sample's key, so `sync` and `urb` draw the
same random numbers for the same sample (they differ only through the weights that sampled it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LONG_FRAC = 0.1
SHORT_DIGITS, LONG_DIGITS = 1, 3


class LongTailPrompts:
    """prompt_batch(page, n): 1-digit problems, except LONG_FRAC of them with LONG_DIGITS-digit operands."""

    def __init__(self, tokenizer, seed: int) -> None:
        self.tokenizer, self.seed = tokenizer, seed

    def __call__(self, page: int, num_prompts: int):
        from rl_platform.tasks.arithmetic import format_prompt, worked_solution
        from rl_platform.types import Prompt

        rng = random.Random(f"{self.seed}:long-tail:{page}")
        out = []
        for i in range(num_prompts):
            digits = LONG_DIGITS if rng.random() < LONG_FRAC else SHORT_DIGITS
            low = 10 ** (digits - 1) if digits > 1 else 0
            a, b, op = rng.randint(low, 10**digits - 1), rng.randint(low, 10**digits - 1), rng.choice("+-")
            if op == "-" and b > a:
                a, b = b, a
            text = format_prompt(a, b, op)
            ids = [self.tokenizer.bos_token_id, *self.tokenizer.encode(text, add_special_tokens=False)]
            out.append(Prompt(prompt_id=f"train/{page}.{i}", text=text, token_ids=ids,
                              metadata={"answer": a + b if op == "+" else a - b,
                                        "solution": worked_solution(a, b, op), "digits": digits}))
        return out


def run_mode(name: str, args: argparse.Namespace, base: Path) -> dict:
    import ray

    from actors.remote import start_roles
    from jobs.recipes.rl import grpo_tiny
    from rl_platform.config import apply_overrides
    from rl_platform.controller import Controller
    from rl_platform.model.tokenizer import load_tokenizer

    config = apply_overrides(grpo_tiny(), [f"loop.rollout={name}"])
    config.loop = dataclasses.replace(config.loop, num_prompts_per_step=args.prompts)
    config.sampling = dataclasses.replace(config.sampling, num_samples_per_prompt=args.samples,
                                          max_tokens=args.max_tokens)
    lengths: list[list[int]] = []
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        # as jobs.rl builds it: the loss scores the sampling temperature; async modes train with TIS
        learner = dataclasses.replace(config.learner, temperature=config.sampling.temperature,
                                      schedule_steps=(args.warmup + args.steps) * config.learner.num_minibatches,
                                      loss=config.loop.rollout.with_default_correction(config.learner.loss))
        roles = start_roles(model_path=str(base), rollout=config.rollout, learner=learner,
                            reward_config=config.reward, resources=config.resources, seed=0,
                            overlap=config.loop.rollout.overlap)
        controller = Controller(*roles, LongTailPrompts(load_tokenizer(base), seed=0), config.loop,
                                config.sampling,
                                record_rollouts=lambda step, rs: lengths.append([len(r.completion.token_ids)
                                                                                 for r in rs]))
        history, start = [], None
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                start = time.perf_counter()
            history.append(controller.run_step(step))
        seconds = time.perf_counter() - start
        controller.close()
    finally:
        ray.shutdown()
    measured = lengths[args.warmup:]
    keys = ("perf/engine_busy_frac", "perf/learner_busy_frac", "rollout/staleness_mean", "rollout/partial_frac",
            "timing/generate", "timing/learn", "timing/sync")
    return {
        "mode": name, "seconds": seconds, "trained_samples": sum(len(x) for x in measured),
        "samples_per_s": sum(len(x) for x in measured) / seconds,
        "lengths": [n for x in measured for n in x],
        "step_length_means": [statistics.fmean(x) for x in measured],
        "step_means": {k: statistics.fmean(m.get(k, 0.0) for m in history[args.warmup:]) for k in keys},
        "reward_mean": statistics.fmean(m["reward/mean"] for m in history[args.warmup:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="measured steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="steps per mode before the clock starts")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--modes", default="sync,april,urb")
    parser.add_argument("--model", default="", help="HF directory of the policy (default: the cached pretrain_tiny "
                        "base, pretrained first if missing)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "async_rollout.json"))
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    from jobs.base_model import ensure_base_model
    from jobs.rl_config import BaseModelConfig
    from rl_platform.rollout_stats import ks_distance

    base = Path(args.model) if args.model else ensure_base_model(BaseModelConfig(cache_dir=str(ROOT / "models")))
    results = {name: run_mode(name, args, base) for name in args.modes.split(",")}
    reference = results.get("sync")
    for r in results.values():
        if reference is not None:
            r["samples_per_s_ratio_to_sync"] = r["samples_per_s"] / reference["samples_per_s"]
            r["length_ks_vs_sync"] = ks_distance(r["lengths"], reference["lengths"])
        r["length_mean"] = statistics.fmean(r["lengths"])
        print(f"{r['mode']:6s} {r['samples_per_s']:6.1f} samples/s ({r.get('samples_per_s_ratio_to_sync', 1):.2f}x "
              f"sync)  trained length mean {r['length_mean']:5.2f}  KS vs sync {r.get('length_ks_vs_sync', 0):.3f}  "
              f"engine busy {r['step_means']['perf/engine_busy_frac']:.2f}  learner busy "
              f"{r['step_means']['perf/learner_busy_frac']:.2f}  "
              f"staleness {r['step_means']['rollout/staleness_mean']:.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    recorded = {k: v for k, v in vars(args).items() if k != "out"}  # no machine-specific paths in the results
    Path(args.out).write_text(json.dumps({"args": recorded, "long_frac": LONG_FRAC, "digits": [SHORT_DIGITS,
                                          LONG_DIGITS], "modes": results}, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
