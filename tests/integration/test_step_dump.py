"""Per-update dumps from the real DeepSpeed learner, read back by the forensics CLI."""

import json

import pytest
import torch

from jobs.inspect_mismatch import main as inspect_main
from rl_platform.learner import Learner, LearnerConfig
from rl_platform.model.hf_interop import load_hf
from rl_platform.replay_forensics import mismatch_summary, score
from rl_platform.step_dump import StepDumpConfig, load_step_dump, version_of_step
from tests.integration.test_learner import _rollouts, model_dir  # noqa: F401  (module fixture)


@pytest.mark.parametrize("mode", ["R3", "R2"])
def test_dump_round_trips_and_replays_the_learner_forward(model_dir, tmp_path, mode):  # noqa: F811
    dump_dir = tmp_path / "batches"
    config = LearnerConfig(routing_replay=mode, micro_batch_size=3,
                           dump=StepDumpConfig(enabled=True, dir=str(dump_dir)))
    learner = Learner(config, str(model_dir))
    rollouts, advantages = _rollouts(model_dir, perturb_routes=False)
    metrics = learner.train_on_rollouts(rollouts, advantages)
    learner.train_on_rollouts(rollouts, advantages)

    dump = load_step_dump(dump_dir, 0)
    assert dump.mode == mode and dump.weights_dir is not None and (dump_dir / "update_0001.npz").exists()
    assert dump.batch.prompt_lengths_B.tolist() == [len(r.prompt.token_ids) for r in rollouts]
    assert dump.batch.rollout_routes_BSLK.min() == -1  # the none marker survives the uint8 encoding
    assert mismatch_summary(dump.learner_lp_BS, dump.batch)["train/kl_train_infer"] == pytest.approx(
        metrics["train/kl_train_infer"], rel=1e-6, abs=1e-12)
    assert (dump.replay_routes_BSLK is not None) == (mode == "R2")
    # the dumped weights are the pre-update ones: replaying the update's routes reproduces the logged log-probs
    replayed = score(load_hf(dump.weights_dir), dump.batch, dump.applied_routes_BSLK())
    assert (replayed.logprobs_BS - dump.learner_lp_BS)[dump.batch.mask_BS.bool()].abs().max() < 1e-5


def test_inspect_cli_reports_a_dumped_step(model_dir, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    config = LearnerConfig(micro_batch_size=4, dump=StepDumpConfig(enabled=True, dir=str(run / "batches")))
    learner = Learner(config, str(model_dir))
    learner.train_on_rollouts(*_rollouts(model_dir, perturb_routes=True))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "policy/version": 1.0, "train/skipped": 0.0}) + "\n")
    assert version_of_step(run, 1) == 0
    assert inspect_main([str(run), "--step", "1", "--top", "3"]) == 0
    report = json.loads((run / "forensics" / "step_1.json").read_text())
    assert report["replayed_forward_max_abs_diff_vs_logged"] < 1e-5
    assert len(report["worst_tokens"]) == 3
    assert report["alignment"]["route_match_shift+0"] < 0.5  # every route was perturbed in these rollouts
    summary = report["decomposition"]["summary"]
    # the simulated engine scored its tokens with live routes and then reported shifted experts: forcing those
    # routes (what R3 does) can only make the learner disagree more
    assert summary["kl_engine_routes"] > summary["kl_live"]
    assert "worst" not in capsys.readouterr().err
    assert inspect_main([str(run), "--all"]) == 0
    rows = json.loads((run / "forensics" / "decomposition.json").read_text())
    assert [r["version"] for r in rows] == [0]
    assert inspect_main([str(run), "--step", "2"]) == 2  # not logged: a clear error, exit 2
    torch.set_grad_enabled(True)
