"""The replay study's statistics and report, on hand-written run folders (the runs themselves are jobs.rl)."""

import json

import numpy as np
import pytest

from jobs.replay_study import parse_args, rl_command, run_is_complete
from jobs.replay_study_report import write_study_report
from rl_platform.replay_study_stats import difference_of_means, hierarchical_bootstrap, mean_over_seeds


def test_bootstrap_interval_brackets_the_estimate_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    small = [rng.normal(1.0, 0.5, 10).tolist() for _ in range(3)]
    large = [rng.normal(1.0, 0.5, 200).tolist() for _ in range(3)]
    a, b = hierarchical_bootstrap(small, np.nanmean), hierarchical_bootstrap(large, np.nanmean)
    assert a.low <= a.value <= a.high and b.low <= b.value <= b.high
    assert (b.high - b.low) < (a.high - a.low)
    assert hierarchical_bootstrap([[None, float("nan")]], np.nanmean).format() == "n/a"


def test_difference_of_means_separates_shifted_samples_only():
    rng = np.random.default_rng(1)
    base = [rng.normal(0.0, 1.0, 40).tolist() for _ in range(3)]
    same = [rng.normal(0.0, 1.0, 40).tolist() for _ in range(3)]
    shifted = [rng.normal(2.0, 1.0, 40).tolist() for _ in range(3)]
    assert difference_of_means(shifted, base).low > 0
    d = difference_of_means(same, base)
    assert d.low < 0 < d.high
    assert mean_over_seeds([0.5, 0.6, 0.7]).value == pytest.approx(0.6)


def _write_run(path, kls, pass_rates):
    path.mkdir(parents=True)
    rows = [{"step": 0, "eval/pass_rate": pass_rates[0]}]
    for step, kl in enumerate(kls, 1):
        rows.append({"step": step, "train/rows": 64.0, "train/skipped": 0.0, "policy/version": float(step),
                     "train/kl_train_infer": kl, "moe/extreme_token_frac_tau2": 0.0,
                     "moe/route_mismatch_during_update": 0.0, "moe/route_mismatch": 0.01,
                     "train/logprob_abs_diff_mean": 1e-3, "train/logprob_abs_diff_max": 0.1,
                     "train/kl_train_infer_tokens": 500.0})
    rows.append({"step": len(kls), "eval/pass_rate": pass_rates[1]})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_study_report_writes_table_json_and_plots(tmp_path):
    spec = {"recipe": "grpo_tiny_bf16_r3", "base": "b", "modes": ["R3", "off"], "seeds": [0, 1], "steps": 5,
            "eval_prompts": 8, "set": [], "decompose": False, "command": "python -m jobs.replay_study ..."}
    for seed in (0, 1):
        _write_run(tmp_path / f"R3-seed{seed}", [1e-5, 2e-5, 1e-5, 9e-4, 1e-5], (0.5, 0.6))
        _write_run(tmp_path / f"off-seed{seed}", [3e-5, 4e-5, 3e-5, 3e-5, 5e-5], (0.5, 0.55))
    assert run_is_complete(tmp_path / "R3-seed0", 5) and not run_is_complete(tmp_path / "R3-seed0", 6)
    md = write_study_report(tmp_path, spec, "test").read_text()
    agg = json.loads((tmp_path / "study.json").read_text())["aggregate"]
    assert agg["step_metrics"]["train/kl_train_infer"]["R3"]["max"]["value"] == pytest.approx(9e-4)
    assert agg["step_metrics"]["train/kl_train_infer"]["off"]["median"]["value"] == pytest.approx(3e-5)
    assert agg["eval"]["eval/pass_rate"]["R3"]["last"]["value"] == pytest.approx(0.6)
    assert "R3-off" in agg["differences"]
    assert "| R3 | 0 | 4 | 9.00e-04 |" in md or "| R3 | 1 | 4 | 9.00e-04 |" in md  # the spike is listed
    assert (tmp_path / "train_kl_train_infer.png").stat().st_size > 1000
    assert (tmp_path / "eval_pass_rate.png").exists()


def test_study_command_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    args = parse_args(["--base", str(tmp_path), "--modes", "R3,off", "--seeds", "0,1", "--steps", "3",
                       "--set", "learner.bf16=true", "--decompose"])
    command = rl_command(args, "off", 1, tmp_path / "run")
    assert "learner.routing_replay=off" in command and "run.seed=1" in command
    assert "learner.bf16=true" in command and "learner.dump.enabled=true" in command
    with pytest.raises(SystemExit):
        parse_args(["--base", str(tmp_path), "--modes", "R4"])
