"""`python -m jobs.routing_report --model-dir DIR [--recipe pretrain_tiny] [--out FILE]`: balance and routing
diagnostics of any exported model (a base, a sub-model, an RL policy) on the pretraining validation data.

The pretraining report computes the same figures at the end of a run; this recomputes them for a directory
that was trained before those figures existed, or after RL changed its routing. The recipe only supplies
the validation data (its `data` section) and the batch size; the model and tokenizer come from DIR.
Prints the val loss, the per-layer balance table (dead experts, max/mean load, NE) and the mean top-25 %
IoU between domains; `--out` writes them as JSON (docs/ultrasparse.md, 'Balance').
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from jobs.recipes import recipes_for
from pretrain.balance import layer_balance
from pretrain.data.pipeline import Packer
from pretrain.evaluate import RoutingDiagnostics, routing_diagnostics, validation_loss
from pretrain.report import balance_markdown
from rl_platform.model.hf_interop import load_hf
from rl_platform.model.tokenizer import load_tokenizer


def mean_offdiagonal_iou(diag: RoutingDiagnostics) -> float:
    """Mean top-25 % IoU over layers and distinct domain pairs (1 = every domain uses the same experts)."""
    num_domains = len(diag.domains)
    pairs = [(a, b) for a in range(num_domains) for b in range(a + 1, num_domains)]
    if not pairs:
        return float("nan")
    return float(sum(diag.iou_LDD[:, a, b].mean() for a, b in pairs) / len(pairs))


def routing_report(model_dir: Path, recipe: str, num_batches: int) -> dict:
    config = recipes_for("pretrain")[recipe]()
    model = load_hf(model_dir).eval()
    packer = Packer(config.data, load_tokenizer(model_dir), config.run.seed, "validation")
    batch_size = config.loop.micro_batch_size
    val = validation_loss(model, packer, None, config.eval.num_val_batches, batch_size)
    diag = routing_diagnostics(model, packer, num_batches, batch_size)
    balance = layer_balance(diag.counts_LE)
    return {"model_dir": str(model_dir), "num_experts": model.config.num_experts, "top_k": model.config.top_k,
            "activation_ratio": model.config.activation_ratio(), "val_loss": val["all"],
            "balance": asdict(balance) | balance.summary(), "routing_entropy": diag.entropy_L.tolist(),
            "iou_mean": mean_offdiagonal_iou(diag), "domains": diag.domains,
            "_balance_table": balance_markdown(balance)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.routing_report", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path, help="an exported HF directory (config.json)")
    parser.add_argument("--recipe", default="pretrain_tiny", help="pretraining recipe whose validation data to use")
    parser.add_argument("--batches", type=int, default=4, help="validation batches for the routing diagnostics")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if not (args.model_dir / "config.json").exists():
        print(f"error: --model-dir {args.model_dir} has no config.json; give an exported model directory "
              "(e.g. models/<recipe>-<hash>/models/full)", file=sys.stderr)
        return 2
    if args.recipe not in recipes_for("pretrain"):
        print(f"error: --recipe {args.recipe!r} is unknown; choose one of {sorted(recipes_for('pretrain'))}",
              file=sys.stderr)
        return 2
    result = routing_report(args.model_dir, args.recipe, args.batches)
    table = result.pop("_balance_table")
    print(f"{args.model_dir}: {result['num_experts']} experts, top-{result['top_k']}, activation ratio "
          f"{result['activation_ratio']:.1%}; val loss {result['val_loss']:.4f}; mean top-25% IoU between domains "
          f"{result['iou_mean']:.2f}\n{table}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
