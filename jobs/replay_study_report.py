"""Aggregation, table and plots of `python -m jobs.replay_study` (docs/routing_replay.md, 'Study')."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rl_platform.replay_study_stats import difference_of_means, mean_over_seeds, summarize_metric
from rl_platform.run_dir import read_metrics

STEP_METRICS = {
    "train/kl_train_infer": "train-infer KL (k3)",
    "moe/extreme_token_frac_tau2": "extreme-token fraction (|log r| > log 2)",
    "moe/route_mismatch_during_update": "route mismatch during the update",
    "moe/route_mismatch": "route mismatch, learner live vs engine",
    "train/logprob_abs_diff_mean": "mean |dlogp| train vs infer",
}
EXTRA_SERIES = ("train/rows", "train/logprob_abs_diff_max", "train/kl_train_infer_tokens")
EVAL_METRICS = {"eval/pass_rate": "held-out greedy pass@1", "eval/sampled_pass_rate": "held-out sampled pass@1"}
DECOMPOSITION = {"kl_live": "KL, learner fp32 live routes", "kl_engine_routes": "KL, learner fp32 engine routes",
                 "kl_bf16_engine_routes": "KL, learner bf16 engine routes"}


def load_runs(out: Path, spec: dict) -> dict[str, list[dict]]:
    """mode -> one record per seed that has metrics: per-step series, first/last eval, decomposition."""
    runs: dict[str, list[dict]] = {}
    for mode in spec["modes"]:
        for seed in spec["seeds"]:
            path = out / f"{mode}-seed{seed}" / "metrics.jsonl"
            if not path.exists():
                continue
            rows = read_metrics(path)
            train = [r for r in rows if "train/rows" in r and not r.get("train/skipped")]
            evals = [r for r in rows if "eval/pass_rate" in r]
            record = {"seed": seed, "steps": [r["step"] for r in train],
                      "series": {k: [r.get(k) for r in train] for k in (*STEP_METRICS, *EXTRA_SERIES)},
                      "versions": [int(r["policy/version"]) - 1 for r in train],
                      "eval_first": evals[0] if evals else {}, "eval_last": evals[-1] if len(evals) > 1 else {}}
            decomposition = out / f"{mode}-seed{seed}" / "forensics" / "decomposition.json"
            if decomposition.exists():
                rows_d = json.loads(decomposition.read_text())
                record["decomposition"] = {k: [row["summary"].get(k) for row in rows_d] for k in DECOMPOSITION}
                record["decomposition_by_version"] = {
                    row["version"]: {"kl_live": row["summary"].get("kl_live"),
                                     "kl_engine_routes": row["summary"].get("kl_engine_routes"),
                                     "top1pct_share": row["settings"]["fp32/live"].get("kl_share_top1pct_tokens")}
                    for row in rows_d}
            record["spikes_by_version"] = _spike_profiles(out / f"{mode}-seed{seed}" / "batches")
            runs.setdefault(mode, []).append(record)
    return runs


def _spike_profiles(batches: Path) -> dict[int, dict[str, float]]:
    """version -> spike_profile of every dumped update (runs made with --decompose; batch files only)."""
    from rl_platform.spike_profile import dump_spike_profile
    from rl_platform.step_dump import dumped_versions, load_step_dump

    if not batches.is_dir():
        return {}
    return {v: dump_spike_profile(load_step_dump(batches, v)) for v in dumped_versions(batches)}


def spike_attribution(runs: dict[str, list[dict]], factor: float = 3.0) -> dict[str, dict[str, float]]:
    """Per mode: the steps whose KL exceeds `factor` x the mode's median step KL ('spikes') vs the others:
    how many, how few tokens carry half of their KL, and the KL mass of improbable samples and of tokens after
    a live route flip (medians / means over the steps of each group; needs the dumps)."""
    out: dict[str, dict[str, float]] = {}
    for mode, records in runs.items():
        steps = [(kl, r["spikes_by_version"].get(v)) for r in records
                 for kl, v in zip(r["series"]["train/kl_train_infer"], r["versions"], strict=True)
                 if kl is not None and r.get("spikes_by_version")]
        if not steps:
            continue
        threshold = factor * float(np.median([kl for kl, _ in steps]))
        row: dict[str, float] = {"threshold": threshold}
        for name, group in (("spike", [p for kl, p in steps if kl > threshold and p]),
                            ("other", [p for kl, p in steps if kl <= threshold and p])):
            row[f"{name}_steps"] = float(len(group))
            for key, how in (("tokens", np.median), ("tokens_for_half_kl", np.median),
                             ("low_prob_kl_mass", np.mean), ("after_flip_kl_mass", np.mean),
                             ("worst_token_kl_mass", np.mean), ("worst_token_p_engine", np.median)):
                values = _clean([p.get(key) for p in group])
                row[f"{name}_{key}"] = float(how(values)) if values else float("nan")
        out[mode] = row
    return out


def _clean(values: list) -> list[float]:
    return [float(v) for v in values if v is not None and np.isfinite(v)]


def aggregate(runs: dict[str, list[dict]]) -> dict:
    result: dict = {"step_metrics": {}, "eval": {}, "differences": {}, "decomposition": {}}
    for key in STEP_METRICS:
        result["step_metrics"][key] = {
            mode: {name: est.as_dict() for name, est in
                   summarize_metric([_clean(r["series"][key]) for r in records]).items()}
            for mode, records in runs.items()}
    for key in EVAL_METRICS:
        result["eval"][key] = {mode: {
            "first": mean_over_seeds([r["eval_first"].get(key) for r in records]).as_dict(),
            "last": mean_over_seeds([r["eval_last"].get(key) for r in records]).as_dict(),
            "per_seed_last": [r["eval_last"].get(key) for r in records]} for mode, records in runs.items()}
    result["token_weighted_kl"] = {mode: mean_over_seeds([_token_weighted(r) for r in records]).as_dict()
                                   for mode, records in runs.items()}
    if "off" in runs:
        for mode in runs:
            if mode != "off":
                result["differences"][f"{mode}-off"] = {key: difference_of_means(
                    [_clean(r["series"][key]) for r in runs[mode]],
                    [_clean(r["series"][key]) for r in runs["off"]]).as_dict() for key in STEP_METRICS}
    pooled = [r["decomposition"] for records in runs.values() for r in records if "decomposition" in r]
    if pooled:
        for key in DECOMPOSITION:
            result["decomposition"][key] = {n: e.as_dict() for n, e in summarize_metric(
                [_clean(d[key]) for d in pooled]).items()}
        live = np.concatenate([np.asarray(d["kl_live"], float) for d in pooled])
        replayed = np.concatenate([np.asarray(d["kl_engine_routes"], float) for d in pooled])
        ok = np.isfinite(live) & np.isfinite(replayed) & (live > 0)
        result["decomposition"]["paired"] = {
            "steps": int(ok.sum()), "mean_kl_live": float(live[ok].mean()),
            "mean_kl_engine_routes": float(replayed[ok].mean()),
            "routing_share_of_mean": float(1 - replayed[ok].mean() / live[ok].mean()),
            "steps_where_replay_lowers_kl": float((replayed[ok] < live[ok]).mean())}
    result["spikes"] = spike_attribution(runs)
    return result


def _token_weighted(record: dict) -> float:
    """The run's KL over all its scored tokens (steps weighted by how many tokens they averaged over)."""
    kl, tokens = record["series"]["train/kl_train_infer"], record["series"]["train/kl_train_infer_tokens"]
    pairs = [(k, t) for k, t in zip(kl, tokens, strict=True) if k is not None and t]
    return sum(k * t for k, t in pairs) / sum(t for _, t in pairs) if pairs else float("nan")


