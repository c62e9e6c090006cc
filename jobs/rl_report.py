"""The RL run's report: reward / pass-rate / train-infer-KL / route-mismatch / timing curves, the held-out
evaluations and a first-vs-last-quarter table, as `report/rl.md` + PNGs and as one self-contained
`report/report.html` (plots inline, tables, the resolved config)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rl_platform.report_html import write_report_html  # noqa: E402
from rl_platform.run_dir import read_metrics  # noqa: E402

CURVES = [
    ("reward", ["reward/mean", "reward/pass_rate", "eval/pass_rate", "eval/sampled_pass_rate"]),
    ("train_infer", ["train/kl_train_infer", "train/logprob_abs_diff_mean"]),
    ("routing", ["moe/route_mismatch", "moe/route_mismatch_during_update", "moe/extreme_token_frac_tau2"]),
    ("timing", ["timing/generate", "timing/score", "timing/learn", "timing/sync", "perf/step_seconds"]),
]
"""(figure name, metric keys drawn in it); `python -m jobs.compare` overlays runs on the same groups."""

TABLE_KEYS = ("reward/mean", "reward/pass_rate", "rollout/response_length_mean", "policy/entropy",
              "train/kl_train_infer", "train/logprob_abs_diff_mean", "moe/route_mismatch",
              "moe/route_mismatch_during_update", "moe/extreme_token_frac_tau2", "loss/clip_frac",
              "reward/failed_count", "timing/generate", "timing/score", "timing/learn", "timing/sync",
              "perf/step_seconds")


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
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


def plot_curves(rows: list[dict], report: Path) -> list[str]:
    """One PNG per CURVES group that has data; returns the file names."""
    names = []
    for name, keys in CURVES:
        drawn = [(key, *series(rows, key)) for key in keys]
        drawn = [d for d in drawn if d[1]]
        if not drawn:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, xs, ys in drawn:
            ax.plot(xs, ys, marker="." if key.startswith("eval") or len(xs) < 3 else None, label=key)
        ax.set_xlabel("RL step")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(report / f"rl_{name}.png", dpi=110)
        plt.close(fig)
        names.append(f"rl_{name}.png")
    return names


def _mean(key: str, part: list[dict]) -> float:
    vals = [r[key] for r in part if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def write_rl_report(run_dir: Path, first: dict | None, final: dict, policy_dir: str) -> Path:
    """Writes report/rl.md, its PNGs and report/report.html; returns the path of rl.md."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    report = run_dir / "report"
    figures = plot_curves(rows, report)
    evals = [r for r in rows if "eval/pass_rate" in r]
    held_out = []
    for key, label in (("eval/pass_rate", "greedy pass@1"), ("eval/sampled_pass_rate", "pass@1 at T, mean@k")):
        if key in final:
            before = evals[0].get(key, float("nan")) if evals else float("nan")
            held_out.append(f"- held-out {label}, {int(final['eval/num_prompts'])} prompts: "
                            f"**{before:.3f} -> {final[key]:.3f}**")
    steps = [r for r in rows if "reward/mean" in r]
    head, tail = steps[: max(1, len(steps) // 4)], steps[-max(1, len(steps) // 4):]
    resolved = json.loads((run_dir / "config.json").read_text())
    lines = [
        "# RL report", "",
        f"- run: `{run_dir}`, recipe `{resolved.get('recipe', '?')}`, {len(steps)} RL steps logged",
        f"- policy exported to `{policy_dir}` (HF {_architecture(policy_dir)}, servable by vLLM)",
        *held_out,
        *task_table(evals, final), "",
    ]
    if evals:
        lines += ["## Held-out evaluations", "", "| step | greedy pass@1 | sampled pass@1 | mean response length |",
                  "|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['eval/pass_rate']:.3f} | {r.get('eval/sampled_pass_rate', float('nan')):.3f} | "
                  f"{r.get('eval/response_length_mean', float('nan')):.1f} |" for r in evals]
        lines.append("")
    lines += ["## Training metrics", "", "| metric | first quarter of steps | last quarter |", "|---|---|---|"]
    lines += [f"| {key} | {_mean(key, head):.4g} | {_mean(key, tail):.4g} |" for key in TABLE_KEYS
              if any(r.get(key) is not None for r in steps)]
    lines += ["", "## Curves", "", " ".join(f"![{name}]({name})" for name in figures), ""]
    path = report / "rl.md"
    path.write_text("\n".join(lines))
    write_report_html(path, report / "report.html", title=f"RL report: {run_dir.name}", config=resolved)
    return path
