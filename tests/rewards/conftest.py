"""Shared fixtures for reward tests: an in-thread uvicorn server and a tiny random reward model."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rewards.base import RewardInput

GOOD = " 7+6=13 c1; 4+8+1=13 c1; 3+0+1=4; so 433\n#### 433"
PROMPT = "Q: 347+86=?\nA:"


def sample(completion: str = GOOD, prompt: str = PROMPT, **metadata) -> RewardInput:
    return RewardInput(prompt=prompt, completion=completion, metadata=metadata)


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Runs `app` under a real uvicorn server on a free loopback port; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn test server did not start within 10 s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised ~50k-param sequence classifier + digit tokenizer, saved like a trained RM."""
    import torch

    from rewards.tokenizer import build_digit_tokenizer
    from rewards.train_rm import TrainRewardModelConfig, _tiny_model, preference_pairs

    torch.manual_seed(0)
    rows = preference_pairs(50, seed=0, max_digits=3)
    tokenizer = build_digit_tokenizer((r["prompt"] + r["chosen"] for r in rows), vocab_size=300)
    config = TrainRewardModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model = _tiny_model(config, tokenizer)
    path = tmp_path_factory.mktemp("tiny_rm")
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
