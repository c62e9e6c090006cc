"""The ablation study's variants, its summary row and report (on synthetic metrics), and its CLI errors."""

import json
import math

import pytest

from jobs.ablate import STUDIES, main
from jobs.ablate_report import max_drawdown, moving_average, summarise, write_study_report
from jobs.recipes import recipes_for
from rl_platform.config import apply_overrides


def test_every_stability_variant_is_a_valid_rl_config():
    study = STUDIES["stability"](30)
    names = [v.name for v in study.variants]
    assert names == ["grpo_r3", "grpo_no_replay", "gspo", "gspo_icepop", "misc", "misc_wpsm", "hard_grpo_r3",
                     "hard_grpo_r3_ahrl"]
    for variant in study.variants:
        config = apply_overrides(recipes_for("rl")[variant.recipe](), list(variant.overrides))
        assert config.rollout.dtype == "bfloat16" and config.loop.num_steps == 30 and config.run.seed == 0
        assert config.sampling.num_samples_per_prompt == 8 and config.loop.num_prompts_per_step == 16
    by_name = {v.name: apply_overrides(recipes_for("rl")[v.recipe](), list(v.overrides)) for v in study.variants}
    assert by_name["grpo_no_replay"].learner.routing_replay == "off"
    assert type(by_name["misc_wpsm"].learner.loss).registered_name == "misc" and by_name["misc_wpsm"].loop.wpsm.enabled
    assert by_name["hard_grpo_r3_ahrl"].loop.ahrl.enabled and by_name["hard_grpo_r3_ahrl"].prompts.min_digits == 4


def test_max_drawdown_and_summary_by_hand():
    assert max_drawdown([1.0, 0.6, 0.9, 0.2, 0.5]) == pytest.approx(0.8)
    assert max_drawdown([0.1, 0.2]) == 0.0
    assert moving_average([1.0, 0.4, 0.7, 0.1], 3) == pytest.approx([0.7, 0.4])
    assert moving_average([0.2, 0.4], 3) == pytest.approx([0.3]) and moving_average([], 3) == []
    sampled_entropy = [0.9, 0.6, 0.9, 0.3, 0.3]  # 3-step means 0.8, 0.6, 0.5
    rows = [{"step": 0, "eval/pass_rate": 0.5, "eval/sampled_pass_rate": 0.4},
            {"step": 1, "policy/entropy": 0.8, "train/kl_train_infer": 1e-3, "correction/masked_frac": 0.0},
            {"step": 2, "policy/entropy": 0.5, "train/kl_train_infer": 3e-3, "correction/masked_frac": 0.1},
            *({"step": s + 1, "rollout/entropy": e} for s, e in enumerate(sampled_entropy)),
            {"step": 2, "eval/pass_rate": 0.7, "eval/sampled_pass_rate": 0.3}]
    row = summarise(rows, wall_seconds=90)
    assert (row["greedy_start"], row["greedy_final"], row["greedy_best"]) == (0.5, 0.7, 0.7)
    assert (row["sampled_final"], row["sampled_best"]) == (0.3, 0.4)
    assert row["entropy_start"] == pytest.approx(0.8) and row["entropy_end"] == pytest.approx(0.5)
    assert row["entropy_max_drop"] == pytest.approx(0.3) and row["trained_entropy_end"] == pytest.approx(0.65)
    assert row["kl_train_infer_mean"] == pytest.approx(2e-3) and row["masked_frac_mean"] == pytest.approx(0.05)
    assert row["wall_minutes"] == 1.5 and math.isnan(row["hinted_frac_mean"])


def test_report_lists_finished_variants_with_their_curves(tmp_path):
    for name, entropy in (("a", [0.9, 0.5]), ("b", [0.9, 0.8])):
        (tmp_path / name).mkdir()
        rows = [{"step": s + 1, "rollout/entropy": e, "reward/mean": 0.5} for s, e in enumerate(entropy)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / f"{name}.done.json").write_text(json.dumps({"wall_seconds": 60}))
    path = write_study_report(tmp_path, [("a", "standard"), ("b", "standard"), ("unfinished", "hard")])
    text = path.read_text()
    assert "| a | standard |" in text and "| b | standard |" in text and "unfinished" not in text
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    # two steps are shorter than the moving-average window: one mean, no drop
    assert summary["a"]["entropy_end"] == pytest.approx(0.7) and summary["a"]["entropy_max_drop"] == 0.0
    assert (tmp_path / "report" / "entropy.png").stat().st_size > 1000


def test_cli_rejects_unknown_variants_and_steps(capsys):
    assert main(["--study", "stability", "--only", "nope"]) == 2
    assert "not variants" in capsys.readouterr().err
    assert main(["--study", "stability", "--steps", "0"]) == 2
