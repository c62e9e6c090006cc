"""LoRA RL vs full-parameter RL in the learner: peak memory, update time, trained and optimizer-held tensors.

    python benchmarks/lora_vs_full.py [--model models/base_tiny_900/models/full] [--ranks 8,32] [--steps 3]

Baseline: full-parameter RL with the demo recipe's learner (grpo_tiny: DeepSpeed ZeRO-2, float32, R3, GRPO
with a k3 KL to a reference, which full RL keeps as a frozen copy of the weights). Variants: the same learner
with LoRA at each rank (alpha = 2 * rank, every target; the reference is the base with adapters off). Each
variant runs in a fresh process on the same synthetic batch of the demo's size (32 prompts x 16 samples, 48
response tokens; engine log-probs and routes from the base model itself, so R3 replays real routes).
Reported per variant: the learner's peak RSS (the process's high-water mark, reset after the batch is built,
so it counts the learner's weights, reference, optimizer state and one update's activations), the median
CPU seconds (user + sys of the process, robust to other load on a shared machine) and wall seconds of one
update (`train_on_rollouts`, after one warm-up), trainable parameters; ratios against full.
Held-out pass@1 after the same number of RL steps needs whole RL runs and is not measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS, SAMPLES, PROMPT_LEN, RESPONSE_LEN = 32, 16, 12, 48


def _rollouts(model_path: str):
    """The demo-sized batch: engine log-probs and routes from the base model (teacher-forced)."""
    import torch

    from rl_platform.model.hf_interop import load_hf
    from rl_platform.types import Completion, Prompt, RewardResult, Rollout

    model = load_hf(model_path).eval()
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt_ids = torch.randint(4, vocab, (PROMPTS, PROMPT_LEN), generator=g)
    rollouts, advantages = [], []
    for p in range(PROMPTS):
        ids = torch.cat([prompt_ids[p].expand(SAMPLES, -1),
                         torch.randint(4, vocab, (SAMPLES, RESPONSE_LEN), generator=g)], dim=1)
        with torch.no_grad():
            out = model(ids, capture_routes=True)
            logp = torch.log_softmax(model.logits(out.hidden_BSD)[:, :-1], -1).gather(2, ids[:, 1:, None])[..., 0]
        prompt = Prompt(prompt_id=f"p{p}", text="", token_ids=prompt_ids[p].tolist())
        rewards = torch.rand(SAMPLES, generator=g).round()
        for s in range(SAMPLES):
            completion = Completion(
                prompt_id=prompt.prompt_id, sample_index=s, token_ids=ids[s, PROMPT_LEN:].tolist(), text="",
                generator_logprobs=logp[s, PROMPT_LEN - 1:].tolist(),
                routed_experts=out.routes_BSLK[s, :-1].numpy().astype("uint8"), finish_reason="length",
                policy_versions=[0] * RESPONSE_LEN)
            reward = float(rewards[s])
            rollouts.append(Rollout(prompt=prompt, completion=completion,
                                    reward=RewardResult(value=reward, failed=False)))
            advantages.append(reward - float(rewards.mean()))
    return rollouts, advantages


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_variant(model_path: str, rank: int, steps: int) -> dict:
    """One variant in this process (rank 0: full-parameter RL)."""
    import gc

    import torch

    from jobs.recipes.rl import grpo_tiny
    from rl_platform.learner import Learner
    from rl_platform.lora import LoRAConfig

    torch.set_num_threads(2)
    rollouts, advantages = _rollouts(model_path)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the peak from here on is the learner's
    config = grpo_tiny().learner
    if rank:
        config.lora = LoRAConfig(enabled=True, rank=rank, alpha=2.0 * rank)
    learner = Learner(config, model_path, seed=0)
    times, cpu = [], []
    for _ in range(steps + 1):  # the first is a warm-up
        start, start_cpu = time.perf_counter(), time.process_time()
        learner.train_on_rollouts(rollouts, advantages)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    trainable = sum(p.numel() for p in learner.model.parameters() if p.requires_grad)
    return {"rank": rank, "update_cpu_seconds": statistics.median(cpu[1:]), "update_cpu_seconds_all": cpu[1:],
            "update_seconds": statistics.median(times[1:]), "update_seconds_all": times[1:],
            "peak_rss_mib": _rss_mib("VmHWM"), "trainable_params": trainable,
            "total_params": sum(p.numel() for p in learner.model.parameters()),
            "reference": "base view (no copy)" if rank else "frozen copy" if learner.reference is not None else "none"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/base_tiny_900/models/full")
    parser.add_argument("--ranks", default="8,32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora_vs_full.json"))
    parser.add_argument("--one", type=int, metavar="RANK", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (ROOT / args.model).is_dir() and not Path(args.model).is_dir():
        parser.error(f"--model {args.model}: no such model directory; pretrain one (python -m jobs.pretrain "
                     "--recipe pretrain_tiny) or pass an exported Hugging Face directory")
    if args.one is not None:
        print(json.dumps(run_variant(args.model, args.one, args.steps)))
        return 0
    results: dict = {"model": args.model, "steps": args.steps, "batch": [PROMPTS, SAMPLES, PROMPT_LEN, RESPONSE_LEN],
                     "variants": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for rank in [0, *map(int, args.ranks.split(","))]:
        name = f"lora_r{rank}" if rank else "full"
        run = subprocess.run([sys.executable, __file__, "--model", args.model, "--steps", str(args.steps),
                              "--one", str(rank)], capture_output=True, text=True, cwd=ROOT)
        if run.returncode != 0:
            raise SystemExit(f"variant {name} failed:\n{run.stderr[-3000:]}")
        results["variants"][name] = json.loads(run.stdout.strip().splitlines()[-1])
        out.write_text(json.dumps(results, indent=2) + "\n")  # a stopped run keeps what it measured
    ref = results["variants"]["full"]
    for name, row in results["variants"].items():
        row["cpu_vs_full"] = row["update_cpu_seconds"] / ref["update_cpu_seconds"]
        row["time_vs_full"] = row["update_seconds"] / ref["update_seconds"]
        row["rss_vs_full"] = row["peak_rss_mib"] / ref["peak_rss_mib"]
        print(f"{name:9s} update {row['update_cpu_seconds']:7.2f} CPU s ({row['cpu_vs_full']:.2f}x full), wall "
              f"{row['update_seconds']:7.2f} s ({row['time_vs_full']:.2f}x)  peak RSS "
              f"{row['peak_rss_mib']:8.1f} MiB ({row['rss_vs_full']:.2f}x)  trainable {row['trainable_params']:,} "
              f"of {row['total_params']:,}  reference: {row['reference']}")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
