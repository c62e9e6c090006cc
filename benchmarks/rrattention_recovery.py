"""RRAttention sparsity and quality recovery on our own long-context model (needle retrieval), dense vs tau.

    python benchmarks/rrattention_recovery.py [--model DIR] [--num-samples 128] [--block-sizes 32 64]
                                              [--taus 0.9 0.95 1.0] [--out benchmarks/results/rrattention_recovery.json]

Without --model it uses (and, the first time, trains: ~10 min on 2 cores) the `pretrain_needle_tiny` recipe's
model through the same cache as the RL job's base model. Prefill runs the CPU path of kernels/rrattention/op.py
(the PyTorch reference, bit-exact with the Triton kernels' specification). Prints a markdown table and writes
JSON plus the table next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="HF directory (default: the pretrain_needle_tiny model)")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--filler-sentences", type=int, default=0,
                        help="filler sentences per document (default: the longest the model was trained on)")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--taus", type=float, nargs="+", default=[0.9, 0.95, 1.0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rrattention_recovery.json"))
    args = parser.parse_args()

    import torch

    from jobs.base_model import ensure_base_model
    from jobs.recipes.pretrain import pretrain_needle_tiny
    from jobs.rl_config import BaseModelConfig
    from pretrain.long_context import default_variants, evaluate_variants, markdown_table, needle_samples
    from rl_platform.model.hf_interop import load_hf
    from rl_platform.model.tokenizer import load_tokenizer

    torch.set_num_threads(2)
    model_dir = Path(args.model) if args.model else ensure_base_model(
        BaseModelConfig(pretrain_recipe="pretrain_needle_tiny", cache_dir=str(ROOT / "models")))
    model = load_hf(model_dir)
    filler = args.filler_sentences or pretrain_needle_tiny().data.needle_filler_sentences
    samples = needle_samples(load_tokenizer(model_dir), args.num_samples, filler)
    seq_len = statistics.fmean(len(s.token_ids) for s in samples)
    results, tables = [], []
    for block_size in args.block_sizes:
        rows = evaluate_variants(model, samples, default_variants(block_size, args.stride, tuple(args.taus)))
        results.append({"block_size": block_size, "stride": args.stride, "rows": rows})
        tables.append(markdown_table(rows, len(samples), seq_len))
        print(tables[-1], "\n", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # recorded relative to the checkout, so the result file names no machine-specific path
    shown = model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir
    out.write_text(json.dumps({"model": str(shown), "num_samples": len(samples), "mean_seq_len": seq_len,
                               "filler_sentences": filler, "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n\n".join(tables) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
