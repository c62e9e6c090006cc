"""`python -m jobs.compare RUN_DIR RUN_DIR ... [--out DIR]`: several runs side by side.

Writes to `--out` (default runs/compare-<timestamp>/):
- one PNG per metric group (the RL report's groups, plus pretraining loss) with every run's curve overlaid;
- `compare.md` and a self-contained `compare.html` (plots inline): a table of each run's final metrics
  (held-out evaluations and validation losses at their last evaluation; per-step training metrics as the mean
  over the last quarter of steps) and the config keys whose values differ between the runs.
Works for RL and pretraining runs alike: any folder with `metrics.jsonl` (and, optionally, `config.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jobs.cli import fail, flatten  # noqa: E402
from jobs.rl_report import CURVES, series  # noqa: E402
from rl_platform.report_html import write_report_html  # noqa: E402
from rl_platform.run_dir import read_metrics  # noqa: E402

GROUPS = [*CURVES, ("pretrain_loss", ["train/loss", "val/loss_full"])]
"""(figure name, metric keys); a group is drawn when some run logged one of its keys."""
EVALUATED = ("eval/", "val/")
"""Metrics logged at evaluations only: the table shows their last value."""
TABLE_KEYS = ["eval/pass_rate", "eval/sampled_pass_rate", "val/loss_full", "reward/mean", "reward/pass_rate",
              "train/kl_train_infer", "moe/route_mismatch", "moe/route_mismatch_during_update", "train/loss",
              "perf/step_seconds"]


@dataclass
class Run:
    label: str
    path: Path
    rows: list[dict]
    config: dict

    @property
    def last_step(self) -> int:
        return max((r["step"] for r in self.rows), default=0)


def load_run(path: Path, label: str) -> Run:
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        fail(f"jobs.compare: {path} has no metrics.jsonl; give run directories (runs/<recipe>-<time>/ or the "
             "--run-dir of a run).")
    saved = path / "config.json"
    config = json.loads(saved.read_text()) if saved.is_file() else {}
    return Run(label=label, path=path, rows=read_metrics(metrics), config=config)


def labels_for(paths: list[Path]) -> list[str]:
    """Folder names, made unique with their parent where two runs share a name."""
    names = [p.name or str(p) for p in paths]
    return [f"{p.parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def final_value(run: Run, key: str) -> float:
    values = [r[key] for r in run.rows if r.get(key) is not None]
    if not values:
        return float("nan")
    if key.startswith(EVALUATED):
        return values[-1]
    tail = values[-max(1, len(values) // 4):]
    return sum(tail) / len(tail)


def plot_groups(runs: list[Run], out: Path) -> list[str]:
    names = []
    for name, keys in GROUPS:
        present = [k for k in keys if any(series(r.rows, k)[0] for r in runs)]
        if not present:
            continue
        fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.2), squeeze=False)
        for ax, key in zip(axes[0], present, strict=True):
            for index, run in enumerate(runs):
                xs, ys = series(run.rows, key)
                if xs:
                    ax.plot(xs, ys, color=f"C{index}", marker="." if len(xs) < 12 else None, label=run.label)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        names.append(f"{name}.png")
    return names


def _cell(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def config_differences(runs: list[Run]) -> list[tuple[str, list]]:
    flat = [flatten(r.config.get("config", {})) for r in runs]
    recipes = [r.config.get("recipe") for r in runs]
    keys = sorted(set().union(*flat))
    rows = [("recipe", recipes)] if len(set(recipes)) > 1 else []
    for key in keys:
        values = [f.get(key) for f in flat]
        if key != "run.run_dir" and any(v != values[0] for v in values):
            rows.append((key, values))
    return rows


def comparison_markdown(runs: list[Run], figures: list[str]) -> str:
    header = "| | " + " | ".join(r.label for r in runs) + " |"
    rule = "|---|" + "---|" * len(runs)
    lines = ["# Run comparison", ""]
    lines += [f"- `{r.label}`: `{r.path}`, recipe `{r.config.get('recipe', '?')}`, last step {r.last_step}"
              for r in runs]
    lines += ["", "## Final metrics", "", "Evaluations (`eval/*`, `val/*`): the last one; per-step metrics: the mean "
              "over the last quarter of logged steps.", "", header, rule]
    keys = [k for k in TABLE_KEYS if any(not math.isnan(final_value(r, k)) for r in runs)]
    lines += [f"| {k} | " + " | ".join(_cell(final_value(r, k)) for r in runs) + " |" for k in keys]
    diffs = config_differences(runs)
    lines += ["", "## Config differences", ""]
    if diffs:
        lines += [header.replace("| |", "| key |", 1), rule]
        lines += [f"| {k} | " + " | ".join(f"`{json.dumps(v)}`" for v in values) + " |" for k, values in diffs]
    else:
        lines.append("The runs have the same config (apart from their run directories).")
    lines += ["", "## Curves", "", *(f"![{f}]({f})" for f in figures), ""]
    return "\n".join(lines)


def compare(paths: list[Path], out: Path) -> Path:
    """Writes the comparison into `out`; returns the path of compare.html."""
    runs = [load_run(p, label) for p, label in zip(paths, labels_for(paths), strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    figures = plot_groups(runs, out)
    (out / "compare.md").write_text(comparison_markdown(runs, figures))
    return write_report_html(out / "compare.md", out / "compare.html", title="Run comparison: "
                             + ", ".join(r.label for r in runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.compare", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories to compare")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/compare-<time>/)")
    args = parser.parse_args(argv)
    if len(args.run_dirs) < 2:
        print("error: jobs.compare: give at least two run directories.", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    page = compare(list(args.run_dirs), out)
    print(f"comparison: {page} (also compare.md and {len(list(out.glob('*.png')))} PNGs in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
