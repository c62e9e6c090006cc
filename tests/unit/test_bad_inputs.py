"""The bad-input table: every malformed input gets one clear error (where, what, the value, how to fix it),
never a traceback and never silent acceptance. Each row is (name, how to produce it, fragments the one
message must contain). docs/fault_tolerance.md shows the same table with the messages."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from rl_platform.checkpointing import CheckpointStore

ROOT = Path(__file__).resolve().parents[2]


# ---- how each kind of input is fed in ---------------------------------------------------------------------
def _cli(*argv: str) -> tuple[int, str]:
    """jobs.rl's main in-process: (exit code, stderr). Every row here must fail before any process starts."""
    from jobs.rl import main

    err = io.StringIO()
    with redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def _server(body: bytes | dict, headers: dict | None = None, **app_kwargs) -> tuple[int, str]:
    from fastapi.testclient import TestClient

    from rewards.serve import create_app
    from rewards.verifiers import ArithmeticVerifierConfig

    app = create_app(ArithmeticVerifierConfig().build(), **{"max_batch_size": 4, **app_kwargs})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = TestClient(app).post("/score", content=content,
                                    headers={"content-type": "application/json", **(headers or {})})
    return response.status_code, response.json()["error"]


def _reward_fn(fn) -> tuple[int, str]:
    """A user reward function through the guard: (0, the failed samples' reason) or (1, 'accepted')."""
    from rewards.base import RewardInput
    from rewards.python_function import CallableReward

    results = CallableReward.from_callable(fn).score([RewardInput(prompt="p", completion=c) for c in "abc"])
    failed = [r for r in results if r.failed]
    return (0, failed[0].reason) if failed and all(r.value is None for r in failed) else (1, "accepted")


def _config_error(build) -> tuple[int, str]:
    from rl_platform.config import ConfigError

    try:
        build()
    except ConfigError as exc:
        return 2, str(exc)
    return 0, "accepted"


# ---- fixtures: runs with broken checkpoints, broken base models ----------------------------------------
def _run_with_checkpoint(tmp: Path, damage: str) -> Path:
    run = tmp / f"run_{damage}"
    store = CheckpointStore(run / "checkpoints" / "rl")

    def write(staging, tag):
        (staging / tag).mkdir()
        (staging / tag / "mp_rank_00_model_states.pt").write_bytes(b"x" * 100)

    info = store.save(1, write, meta={"step": 1})
    if damage == "truncated":
        (info.path / "mp_rank_00_model_states.pt").write_bytes(b"x")
    elif damage == "no_manifest":
        (info.path / "manifest.json").unlink()
    return run


def _model_dir(tmp: Path, damage: str) -> Path:
    import torch
    from safetensors.torch import save_file

    from rl_platform.model.tokenizer import train_tokenizer

    path = tmp / f"model_{damage}"
    path.mkdir()
    vocab = 8 if damage == "foreign_tokenizer" else 512
    config = {"model_type": "ernie4_5_moe", "vocab_size": vocab}
    (path / "config.json").write_text("{not json" if damage == "config" else json.dumps(config))
    save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
    if damage == "weights":
        (path / "model.safetensors").write_bytes(b"\x00\x01garbage")
    if damage != "no_tokenizer":
        train_tokenizer(["1+2=3", "hello world"] * 20, vocab_size=300).save_pretrained(str(path))
    return path


