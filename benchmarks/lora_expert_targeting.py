"""LoRA on routed experts: peft's parameter targeting vs our per-expert pairs, one MoE layer, forward + backward.

    python benchmarks/lora_expert_targeting.py [--rank 16] [--reps 3] [--shapes demo_layer,wide_layer]

Variants, each in a fresh process, same tokens, routes, weights and rank:
- peft_target_parameters: peft 0.21 `LoraConfig(target_parameters=[w_gate_EFD, w_up_EFD, w_down_EDF])` on a
  module holding the three stacks; its forward runs the experts on the parametrised stacks W + s * B A (what
  peft's parameter wrapper does: it rebuilds every whole stack on every forward);
- per_expert (ours, rl_platform/lora_experts.py): the low-rank terms on the routed token copies only;
- frozen_base: the adapters off (the floor: what the frozen stacks alone cost);
- full_finetune: no adapters, the stacks themselves trained (the baseline of LoRA as a whole).
Every variant runs its experts through the same routine (grouped float32 matmuls over the expert-sorted token
copies, `grouped_routed_experts`), so only what each variant adds differs.
Reported per variant and shape: median forward+backward seconds, the activation memory the forward leaves for
the backward (MiB of tensors autograd saves, parameters and inputs excluded: the part that grows with the
variant; process RSS at these sizes is dominated by allocator reuse and says little), trainable parameters;
ratios are against peft_target_parameters. Two shapes: the demo model's layer
(pretrain_tiny: E=32, D=128, F=64, K=4) and a wider one (E=128, D=1024, F=256, K=8).
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

SHAPES = {  # name: (experts E, dim D, expert ffn F, top-k K, tokens T)
    "demo_layer": (32, 128, 64, 4, 2048),
    "wide_layer": (128, 1024, 256, 8, 4096),
}
VARIANTS = ("peft_target_parameters", "per_expert", "frozen_base", "full_finetune")


def _saved_mib(step, exclude: set[int]) -> float:
    """MiB of distinct storages autograd saves for the backward during `step()` (excluding `exclude` storages)."""
    import torch

    storages: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values()) / 2**20


def run_variant(variant: str, shape: str, rank: int, reps: int) -> dict:
    """One variant in this process: returns its timings and memory."""
    import torch
    from torch import nn

    from rl_platform.lora_experts import ExpertLoRA, grouped_routed_experts

    torch.manual_seed(0)
    torch.set_num_threads(2)
    e, d, f, k, t = SHAPES[shape]

    class Stacks(nn.Module):  # peft wraps the module that owns the parameters
        def __init__(self) -> None:
            super().__init__()
            self.w_gate_EFD = nn.Parameter(torch.randn(e, f, d) * d ** -0.5)
            self.w_up_EFD = nn.Parameter(torch.randn(e, f, d) * d ** -0.5)
            self.w_down_EDF = nn.Parameter(torch.randn(e, d, f) * f ** -0.5)

        def forward(self, x_TD, ids_TK, gates_TK):
            return grouped_routed_experts(x_TD, ids_TK, gates_TK, self)

    stacks = Stacks()
    x_TD = torch.randn(t, d, requires_grad=True)
    ids_TK = torch.rand(t, e).topk(k, dim=-1).indices
    gates_TK = torch.softmax(torch.randn(t, k), -1)
    if variant == "peft_target_parameters":
        from peft import LoraConfig, inject_adapter_in_model

        holder = nn.Module()  # peft refuses parameters of the top-level module
        holder.experts = stacks
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, target_parameters=[
            "experts.w_gate_EFD", "experts.w_up_EFD", "experts.w_down_EDF"]), holder)
        for name, p in holder.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(p, std=0.01)
        step = lambda: holder.experts(x_TD, ids_TK, gates_TK)  # noqa: E731
        params = [p for p in holder.parameters() if p.requires_grad]
    elif variant in ("per_expert", "frozen_base"):
        stacks.requires_grad_(False)
        lora = ExpertLoRA(num_experts=e, dim=d, ffn_dim=f, rank=rank, alpha=2 * rank)
        nn.init.normal_(lora.B_gu_E2FR, std=0.01)
        nn.init.normal_(lora.B_d_EDR, std=0.01)
        used = lora if variant == "per_expert" else None
        step = lambda: grouped_routed_experts(x_TD, ids_TK, gates_TK, stacks, used)  # noqa: E731
        params = list(lora.parameters()) if variant == "per_expert" else [x_TD]
    else:
        step = lambda: stacks(x_TD, ids_TK, gates_TK)  # noqa: E731
        params = list(stacks.parameters())
    grad_y = torch.randn(t, d)
    held = [x_TD, ids_TK, gates_TK, *stacks.parameters(), *params]
    saved = _saved_mib(step, {p.untyped_storage().data_ptr() for p in held})
    times = []
    for _ in range(reps + 1):  # the first is a warm-up
        start = time.perf_counter()
        y = step()
        y.backward(grad_y)
        times.append(time.perf_counter() - start)
        for p in params:
            p.grad = None
        x_TD.grad = None
    trainable = sum(p.numel() for p in params) if variant != "frozen_base" else 0
    return {"seconds": statistics.median(times[1:]), "saved_for_backward_mib": saved, "trainable_params": trainable}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora_expert_targeting.json"))
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_variant(args.one[0], args.one[1], args.rank, args.reps)))
        return 0
    results: dict = {"rank": args.rank, "reps": args.reps, "shapes": {}}
    for shape in args.shapes.split(","):
        rows = {}
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--rank", str(args.rank), "--reps", str(args.reps),
                                  "--one", variant, shape], capture_output=True, text=True, check=True, cwd=ROOT)
            rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        ref = rows["peft_target_parameters"]
        for variant, row in rows.items():
            row["time_vs_peft"] = row["seconds"] / ref["seconds"]
            row["saved_vs_peft"] = row["saved_for_backward_mib"] / max(ref["saved_for_backward_mib"], 1e-9)
            print(f"{shape:11s} {variant:23s} {row['seconds']:7.3f} s ({row['time_vs_peft']:.2f}x peft)  "
                  f"saved for backward {row['saved_for_backward_mib']:8.1f} MiB ({row['saved_vs_peft']:.2f}x)  "
                  f"trainable {row['trainable_params']:,}")
        results["shapes"][shape] = {"E_D_F_K_T": SHAPES[shape], "variants": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