def _fmt(est: dict, digits: int = 2) -> str:
    if not np.isfinite(est["value"]):
        return "n/a"
    return f"{est['value']:.{digits}e} [{est['low']:.{digits}e}, {est['high']:.{digits}e}]"


def _fmt_rate(est: dict) -> str:
    return "n/a" if not np.isfinite(est["value"]) else f"{est['value']:.3f} [{est['low']:.3f}, {est['high']:.3f}]"


def render_markdown(title: str, spec: dict, runs: dict[str, list[dict]], agg: dict) -> str:
    modes = list(runs)
    seeds = {m: len(r) for m, r in runs.items()}
    lines = [f"# Routing replay study: {title}", "", f"`{spec['command']}`", "",
             f"Base `{spec['base']}`, {spec['steps']} steps, seeds per mode {seeds}. Per-step values pooled over "
             "seeds; brackets: 95 % hierarchical bootstrap interval (seeds, then steps).", "",
             "| metric | statistic | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
    for key, label in STEP_METRICS.items():
        for stat in ("mean", "median", "p90", "max"):
            cells = [_fmt(agg["step_metrics"][key][m][stat]) for m in modes]
            lines.append(f"| {label} | {stat} | " + " | ".join(cells) + " |")
    lines += ["", "| held-out pass@1 (mean over seeds) | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for key, label in EVAL_METRICS.items():
        for when in ("first", "last"):
            lines.append(f"| {label}, {'before' if when == 'first' else 'after'} | "
                         + " | ".join(_fmt_rate(agg["eval"][key][m][when]) for m in modes) + " |")
    lines.append("| train-infer KL over all scored tokens (token-weighted, mean over seeds) | "
                 + " | ".join(_fmt(agg["token_weighted_kl"][m]) for m in modes) + " |")
    for name, diffs in agg["differences"].items():
        lines += ["", f"Difference of means {name} (95 % interval; an interval that holds 0 is no difference):", ""]
        lines += [f"- {STEP_METRICS[k]}: {_fmt(v)}" for k, v in diffs.items()]
    if agg["decomposition"]:
        paired = agg["decomposition"]["paired"]
        lines += ["", "Same rollouts re-scored (every dumped step of every run): replay's effect without run noise.",
                  "", "| quantity | mean | median | p90 | max |", "|---|---|---|---|---|"]
        for key, label in DECOMPOSITION.items():
            est = agg["decomposition"][key]
            lines.append(f"| {label} | " + " | ".join(_fmt(est[s]) for s in ("mean", "median", "p90", "max")) + " |")
        lines += ["", f"Replay lowers the step's KL on {paired['steps_where_replay_lowers_kl']:.0%} of "
                  f"{paired['steps']} steps; routing share of the mean KL {paired['routing_share_of_mean']:.1%}."]
    lines += worst_steps_table(runs)
    lines += spike_lines(agg.get("spikes", {}))
    return "\n".join(lines) + "\n"


def spike_lines(spikes: dict[str, dict[str, float]]) -> list[str]:
    if not spikes:
        return []
    lines = ["", "Spike steps (KL > 3 x the mode's median step KL) vs the other steps, from the dumps: median scored "
             "tokens and tokens carrying half the KL; mean share of the KL carried by improbable samples (engine "
             "p < 0.01), by tokens after a live route flip, and by the single worst token; median engine p of the "
             "worst token.", "",
             "| mode | group | steps | tokens | tokens for half the KL | improbable-sample KL share | "
             "after-flip KL share | worst-token KL share | worst token p_engine |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, row in spikes.items():
        for group in ("spike", "other"):
            lines.append(f"| {mode} | {group} | {row[f'{group}_steps']:.0f} | {row[f'{group}_tokens']:.0f} | "
                         f"{row[f'{group}_tokens_for_half_kl']:.0f} | {row[f'{group}_low_prob_kl_mass']:.0%} | "
                         f"{row[f'{group}_after_flip_kl_mass']:.0%} | {row[f'{group}_worst_token_kl_mass']:.0%} | "
                         f"{row[f'{group}_worst_token_p_engine']:.3g} |")
    return lines


def worst_steps_table(runs: dict[str, list[dict]], per_mode: int = 4) -> list[str]:
    """The highest-KL steps of each mode with what the dumps say about them: is the spike routing (KL with
    the engine's routes far below the live one) or a handful of tokens (the top 1 % carry most of it)?"""
    lines = ["", f"Highest-KL steps per mode (top {per_mode}); 'replayed' re-scores the same batch with the engine's "
             "routes, 'live' with the learner's own; top-1 % share: KL carried by the step's worst 1 % tokens.", "",
             "| mode | seed | step | KL | trained rows | scored tokens | extreme frac | max \\|dlogp\\| | "
             "KL live / replayed | top-1 % share | tokens for half the KL | worst token p engine -> learner |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, records in runs.items():
        rows = []
        for r in records:
            for i, kl in enumerate(r["series"]["train/kl_train_infer"]):
                if kl is not None:
                    rows.append((kl, r, i))
        for kl, r, i in sorted(rows, key=lambda x: -x[0])[:per_mode]:
            d = r.get("decomposition_by_version", {}).get(r["versions"][i], {})
            pair = (f"{d['kl_live']:.2e} / {d['kl_engine_routes']:.2e}" if d.get("kl_live") is not None else "n/a")
            share = f"{d['top1pct_share']:.0%}" if d.get("top1pct_share") is not None else "n/a"
            series = r["series"]
            tokens = series["train/kl_train_infer_tokens"][i]
            spike = r.get("spikes_by_version", {}).get(r["versions"][i], {})
            half = f"{spike['tokens_for_half_kl']:.0f}" if "tokens_for_half_kl" in spike else "n/a"
            worst = (f"{spike['worst_token_p_engine']:.3g} -> {spike['worst_token_p_learner']:.3g}"
                     if "worst_token_p_engine" in spike else "n/a")
            lines.append(f"| {mode} | {r['seed']} | {r['steps'][i]} | {kl:.2e} | {series['train/rows'][i]:.0f} | "
                         f"{'n/a' if tokens is None else f'{tokens:.0f}'} | "
                         f"{series['moe/extreme_token_frac_tau2'][i]:.2e} | "
                         f"{series['train/logprob_abs_diff_max'][i]:.3f} | {pair} | {share} | {half} | {worst} |")
    return lines


def plot_metric(out: Path, key: str, label: str, runs: dict[str, list[dict]], agg: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, records in runs.items():
        length = min(len(r["series"][key]) for r in records)
        matrix = np.array([[np.nan if v is None else v for v in r["series"][key][:length]] for r in records], float)
        steps = np.arange(1, length + 1)
        left.plot(steps, np.nanmean(matrix, axis=0), label=f"{mode} (mean of {len(records)} seeds)")
        left.fill_between(steps, np.nanmin(matrix, axis=0), np.nanmax(matrix, axis=0), alpha=0.2)
    left.set_xlabel("RL step")
    left.set_ylabel(label)
    left.legend()
    stats = ("mean", "median", "p90", "max")
    width = 0.8 / max(1, len(runs))
    for i, mode in enumerate(runs):
        est = [agg["step_metrics"][key][mode][s] for s in stats]
        x = np.arange(len(stats)) + i * width
        values = np.array([e["value"] for e in est])
        errors = np.array([[e["value"] - e["low"], e["high"] - e["value"]] for e in est]).T
        right.bar(x, values, width, yerr=errors, capsize=3, label=mode)
    right.set_xticks(np.arange(len(stats)) + width * (len(runs) - 1) / 2, stats)
    right.set_title("per-step values, 95 % bootstrap intervals")
    right.legend()
    fig.suptitle(label)
    fig.tight_layout()
    path = out / f"{key.replace('/', '_')}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_eval(out: Path, runs: dict[str, list[dict]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(EVAL_METRICS), figsize=(10, 4))
    for ax, (key, label) in zip(axes, EVAL_METRICS.items(), strict=True):
        for i, (mode, records) in enumerate(runs.items()):
            last = _clean([r["eval_last"].get(key) for r in records])
            first = _clean([r["eval_first"].get(key) for r in records])
            ax.bar(i, np.mean(last) if last else np.nan, 0.6, alpha=0.6, label=mode)
            ax.scatter([i] * len(last), last, color="k", s=12, zorder=3)
            if first:
                ax.hlines(np.mean(first), i - 0.3, i + 0.3, colors="r", linestyles="dashed")
        ax.set_xticks(range(len(runs)), list(runs))
        ax.set_title(f"{label} after (dots: seeds; dashed: before)")
    fig.tight_layout()
    path = out / "eval_pass_rate.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_study_report(out: Path, spec: dict, title: str) -> Path:
    runs = load_runs(out, spec)
    if not runs:
        raise RuntimeError(f"no finished runs under {out}")
    agg = aggregate(runs)
    (out / "study.json").write_text(json.dumps({"spec": spec, "aggregate": agg, "runs": runs}, indent=1) + "\n")
    for key, label in STEP_METRICS.items():
        plot_metric(out, key, label, runs, agg)
    plot_eval(out, runs)
    md = out / "study.md"
    md.write_text(render_markdown(title, spec, runs, agg))
    return md
