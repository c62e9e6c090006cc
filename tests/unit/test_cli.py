"""One command-line behaviour for every entry point: --dry-run, cross-field rules before anything starts,
explicit --resume, one-line errors (exit 2)."""

from __future__ import annotations

import argparse
import json

import pytest

from jobs import pretrain as pretrain_job
from jobs import rl as rl_job
from jobs import train_reward_model as rm_job
from jobs.cli import run_entry
from rl_platform.checkpointing import CheckpointStore
from rl_platform.config import ConfigError

ENTRIES = {
    "rl": (rl_job, "grpo_smoke"),
    "pretrain": (pretrain_job, "pretrain_smoke"),
    "train_reward_model": (rm_job, "rm_smoke"),
}
CHECKPOINTS = {"rl": "rl", "pretrain": "pretrain", "train_reward_model": None}  # folder under <run>/checkpoints/


def _main(entry: str, *args: str) -> int:
    module, recipe = ENTRIES[entry]
    try:
        return module.main(["--recipe", recipe, *args])
    except SystemExit as exc:  # argparse and the one-line errors exit through SystemExit
        return int(exc.code or 0)


def _isolated_base_model(tmp_path) -> list[str]:
    """Keeps RL dry runs from looking at (or describing) the shared model cache."""
    return ["--set", f"base_model.cache_dir={tmp_path / 'models'}"]


@pytest.fixture
def nothing_starts(monkeypatch):
    """Any attempt to pretrain, start Ray or train fails the test."""

    def forbidden(*_a, **_k):
        raise AssertionError("the run started although the config is invalid")

    monkeypatch.setattr(rl_job, "ensure_base_model", forbidden)
    monkeypatch.setattr(rl_job, "_start_ray", forbidden)
    monkeypatch.setattr(pretrain_job, "run_pretraining", forbidden)
    monkeypatch.setattr(rm_job, "train_reward_model", forbidden)


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_dry_run_prints_config_and_plan_and_starts_nothing(entry, tmp_path, capsys, nothing_starts):
    run_dir = tmp_path / "run"
    extra = _isolated_base_model(tmp_path) if entry == "rl" else []
    assert _main(entry, "--dry-run", "--run-dir", str(run_dir), *extra) == 0
    out = capsys.readouterr().out
    resolved = json.loads(out[: out.index("\ndry run of")])
    assert resolved["recipe"] == ENTRIES[entry][1] and resolved["config"]["run"]["run_dir"] == str(run_dir)
    assert "nothing was started" in out and f"run dir: {run_dir} (new)" in out
    assert not run_dir.exists()


def test_rl_dry_run_plan_names_actors_resources_and_base_model(tmp_path, capsys, nothing_starts):
    assert _main("rl", "--dry-run", *_isolated_base_model(tmp_path), "--set", "rollout.dtype=bfloat16") == 0
    plan = capsys.readouterr().out.split("plan:", 1)[1]
    for expected in ("1 rollout engine(s): vLLM in-process, bfloat16", "1 reward worker(s)", "1 learner: DeepSpeed",
                     "logical CPUs requested, 0 GPUs", "4 prompts x 4 samples = 16 rollouts",
                     "is not cached: pretrains it first (recipe pretrain_smoke, 6 steps"):
        assert expected in plan, (expected, plan)