BASE = ["--recipe", "grpo_smoke"]
ROWS = [
    # (name, produce(tmp_path) -> (code, message), expected code, fragments of the message)
    ("unknown recipe key", lambda t: _cli(*BASE, "--set", "loop.num_stepz=3"), 2,
     ["unknown key 'loop.num_stepz'", "num_steps"]),
    ("value of the wrong type", lambda t: _cli(*BASE, "--set", "loop.num_steps=abc"), 2,
     ["loop.num_steps='abc'", "not a valid int"]),
    ("value out of range", lambda t: _cli(*BASE, "--set", "loop.num_steps=0"), 2,
     ["num_steps=0", "must be >= 1"]),
    ("choice not in the list", lambda t: _cli(*BASE, "--set", "learner.routing_replay=R4"), 2,
     ["learner.routing_replay='R4'", "'R3'"]),
    ("unregistered variant", lambda t: _cli(*BASE, "--set", "reward=nope"), 2,
     ["reward='nope'", "arithmetic_verifier"]),
    ("not a boolean", lambda t: _cli(*BASE, "--set", "run.use_wandb=maybe"), 2, ["'maybe'", "true or false"]),
    ("section set as a value", lambda t: _cli(*BASE, "--set", "loop=3"), 2, ["loop", "section"]),
    ("keep no checkpoint", lambda t: _cli(*BASE, "--set", "checkpoint.keep_last=0"), 2,
     ["keep_last=0", "must be >= 1"]),
    ("negative auto_resume", lambda t: _cli(*BASE, "--set", "loop.auto_resume=-1"), 2,
     ["auto_resume=-1", "must be >= 0"]),
    ("unknown recipe", lambda t: _cli("--recipe", "grpo_huge"), 2, ["unknown recipe 'grpo_huge'", "grpo_tiny"]),
    ("remote reward URL not http", lambda t: _cli(*BASE, "--set", "reward=remote", "--set", "reward.url=ftp://x"), 2,
     ["ftp://x", "http://127.0.0.1:8000"]),
    ("--resume without --run-dir", lambda t: _cli(*BASE, "--resume"), 2, ["--resume needs --run-dir"]),
    ("--resume of a run without checkpoint", lambda t: _cli(*BASE, "--resume", "--run-dir", str(_mkdir(t / "empty"))),
     2,
     ["no checkpoint to resume from", "empty", "Run without --resume"]),
    ("--resume of a truncated checkpoint", lambda t: _cli(*BASE, "--resume", "--run-dir",
                                                          str(_run_with_checkpoint(t, "truncated"))), 2,
     ["only broken ones: step-00000001", "1 bytes, the manifest says 100"]),
    ("--resume of a half-written checkpoint", lambda t: _cli(*BASE, "--resume", "--run-dir",
                                                             str(_run_with_checkpoint(t, "no_manifest"))), 2,
     ["step-00000001 (no manifest.json", "did not finish"]),
    ("base model path missing", lambda t: _cli(*BASE, "--set", f"base_model.path={t / 'nowhere'}"), 2,
     ["base_model.path=", "nowhere", "has no config.json (no such directory)", "export_hf"]),
    ("base model config corrupt", lambda t: _cli(*BASE, "--set", f"base_model.path={_model_dir(t, 'config')}"), 2,
     ["config.json is unreadable", "re-export"]),
    ("base model weights corrupt", lambda t: _cli(*BASE, "--set", f"base_model.path={_model_dir(t, 'weights')}"), 2,
     ["model.safetensors is corrupt or truncated", "re-copy"]),
    ("base model without tokenizer", lambda t: _cli(*BASE, "--set",
                                                    f"base_model.path={_model_dir(t, 'no_tokenizer')}"), 2,
     ["tokenizer cannot be loaded", "export the model together with its tokenizer"]),
    ("tokenizer that does not match the model", lambda t: _cli(*BASE, "--set",
                                                               f"base_model.path={_model_dir(t, 'foreign_tokenizer')}"),
     2, ["vocab_size is 8", "does not belong to this model"]),
    ("Ray address nobody answers", lambda t: _cli(*BASE, "--address", "127.0.0.1:1"), 2,
     ["--address='127.0.0.1:1'", "nothing answers", "ray start --head"]),
    ("Ray address malformed", lambda t: _cli(*BASE, "--address", "my cluster"), 2,
     ["'my cluster' is not a Ray address", "127.0.0.1:6379"]),
    ("reward request not JSON", lambda t: _server(b"{nope"), 400, ["not valid JSON", '{"samples"']),
    ("reward request missing a field", lambda t: _server({"samples": [{"prompt": "p"}]}), 422,
     ["samples.0.completion: Field required"]),
    ("reward request field of the wrong type", lambda t: _server({"samples": [{"prompt": "p", "completion": 3}]}),
     422, ["samples.0.completion", "valid string"]),
    ("reward request unknown field", lambda t: _server({"samples": [], "tests": ["assert 1"]}), 422,
     ["tests: Extra inputs are not permitted"]),
    ("reward request batch too large", lambda t: _server({"samples": [{"prompt": "p", "completion": "c"}] * 5}), 400,
     ["batch of 5 samples exceeds", "max batch size 4", "batch_size"]),
    ("reward request body too large", lambda t: _server(b" " * 5000, max_body_bytes=1000), 413,
     ["5000 bytes exceeds this server's limit of 1000", "--max-body-bytes"]),
    ("reward request without token", lambda t: _server({"samples": []}, token="k"), 401,
     ["bearer token", "REWARD_SERVER_TOKEN"]),
    ("reward fn returns the wrong count", lambda t: _reward_fn(lambda prompts, completions, **kw: [1.0]), 0,
     ["contract: expected 3 values, got 1"]),
    ("reward fn returns strings", lambda t: _reward_fn(lambda prompts, completions, **kw: ["1"] * 3), 0,
     ["type: expected a float, got str", "'1'"]),
    ("reward fn returns None", lambda t: _reward_fn(lambda prompts, completions, **kw: [None] * 3), 0,
     ["missing: the reward returned None"]),
    ("reward fn returns NaN", lambda t: _reward_fn(lambda prompts, completions, **kw: [math.nan] * 3), 0,
     ["non_finite: value nan"]),
    ("reward fn returns a scalar", lambda t: _reward_fn(lambda prompts, completions, **kw: 1.0), 0,
     ["contract: expected 3 values, got float"]),
    ("reward fn path not importable", lambda t: _config_error(
        lambda: __import__("rewards.python_function", fromlist=["x"]).PythonFunctionConfig(
            path="no_such_pkg.mod:fn").build()), 2, ["no_such_pkg.mod:fn", "cannot import module", "PYTHONPATH"]),
    ("code test of an unsupported form", lambda t: _config_error(
        lambda: __import__("rewards.code_verifier", fromlist=["x"]).load_task_tests(
            str(_write(t / "tasks.jsonl", '{"task_id": "a", "tests": ["assert f(1) < 3"]}\n')))), 2,
     ["tasks.jsonl:1", "assert f(1) < 3", "assert <call> == <literal>"]),
]


def _mkdir(path: Path) -> Path:
    path.mkdir()
    (path / "metrics.jsonl").write_text("")  # a run that logged but never checkpointed
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_table_has_at_least_25_rows():
    assert len(ROWS) >= 25 and len({row[0] for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize(("name", "produce", "code", "fragments"), ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_gets_one_clear_error(tmp_path, name, produce, code, fragments):
    got_code, message = produce(tmp_path)
    assert got_code == code, (name, message)
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, f"{name}: {fragment!r} not in {message!r}"
    if code == 2 and message.startswith("error:"):
        assert message.count("\n") <= 1, message  # one line on the command line
