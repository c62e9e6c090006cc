"""CPU cost of one pretraining optimizer step: the ultra-sparse recipes against pretrain_tiny (the baseline).

Each recipe builds its real trainer (DeepSpeed engine, elastic sampling, AdaGC, aux-loss-free bias update) in a
temporary directory, runs 2 warm-up steps, then times the same step indices for every recipe (so the elastic
sub-model draws are the same). CPU seconds are the process's user+sys time (all threads), which a loaded
machine inflates less than wall time; one torch thread, as the ultra-sparse recipes are run on a busy machine
(docs/ultrasparse.md, 'Speed on CPU'). Ratios are recipe / pretrain_tiny.

    python benchmarks/pretrain_step_cpu.py [--steps 8]     # writes benchmarks/results/pretrain_step_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.recipes import recipes_for  # noqa: E402
from pretrain.data.pipeline import build_tokenizer  # noqa: E402
from pretrain.trainer import PretrainTrainer  # noqa: E402

BASELINE = "pretrain_tiny"
RECIPES = [BASELINE, "pretrain_ultrasparse_tiny", "pretrain_ultrasparse_tiny_e256"]
WARMUP_STEPS = 2
RESULT_PATH = Path(__file__).parent / "results" / "pretrain_step_cpu.json"


def time_recipe(name: str, steps: int) -> dict:
    config = recipes_for("pretrain")[name]()
    tokenizer = build_tokenizer(config.data, config.run.seed)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = PretrainTrainer(config, tokenizer, run_dir, lambda step, metrics: None)
        cpu_s, wall_s = [], []
        for i in range(WARMUP_STEPS + steps):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            trainer.train_step()
            if i >= WARMUP_STEPS:
                cpu_s.append(time.process_time() - cpu0)
                wall_s.append(time.perf_counter() - wall0)
    model = config.model
    return {"recipe": name, "experts": model.num_experts, "top_k": model.top_k,
            "activation_ratio": model.activation_ratio(), "params_m": model.num_params() / 1e6,
            "active_params_m": model.num_params(active=True) / 1e6,
            "tokens_per_step": config.loop.micro_batch_size * config.loop.grad_accum_steps * config.data.seq_len,
            "cpu_s_per_step": statistics.median(cpu_s), "wall_s_per_step": statistics.median(wall_s),
            "cpu_s_900_steps_est": statistics.median(cpu_s) * config.loop.num_steps}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per recipe (after 2 warm-up steps)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"[pretrain_step_cpu] median over {args.steps} optimizer steps, one thread, baseline {BASELINE}")
    records = []
    for name in RECIPES:
        record = time_recipe(name, args.steps)
        record["cpu_vs_baseline"] = record["cpu_s_per_step"] / records[0]["cpu_s_per_step"] if records else 1.0
        records.append(record)
        print(f"  {name:32s} E={record['experts']:<4d} K={record['top_k']}  activation={record['activation_ratio']:.3f}"
              f"  cpu_s/step={record['cpu_s_per_step']:.3f}  wall_s/step={record['wall_s_per_step']:.3f}"
              f"  cpu_vs_baseline={record['cpu_vs_baseline']:.2f}")
    RESULT_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULT_PATH.write_text(json.dumps({"baseline": BASELINE, "threads": 1, "timed_steps": args.steps,
                                       "torch": torch.__version__, "results": records}, indent=2) + "\n")
    print(f"  wrote {RESULT_PATH}")


if __name__ == "__main__":
    main()
