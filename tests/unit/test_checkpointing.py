"""Checkpoint store (atomic commit, unique tags, pruning, corruption fallback), run-log truncation, and the
two-stage stop signal handler. Real files, real signals; no DeepSpeed (the integration tests cover it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rl_platform.checkpointing import (
    CheckpointConfig,
    CheckpointError,
    CheckpointStore,
    checkpoint_to_load,
    tag_for,
)
from rl_platform.run_dir import RunConfig, RunDir, truncate_jsonl
from rl_platform.shutdown import resume_command

ROOT = Path(__file__).resolve().parents[2]


def _writer(payload: bytes):
    def write(staging: Path, tag: str) -> None:
        (staging / tag).mkdir()
        (staging / tag / "model.pt").write_bytes(payload)
        (staging / tag / "sub").mkdir()
        (staging / tag / "sub" / "optim.pt").write_bytes(payload[::-1])
    return write


def test_save_commits_a_verified_tagged_directory_and_latest(tmp_path):
    store = CheckpointStore(tmp_path / "rl")
    info = store.save(3, _writer(b"abc"), meta={"step": 3, "run_files": {"metrics.jsonl": 10}})
    assert info.path == tmp_path / "rl" / "step-00000003" and info.step == 3
    assert info.meta["run_files"] == {"metrics.jsonl": 10}
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.pt", "sub/optim.pt"}
    assert (tmp_path / "rl" / "latest").read_text() == "step-00000003"
    assert not [p for p in (tmp_path / "rl").iterdir() if p.name.startswith(".")]  # no staging left
    assert store.problem(info.path) is None


def test_tags_are_the_loop_step_so_an_unchanged_learner_step_does_not_collide(tmp_path):
    store = CheckpointStore(tmp_path, CheckpointConfig(keep_last=5))
    for step in (1, 2, 3):  # e.g. steps 2 and 3 were all-flat: the learner did not step, the loop did
        store.save(step, _writer(f"state{step}".encode()), meta={"step": step})
    assert [c.tag for c in store.committed()] == [tag_for(1), tag_for(2), tag_for(3)]
    assert (store.root / tag_for(2) / "model.pt").read_bytes() == b"state2"


def test_keep_last_prunes_the_oldest(tmp_path):
    store = CheckpointStore(tmp_path, CheckpointConfig(keep_last=2))
    for step in range(1, 5):
        store.save(step, _writer(b"x"), meta={})
        store.prune()
    assert [c.step for c in store.committed()] == [3, 4]


def test_a_killed_save_leaves_the_previous_checkpoint_and_is_cleaned_up(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, _writer(b"one"), meta={"step": 1})

    def dies_half_way(staging: Path, tag: str) -> None:
        (staging / tag).mkdir()
        (staging / tag / "model.pt").write_bytes(b"partial")
        raise KeyboardInterrupt  # stands for SIGKILL: nothing after this line runs

    with pytest.raises(KeyboardInterrupt):
        store.save(2, dies_half_way, meta={"step": 2})
    assert store.newest_valid().step == 1  # the staging directory is never a candidate
    store.save(3, _writer(b"three"), meta={"step": 3})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_manifest"])
def test_corrupt_newest_is_named_and_the_previous_one_used(tmp_path, caplog, damage):
    store = CheckpointStore(tmp_path)
    store.save(1, _writer(b"good" * 100), meta={"step": 1})
    newest = store.save(2, _writer(b"good" * 100), meta={"step": 2})
    target = newest.path / "model.pt"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    elif damage == "flip":
        target.write_bytes(b"evil" + target.read_bytes()[4:])
    elif damage == "delete":
        target.unlink()
    else:
        (newest.path / "manifest.json").unlink()
    with caplog.at_level("ERROR"):
        info = store.newest_valid()
    assert info.step == 1
    assert str(newest.path) in caplog.text and "incomplete or corrupt" in caplog.text
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        checkpoint_to_load(newest.path)


def test_size_only_verification_misses_a_same_size_flip_by_design(tmp_path):
    store = CheckpointStore(tmp_path, CheckpointConfig(verify="size"))
    info = store.save(1, _writer(b"good"), meta={})
    (info.path / "model.pt").write_bytes(b"evil")
    assert store.problem(info.path) is None
    assert CheckpointStore(tmp_path).problem(info.path) is not None  # sha256 (the default) catches it


def test_no_checkpoint_is_an_error_that_says_what_was_found(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from .*: none"):
        CheckpointStore(tmp_path / "missing").require_newest_valid()
    (tmp_path / "rl" / "step-00000001").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="only broken ones: step-00000001 \\(no manifest.json"):
        CheckpointStore(tmp_path / "rl").require_newest_valid()


def test_run_logs_are_cut_back_to_the_checkpoint_offsets(tmp_path):
    run = RunDir.create(RunConfig(run_dir=str(tmp_path / "run"), use_wandb=False), "t", {"a": 1})
    try:
        run.log_metrics(1, {"x/y": 1.0})
        run.jsonl("ledger.jsonl").write('{"step": 1}\n')
        offsets = run.jsonl_offsets()
        run.log_metrics(2, {"x/y": 2.0})
        run.jsonl("ledger.jsonl").write('{"step": 2}\n')
        (run.path / "late.jsonl").write_text('{"step": 2}\n')  # a file the checkpoint did not know
        removed = run.truncate_jsonl(offsets)
        assert set(removed) == {"metrics.jsonl", "ledger.jsonl", "late.jsonl"}
        run.log_metrics(2, {"x/y": 2.5})  # the resumed step appends right after the cut
    finally:
        run.close()
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["x/y"]) for r in rows] == [(1, 1.0), (2, 2.5)]
    assert (run.path / "ledger.jsonl").read_text() == '{"step": 1}\n'
    assert (run.path / "late.jsonl").read_text() == ""
    (run.path / "metrics.jsonl").write_text("")
    with pytest.raises(RuntimeError, match="edited or replaced after the checkpoint"):
        truncate_jsonl(run.path, {"metrics.jsonl": 10_000})


def test_resume_command_pins_the_run_dir_and_adds_resume():
    assert resume_command("jobs.rl", "runs/x", ["--recipe", "grpo_tiny", "--set", "loop.num_steps=3"]) == \
        "python -m jobs.rl --recipe grpo_tiny --set loop.num_steps=3 --run-dir runs/x --resume"
    assert resume_command("jobs.rl", "runs/x", ["--run-dir", "r y", "--resume"]) == \
        "python -m jobs.rl --run-dir 'r y' --resume"


_STOPPABLE = textwrap.dedent("""
    import sys, time
    from rl_platform.shutdown import GracefulStop
    with GracefulStop() as stop:
        print("ready", flush=True)
        for step in range(600):
            time.sleep(0.05)          # one "step"
            if stop.requested:
                print(f"stopped after step {step} ({stop.reason})", flush=True)
                sys.exit(0)
    print("ran to the end", flush=True)
""")


def _start_stoppable():
    proc = subprocess.Popen([sys.executable, "-c", _STOPPABLE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_finishes_the_step_and_exits_zero(signum):
    proc = _start_stoppable()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"({'received ' + signum.name})" in out and "ran to the end" not in out
    assert "finishing the current step" in err


def test_second_signal_exits_at_once():
    script = _STOPPABLE.replace('print(f"stopped after', 'time.sleep(60)  # a checkpoint that takes long\n'
                                '            print(f"stopped after')
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    import time

    time.sleep(1.0)  # now inside the 60 s "step"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "again: exiting now" in err and "stopped after" not in out
