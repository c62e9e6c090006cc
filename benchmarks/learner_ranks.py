"""Learner step time with 1 and with 2 learner ranks, on the demo batch (docs/scale_out.md, "Measured").

Baseline: one learner rank (a learner group of one, the same Ray + DeepSpeed path), measured in the same run.
The batch is the grpo_tiny recipe's step: 32 prompts x 16 samples, prompts of 8-12 tokens, responses of 4-48
tokens, with engine routes (R3) and engine log-probs taken from the policy itself, so the learner does its real
work (R3 forward, loss, backward, clipping, AdamW) without a rollout engine. Each configuration runs one
untimed warm-up step, then --steps timed steps (the median is reported).

Usage:
  python benchmarks/learner_ranks.py [--model models/base_tiny_900/models/full] [--steps 3] [--zero-stage 2]
      [--out benchmarks/results/learner_ranks.json]
On a 2-core machine two ranks share the two cores (1 torch thread each, against 2 threads for one rank): the
figure there measures the data-parallel overhead (gloo all-reduce, the split batch), not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.cpu_share import CpuShare  # noqa: E402
from actors.learner_group import LearnerGroup  # noqa: E402
from rl_platform.learner import LearnerConfig  # noqa: E402
from rl_platform.model.adapter import load_adapter  # noqa: E402
from rl_platform.types import Completion, Prompt, RewardResult, Rollout  # noqa: E402


def demo_batch(model_path: str, prompts: int, samples: int, max_tokens: int, seed: int = 0):
    """Rollouts shaped like one grpo_tiny step, with the policy's own routes and log-probs."""
    model = load_adapter(model_path)
    vocab = model.module.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    rollouts, advantages = [], []
    for p in range(prompts):  # one right-padded forward per group of samples
        prompt_ids = torch.randint(3, vocab, (int(torch.randint(8, 13, (1,), generator=g)),), generator=g).tolist()
        responses = [torch.randint(3, vocab, (int(torch.randint(4, max_tokens + 1, (1,), generator=g)),),
                                   generator=g).tolist() for _ in range(samples)]
        width = len(prompt_ids) + max(len(r) for r in responses)
        ids = torch.zeros(samples, width, dtype=torch.long)
        mask = torch.zeros(samples, width, dtype=torch.long)
        for s, response in enumerate(responses):
            ids[s, :len(prompt_ids) + len(response)] = torch.tensor(prompt_ids + response)
            mask[s, :len(prompt_ids) + len(response)] = 1
        with torch.no_grad():
            out = model(ids, attention_mask_BS=mask, capture_routes=True)
            logp = torch.log_softmax(model.module.logits(out.hidden_BSD)[:, :-1], -1)
        token_lp = logp.gather(2, ids[:, 1:, None])[..., 0]
        prompt = Prompt(prompt_id=f"p{p}", text="", token_ids=prompt_ids)
        for s, response in enumerate(responses):
            n, end = len(response), len(prompt_ids) + len(response) - 1
            completion = Completion(prompt_id=prompt.prompt_id, sample_index=s, token_ids=response, text="",
                                    generator_logprobs=token_lp[s, len(prompt_ids) - 1:end].tolist(),
                                    finish_reason="length", policy_versions=[0] * n,
                                    routed_experts=out.routes_BSLK[s, :end].numpy().astype(np.uint8))
            reward = float(torch.rand(1, generator=g) < 0.5)
            rollouts.append(Rollout(prompt=prompt, completion=completion,
                                    reward=RewardResult(value=reward, failed=False)))
            advantages.append(reward - 0.5)
    return rollouts, advantages


def time_steps(num_ranks: int, args, batch) -> list[float]:
    config = LearnerConfig(routing_replay="R3", zero_stage=args.zero_stage, num_ranks=num_ranks,
                           micro_batch_size=32)
    config.loss.kl_coef = 0.1  # as grpo_tiny: a reference forward too
    group = LearnerGroup(config, args.model, seed=0, cpu=CpuShare(threads=os.cpu_count() or 2),
                         cpus_per_rank=0.5)
    group.train_step(*batch)  # warm-up
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        group.train_step(*batch)
        seconds.append(time.perf_counter() - start)
    group.shutdown()
    return seconds


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/base_tiny_900/models/full")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/learner_ranks.json"))
    args = parser.parse_args()
    batch = demo_batch(args.model, args.prompts, args.samples, args.max_tokens)
    tokens = sum(len(r.prompt.token_ids) + len(r.completion.token_ids) for r in batch[0])
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False)
    try:
        one, two = time_steps(1, args, batch), time_steps(2, args, batch)
    finally:
        ray.shutdown()
    record = {"model": args.model, "rows": len(batch[0]), "tokens": tokens, "zero_stage": args.zero_stage,
              "cpu_count": os.cpu_count(), "one_rank_step_s": statistics.median(one),
              "two_ranks_step_s": statistics.median(two), "one_rank_all_s": one, "two_ranks_all_s": two}
    record["two_over_one"] = record["two_ranks_step_s"] / record["one_rank_step_s"]
    print(f"{len(batch[0])} rows, {tokens} tokens, ZeRO-{args.zero_stage}: 1 rank {record['one_rank_step_s']:.2f} s"
          f"/step, 2 ranks {record['two_ranks_step_s']:.2f} s/step, ratio 2/1 = {record['two_over_one']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
