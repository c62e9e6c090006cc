"""The reward server against hostile or careless clients, and the guard's timed-out batches.

Bearer token (and no start without one off loopback), byte limit before parsing (with and without
Content-Length), 429 when every slot is busy, server-side tests for code (a client cannot choose what
runs), a client that waits longer than the server's guard (no re-sent batches), and a timed-out batch
whose thread really stops."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from rewards.code_verifier import PythonCodeVerifierConfig
from rewards.guard import GuardedScorer
from rewards.remote import RemoteRewardConfig
from rewards.sandbox import SandboxConfig
from rewards.serve import ServeError, check_servable, create_app, main, resolve_token
from rewards.verifiers import ArithmeticVerifierConfig

from .conftest import GOOD, sample, serve_in_thread

BODY = {"samples": [{"prompt": "Q: 347+86=?\nA:", "completion": GOOD}]}


@pytest.fixture(scope="module")
def locked_app():
    return create_app(ArithmeticVerifierConfig().build(), token="s3cret", max_body_bytes=2048, max_concurrency=1)


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "Basic s3cret"}, 401),
    ({"Authorization": "Bearer s3cret"}, 200),
])
def test_bearer_token_is_required(locked_app, headers, status):
    response = TestClient(locked_app).post("/score", json=BODY, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert "bearer token" in response.json()["error"]
    else:
        assert response.json()["results"][0]["value"] == 1.0


def test_no_token_off_loopback_refuses_to_start(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("REWARD_SERVER_TOKEN", raising=False)
    assert resolve_token("127.0.0.1", None) is None
    with pytest.raises(ServeError, match="reachable from other machines, and the server has no token"):
        resolve_token("0.0.0.0", None)
    assert main(["--reward", "arithmetic_verifier", "--host", "0.0.0.0"]) == 2
    assert "has no token" in capsys.readouterr().err
    (tmp_path / "token").write_text("abc\n")
    assert resolve_token("0.0.0.0", str(tmp_path / "token")) == "abc"


def test_oversized_body_is_refused_before_parsing(locked_app):
    auth = {"Authorization": "Bearer s3cret", "content-type": "application/json"}
    big = json.dumps({"samples": [{"prompt": "p", "completion": "x" * 5000}]}).encode()
    response = TestClient(locked_app).post("/score", content=big, headers=auth)
    assert response.status_code == 413 and "exceeds this server's limit of 2048 bytes" in response.json()["error"]

    def chunks():  # no Content-Length: the limit is counted on the stream
        for _ in range(10):
            yield b" " * 1000

    streamed = TestClient(locked_app).post("/score", content=chunks(), headers=auth)
    assert streamed.status_code == 413 and "(streamed)" in streamed.json()["error"]


def test_full_server_answers_429_and_the_client_retries():
    release = threading.Event()

    class Slow:
        name, version, pass_threshold, timeout_s = "slow", "v", None, 60.0

        def score(self, samples):
            release.wait(10)
            return ArithmeticVerifierConfig().build().score(samples)

    app = create_app(Slow(), max_concurrency=1)
    with serve_in_thread(app) as url:
        first = threading.Thread(target=lambda: httpx.post(f"{url}/score", json=BODY, timeout=30))
        first.start()
        time.sleep(0.5)
        busy = httpx.post(f"{url}/score", json=BODY, timeout=10)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        client = RemoteRewardConfig(url=url, max_retries=5, backoff_s=0.2).build()
        threading.Timer(0.5, release.set).start()
        results = client.score([sample()])
        first.join(10)
    assert results[0].value == 1.0 and client.raw.num_requests >= 2  # refused first, answered after the retry


def test_code_verifier_is_served_only_with_server_side_tests(tmp_path):
    with pytest.raises(ServeError, match="tests must come from a server-side file"):
        check_servable(PythonCodeVerifierConfig())
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"task_id": "add", "tests": ["assert add(2, 3) == 5"]}) + "\n")
    config = PythonCodeVerifierConfig(tests_file=str(tasks), sandbox=SandboxConfig(wall_time_s=5.0))
    check_servable(config)
    app = create_app(config.build())
    good = {"prompt": "p", "completion": "def add(a, b): return a + b", "metadata": {"task_id": "add"}}
    sneaky = {**good, "completion": "def add(a, b): return 0", "metadata": {"task_id": "add", "tests": ["assert 1"]}}
    unknown = {**good, "metadata": {"task_id": "nope"}}
    results = TestClient(app).post("/score", json={"samples": [good, sneaky, unknown]}).json()["results"]
    assert results[0]["value"] == 1.0
    assert results[1]["failed"] and results[1]["reason"].startswith("client_tests:")
    assert results[2]["failed"] and results[2]["reason"].startswith("unknown_task:")


def test_client_waits_longer_than_the_server_guard_so_a_slow_batch_is_not_resent():
    class Sleepy:
        pass_threshold = None
        name, version = "sleepy", "v"

        def score_batch(self, samples):
            time.sleep(2.0)
            return [1.0] * len(samples)

    server_scorer = GuardedScorer(Sleepy(), timeout_s=1.0)
    calls = []
    app = create_app(server_scorer)

    async def counting(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/score":
            calls.append(time.monotonic())
        await app(scope, receive, send)

    with serve_in_thread(counting) as url:
        client = RemoteRewardConfig(url=url, request_timeout_s=0.5, max_retries=3, backoff_s=0.01).build()
        results = client.score([sample()])
    assert len(calls) == 1  # before: a 0.5 s client timeout against a 1 s guard re-sent the batch 4 times
    assert results[0].failed and results[0].reason.startswith("timeout:")


def test_a_timed_out_python_batch_stops_running():
    progress = []

    def spins(samples):
        while True:  # pure Python: the guard's RewardTimeout lands between two bytecodes
            progress.append(1)
            time.sleep(0.001)

    class Raw:
        name, version, pass_threshold = "spin", "v", None
        score_batch = staticmethod(spins)

    scorer = GuardedScorer(Raw(), timeout_s=0.3)
    results = scorer.score([sample()])
    assert results[0].failed and results[0].reason.startswith("timeout:")
    assert not scorer.abandoned
    count = len(progress)
    time.sleep(0.3)
    assert len(progress) == count  # before: the thread kept looping after its batch had timed out


def test_batches_stuck_in_native_code_do_not_pile_up():
    class Stuck:
        name, version, pass_threshold = "stuck", "v", None

        def score_batch(self, samples):
            left, right = socket.socketpair()
            left.settimeout(3.0)  # blocks in C for 3 s; no exception can reach it before that
            try:
                left.recv(1)
            except TimeoutError:
                pass
            return [1.0] * len(samples)

    scorer = GuardedScorer(Stuck(), timeout_s=0.2)
    for _ in range(2):
        assert scorer.score([sample()])[0].reason.endswith("its thread is blocked in native code")
    started = time.perf_counter()
    refused = scorer.score([sample()])[0]
    assert refused.failed and refused.reason.startswith("unavailable: 2 timed-out batches")
    assert time.perf_counter() - started < 0.1
