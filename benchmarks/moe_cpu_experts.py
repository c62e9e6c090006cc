"""CPU cost of the routed-expert FFN at ultra-sparse shapes: the per-expert reference loop (the baseline, the
CPU path before the grouped matmul) vs the grouped-matmul path `moe_experts` takes on CPU now.

Shapes are one pretraining micro-batch (8 rows x 256 tokens = 2048 tokens, D=128) of the tiny recipes:
(E, K, F) = (32, 4, 64) as in pretrain_tiny, then 128-256 fine-grained experts as in the ultra-sparse
recipes. Each figure is the median of a few forward+backward runs (one torch thread, so a second process on
the other core does not skew it); the ratio is reference / grouped.

    python benchmarks/moe_cpu_experts.py            # writes benchmarks/results/moe_cpu_experts.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import _bench  # noqa: E402
from kernels.moe_experts import moe_experts_grouped_cpu, moe_experts_reference  # noqa: E402

NUM_TOKENS, DIM = 2048, 128
EXPERT_SHAPES = [(32, 4, 64), (128, 2, 64), (128, 2, 32), (256, 4, 64), (256, 4, 32), (256, 2, 64)]  # (E, K, F)
RESULT_PATH = Path(__file__).parent / "results" / "moe_cpu_experts.json"


def _inputs(num_experts: int, top_k: int, ffn_dim: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    topk_ids_TK = torch.rand(NUM_TOKENS, num_experts, generator=gen).argsort(dim=1)[:, :top_k]
    topk_weights_TK = torch.softmax(torch.randn(NUM_TOKENS, top_k, generator=gen), dim=1).requires_grad_()
    x_TD = torch.randn(NUM_TOKENS, DIM, generator=gen).requires_grad_()
    weights = [(torch.randn(num_experts, *shape, generator=gen) / shape[1] ** 0.5).requires_grad_()
               for shape in ((ffn_dim, DIM), (ffn_dim, DIM), (DIM, ffn_dim))]
    return x_TD, topk_ids_TK, topk_weights_TK, *weights


def main() -> None:
    torch.set_num_threads(1)
    meta = {"op": "moe_experts (CPU)", "torch": torch.__version__, "tokens": NUM_TOKENS, "dim": DIM,
            "baseline": "moe_experts_reference (per-expert loop)", "threads": 1}
    print(f"[moe_cpu_experts] T={NUM_TOKENS} D={DIM}, forward+backward, median of 3, one thread")
    records = []
    for num_experts, top_k, ffn_dim in EXPERT_SHAPES:
        inputs = _inputs(num_experts, top_k, ffn_dim)
        record = {"E": num_experts, "K": top_k, "F": ffn_dim}
        for name, fn in (("reference", moe_experts_reference), ("grouped", moe_experts_grouped_cpu)):
            step = lambda fn=fn, inputs=inputs: fn(*inputs).square().mean().backward()  # noqa: E731
            record[f"{name}_fwd_bwd_ms"] = _bench.time_ms(step, "cpu", cpu_reps=3)
        record["speedup"] = record["reference_fwd_bwd_ms"] / record["grouped_fwd_bwd_ms"]
        records.append(record)
        _bench.report(record)
    RESULT_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULT_PATH.write_text(json.dumps({**meta, "results": records}, indent=2) + "\n")
    print(f"  wrote {RESULT_PATH}")


if __name__ == "__main__":
    main()