RL_CROSS_FIELD_ERRORS = [
    (["sampling.temperature=0"], "sampling.temperature=0.0 must be > 0 for RL training"),
    (["sampling.num_samples_per_prompt=1"], "sampling.num_samples_per_prompt=1 must be >= 2"),
    (["rollout.max_model_len=100", "eval.max_tokens=48"], "rollout.max_model_len=100 must leave room"),
    (["eval.temperature=0", "eval.num_samples=2"], "eval.temperature=0.0 must be > 0 when eval.num_samples=2"),
    (["learner.num_minibatches=17"], "learner.num_minibatches=17 must be <= the rollouts per step (16"),
    (["base_model.pretrain_recipe=nope"], "base_model.pretrain_recipe='nope' is unknown"),
    (["base_model.path=/nonexistent/model"], "base_model.path='/nonexistent/model' has no config.json"),
    (["base_model.pretrain_recipe="], "base_model: this recipe needs a model: --set base_model.path="),
    (["base_model.pretrain_overrides=run.sed=1"], "base_model.pretrain_overrides='run.sed=1': --set run.sed=1: "
                                                  "unknown key 'run.sed'"),
]
PRETRAIN_CROSS_FIELD_ERRORS = [
    (["data.seq_len=2048"], "model.max_position_embeddings=1024 must be >= data.seq_len=2048"),
    (["model.vocab_size=256"], "model.vocab_size=256 must be >= data.tokenizer_vocab_size=512"),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-run"])
@pytest.mark.parametrize("entry,overrides,message", [("rl", o, m) for o, m in RL_CROSS_FIELD_ERRORS]
                         + [("pretrain", o, m) for o, m in PRETRAIN_CROSS_FIELD_ERRORS])
def test_cross_field_errors_exit_2_with_one_line_before_anything_starts(entry, overrides, message, dry_run,
                                                                         tmp_path, capsys, nothing_starts):
    args = [x for o in overrides for x in ("--set", o)] + ["--run-dir", str(tmp_path / "run")]
    args += _isolated_base_model(tmp_path) if entry == "rl" else []
    assert _main(entry, *args, *(["--dry-run"] if dry_run else [])) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: jobs.{entry}: ") and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_an_unsupported_model_architecture_is_refused_by_the_dry_run(tmp_path, capsys, nothing_starts):
    model = tmp_path / "mixtral"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"}))
    assert _main("rl", "--set", f"base_model.path={model}", "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: jobs.rl: base_model.path='{model}': ") and "MixtralForCausalLM" in err


def test_cross_field_rules_run_after_all_overrides_so_their_order_does_not_matter(tmp_path, capsys):
    # each override alone breaks the max_model_len rule; together they satisfy it
    args = ["--set", "sampling.max_tokens=600", "--set", "rollout.max_model_len=1024", "--dry-run"]
    assert _main("rl", *args, *_isolated_base_model(tmp_path)) == 0
    assert '"max_model_len": 1024' in capsys.readouterr().out


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_existing_run_dir_needs_resume_and_resume_needs_an_existing_run_dir(entry, tmp_path, capsys, nothing_starts):
    extra = [*_isolated_base_model(tmp_path), "--dry-run"] if entry == "rl" else ["--dry-run"]
    run_dir = tmp_path / "old_run"
    run_dir.mkdir()
    assert _main(entry, "--run-dir", str(run_dir), *extra) == 0  # an empty folder is a new run
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')

    assert _main(entry, "--run-dir", str(run_dir), *extra) == 2
    assert "already exists and is not empty (metrics.jsonl); add --resume" in capsys.readouterr().err
    assert _main(entry, "--resume", *extra) == 2
    assert "--resume needs --run-dir" in capsys.readouterr().err
    assert _main(entry, "--resume", "--run-dir", str(tmp_path / "missing"), *extra) == 2
    assert "does not exist" in capsys.readouterr().err
    role = CHECKPOINTS[entry]
    if role is None:  # keeps no checkpoints (a run takes minutes): --resume reruns or reports a finished run
        assert _main(entry, "--resume", "--run-dir", str(run_dir), *extra) == 0
        assert f"run dir: {run_dir} (resume)" in capsys.readouterr().out
        return
    # the same rule for every entry that keeps checkpoints: --resume needs one, never a silent fresh start
    assert _main(entry, "--resume", "--run-dir", str(run_dir), *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: jobs.{entry}: --resume: no checkpoint to resume from in {run_dir / 'checkpoints'}")
    assert "Run without --resume" in err and len(err.splitlines()) == 1
    CheckpointStore(run_dir / "checkpoints" / role).save(
        3, lambda staging, tag: (staging / tag).mkdir() or (staging / tag / "state.pt").write_bytes(b"x"), meta={})
    assert _main(entry, "--resume", "--run-dir", str(run_dir), *extra) == 0
    assert f"run dir: {run_dir} (resume from step-00000003)" in capsys.readouterr().out


def test_resume_reports_settings_that_differ_from_the_saved_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"recipe": "pretrain_smoke", "config": {"loop": {"num_steps": 6}}}))
    CheckpointStore(run_dir / "checkpoints" / "pretrain").save(
        2, lambda staging, tag: (staging / tag).mkdir() or (staging / tag / "state.pt").write_bytes(b"x"), meta={})
    assert _main("pretrain", "--resume", "--run-dir", str(run_dir), "--set", "loop.num_steps=9", "--dry-run") == 0
    assert "differs from the run's saved config: loop.num_steps: 6 -> 9" in capsys.readouterr().out


def test_a_config_error_found_inside_the_run_is_one_line_and_exit_2(tmp_path, capsys):
    def run(recipe, config, args: argparse.Namespace) -> int:
        raise ConfigError("reward.path='x' does not exist; train one first")

    with pytest.raises(SystemExit) as exc:
        run_entry("pretrain", "test", run, ["--recipe", "pretrain_smoke", "--run-dir", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "error: jobs.pretrain: reward.path='x' does not exist; train one first"


def test_list_keys_shows_value_and_field_documentation(capsys):
    assert _main("rl", "--list-keys") == 0
    out = capsys.readouterr().out
    assert "sampling.temperature = 1.0\n" in out
    assert 'learner.routing_replay = "R3"\n    off: live routing; R2: replay' in out
    assert 'reward = "arithmetic_verifier"\n' in out and "Variants: " in out and "remote" in out
