"""The comparison report of a `jobs.ablate` study: one row per variant, one line per variant in each curve."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rl_platform.run_dir import read_metrics  # noqa: E402

CURVES = [  # (file, metric, title)
    ("entropy", "rollout/entropy", "policy entropy (nats/token, every sampled token, T=1)"),
    ("entropy_trained", "policy/entropy", "policy entropy (nats/token, trained tokens only)"),
    ("train_infer_kl", "train/kl_train_infer", "train-inference KL (k3, per token)"),
    ("reward", "reward/mean", "training reward (step's prompts, unhinted)"),
    ("heldout_pass", "eval/pass_rate", "held-out greedy pass@1"),
    ("heldout_pass_sampled", "eval/sampled_pass_rate", "held-out pass@1 at T=1 (mean@4)"),
]
COLUMNS = [  # (summary key, header, format)
    ("greedy_final", "greedy pass@1 final", ".3f"), ("greedy_best", "greedy best", ".3f"),
    ("sampled_final", "sampled pass@1 final", ".3f"), ("sampled_best", "sampled best", ".3f"),
    ("greedy_start", "greedy at step 0", ".3f"),
    ("entropy_start", "entropy start", ".3f"), ("entropy_end", "entropy end", ".3f"),
    ("entropy_max_drop", "entropy largest drop", ".3f"), ("trained_entropy_end", "trained-token entropy end", ".3f"),
    ("kl_train_infer_mean", "mean train-inf KL", ".2e"), ("masked_frac_mean", "masked frac", ".2e"),
    ("well_learned_frac_mean", "WPSM masked", ".3f"), ("hinted_frac_mean", "hinted groups", ".3f"),
    ("hinted_pass_rate_mean", "pass with hint", ".3f"), ("hint_tokens_mean", "hint tokens", ".1f"),
    ("wall_minutes", "wall (min)", ".1f"),
]


def _values(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], float(r[key])) for r in rows if r.get(key) is not None and not math.isnan(float(r[key]))]


def _mean(rows: list[dict], key: str) -> float:
    vals = [v for _, v in _values(rows, key)]
    return statistics.fmean(vals) if vals else float("nan")


def max_drawdown(values: list[float]) -> float:
    """Largest fall below the running maximum (0 when the series never falls)."""
    peak, worst = -math.inf, 0.0
    for v in values:
        peak = max(peak, v)
        worst = max(worst, peak - v)
    return worst


SMOOTH = 3
"""Entropy columns use a moving average over this many steps: one step's 128 samples are a noisy estimate."""


def moving_average(values: list[float], window: int) -> list[float]:
    """Means of every `window` consecutive values (the series itself when it is shorter than the window)."""
    if len(values) < window:
        return [statistics.fmean(values)] if values else []
    return [statistics.fmean(values[i:i + window]) for i in range(len(values) - window + 1)]


def summarise(rows: list[dict], wall_seconds: float) -> dict[str, float]:
    """The table row of one variant from its metrics.jsonl rows."""
    out: dict[str, float] = {"wall_minutes": wall_seconds / 60}
    for key, name in (("eval/pass_rate", "greedy"), ("eval/sampled_pass_rate", "sampled")):
        evals = [v for _, v in _values(rows, key)]
        out[f"{name}_start"] = evals[0] if evals else math.nan
        out[f"{name}_final"] = evals[-1] if evals else math.nan
        out[f"{name}_best"] = max(evals) if evals else math.nan
    entropy = moving_average([v for _, v in _values(rows, "rollout/entropy")], SMOOTH)
    out["entropy_start"] = entropy[0] if entropy else math.nan
    out["entropy_end"] = entropy[-1] if entropy else math.nan
    out["entropy_max_drop"] = max_drawdown(entropy) if entropy else math.nan
    trained = moving_average([v for _, v in _values(rows, "policy/entropy")], SMOOTH)
    out["trained_entropy_end"] = trained[-1] if trained else math.nan
    for key, name in (("train/kl_train_infer", "kl_train_infer_mean"), ("correction/masked_frac", "masked_frac_mean"),
                      ("wpsm/well_learned_frac", "well_learned_frac_mean"), ("ahrl/hinted_frac", "hinted_frac_mean"),
                      ("ahrl/hinted_pass_rate", "hinted_pass_rate_mean"), ("ahrl/hint_tokens_mean", "hint_tokens_mean"),
                      ("reward/mean", "reward_mean"), ("train/skipped", "skipped_frac"),
                      ("perf/step_seconds", "step_seconds_mean")):
        out[name] = _mean(rows, key)
    return out


def _plot(out: Path, runs: dict[str, list[dict]], splits: dict[str, str]) -> list[str]:
    files = []
    for file, key, title in CURVES:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, rows in runs.items():
            points = _values(rows, key)
            if points:
                style = "--" if splits[name] == "hard" else "-"
                ax.plot(*zip(*points, strict=True), style, marker="." if key.startswith("eval") else None,
                        label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("RL step")
        if ax.lines:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{file}.png", dpi=110)
        plt.close(fig)
        files.append(f"{file}.png")
    return files


def write_study_report(study_dir: Path, variants: list[tuple[str, str]]) -> Path:
    """Writes report/summary.md, summary.json and the curves for the variants that have finished."""
    report = study_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    runs, rows_out, splits = {}, {}, dict(variants)
    for name, split in variants:
        done = study_dir / f"{name}.done.json"
        if not done.exists():
            continue
        runs[name] = read_metrics(study_dir / name / "metrics.jsonl")
        rows_out[name] = {"split": split, **summarise(runs[name], json.loads(done.read_text())["wall_seconds"])}
    (report / "summary.json").write_text(json.dumps(rows_out, indent=2) + "\n")
    lines = ["# Ablation study", "", "| variant | split | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for name, row in rows_out.items():
        cells = [format(row[key], fmt) if not math.isnan(row[key]) else "-" for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | {row['split']} | " + " | ".join(cells) + " |")
    files = _plot(report, runs, splits) if runs else []
    lines += ["", f"Entropy: `rollout/entropy` (mean surprisal of every sampled token at T=1, an estimate of the "
              f"per-token entropy), as a {SMOOTH}-step moving average: start = first window, end = last window, "
              "largest drop = the largest fall below its running maximum; trained-token entropy = `policy/entropy` "
              "(the learner's exact entropy over the tokens of the groups it trains on), last window. KL and "
              "masked fraction: means over steps. Wall time includes engine start-up and every evaluation.",
              "", *[f"![{f}]({f})" for f in files], ""]
    path = report / "summary.md"
    path.write_text("\n".join(lines))
    return path
