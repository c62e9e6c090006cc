"""The RL run's report: reward / pass-rate / train-infer-KL / route-mismatch curves and a summary table."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rl_platform.run_dir import read_metrics  # noqa: E402

CURVES = [
    ("reward", ["reward/mean", "reward/pass_rate", "eval/pass_rate", "eval/sampled_pass_rate"]),
    ("train_infer", ["train/kl_train_infer", "train/logprob_abs_diff_mean"]),
    ("routing", ["moe/route_mismatch", "moe/route_mismatch_during_update", "moe/extreme_token_frac_tau2"]),
]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def task_table(evals: list[dict], final: dict) -> list[str]:
    """Per-task held-out pass@1 before and after (prompt sources whose prompts name a task: reasoning_gym)."""
    tasks = sorted(k.removeprefix("eval/pass_rate/") for k in final if k.startswith("eval/pass_rate/"))
    if not tasks:
        return []
    first = evals[0] if evals else {}
    lines = ["", "| task (held-out) | greedy pass@1 before | after | sampled pass@1 before | after |",
             "|---|---|---|---|---|"]
    for task in tasks:
        cells = []
        for key in (f"eval/pass_rate/{task}", f"eval/sampled_pass_rate/{task}"):
            cells += [f"{first.get(key, float('nan')):.3f}", f"{final.get(key, float('nan')):.3f}"]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def _architecture(policy_dir: str) -> str:
    config = Path(policy_dir) / "config.json"
    return json.loads(config.read_text())["architectures"][0] if config.exists() else "unknown architecture"


def write_rl_report(run_dir: Path, first: dict | None, final: dict, policy_dir: str) -> Path:
    rows = read_metrics(run_dir / "metrics.jsonl")
    report = run_dir / "report"
    for name, keys in CURVES:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in keys:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="." if key.startswith("eval") else None, label=key)
        ax.set_xlabel("RL step")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(report / f"rl_{name}.png", dpi=110)
        plt.close(fig)
    evals = [r for r in rows if "eval/pass_rate" in r]
    held_out = []
    for key, label in (("eval/pass_rate", "greedy pass@1"), ("eval/sampled_pass_rate", "pass@1 at T, mean@k")):
        if key in final:
            before = evals[0].get(key, float("nan")) if evals else float("nan")
            curve = ", ".join(f"{r[key]:.3f} (step {r['step']})" for r in evals if key in r)
            held_out.append(f"- held-out {label}, {int(final['eval/num_prompts'])} prompts: "
                            f"**{before:.3f} -> {final[key]:.3f}**; every evaluation: {curve}")
    steps = [r for r in rows if "reward/mean" in r]

    def mean_of(key: str, part: list[dict]) -> float:
        vals = [r[key] for r in part if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    head, tail = steps[: max(1, len(steps) // 4)], steps[-max(1, len(steps) // 4):]
    lines = [
        "# RL report", "",
        f"- policy exported to `{policy_dir}` (HF {_architecture(policy_dir)}, servable by vLLM)",
        *held_out,
        *task_table(evals, final),
        "", "| metric | first quarter of steps | last quarter |", "|---|---|---|",
    ]
    for key in ("reward/mean", "reward/pass_rate", "rollout/response_length_mean", "policy/entropy",
                "train/kl_train_infer", "train/logprob_abs_diff_mean", "moe/route_mismatch",
                "moe/route_mismatch_during_update", "moe/extreme_token_frac_tau2", "loss/clip_frac",
                "reward/failed_count", "timing/generate", "timing/score", "timing/learn", "timing/sync",
                "perf/step_seconds"):
        lines.append(f"| {key} | {mean_of(key, head):.4g} | {mean_of(key, tail):.4g} |")
    lines += ["", "![reward](rl_reward.png) ![train-infer](rl_train_infer.png) ![routing](rl_routing.png)", ""]
    path = report / "rl.md"
    path.write_text("\n".join(lines))
    return path
