"""Reward server (FastAPI) and the `remote` client: validation, a real uvicorn round trip, retries, failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from rewards.remote import RemoteRewardConfig
from rewards.serve import create_app
from rewards.verifiers import ArithmeticVerifierConfig

from .conftest import GOOD, sample, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def verifier_app():
    return create_app(ArithmeticVerifierConfig().build(), max_batch_size=8)


def test_health_reports_reward_name_and_version(verifier_app):
    body = TestClient(verifier_app).get("/health").json()
    assert body == {"status": "ok", "reward_name": "arithmetic_verifier",
                    "reward_version": ArithmeticVerifierConfig().build().version, "timeout_s": 60.0}


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"samples": [{"prompt": "p"}]}, 422, "samples.0.completion: Field required"),
    ({"samples": [{"prompt": "p", "completion": 3}]}, 422, "samples.0.completion"),
    ({"samples": [{"prompt": "p", "completion": "c", "extra": 1}]}, 422, "samples.0.extra"),
    ({"items": []}, 422, "samples: Field required"),
    ({"samples": [{"prompt": "p", "completion": "c"}] * 9}, 400, "exceeds this server's max batch size 8"),
])
def test_bad_requests_get_4xx_with_a_clear_message(verifier_app, body, status, message):
    response = TestClient(verifier_app).post("/score", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_non_json_body_is_400(verifier_app):
    response = TestClient(verifier_app).post("/score", content=b"{not json",
                                             headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


def test_round_trip_through_uvicorn_keeps_values_and_provenance(verifier_app):
    local = ArithmeticVerifierConfig().build()
    samples = [sample(GOOD), sample(GOOD.replace("433", "5")), sample(" #### 5", prompt="free text")]
    with serve_in_thread(verifier_app) as url:
        remote = RemoteRewardConfig(url=url, batch_size=2, max_concurrency=2).build()
        results = remote.score(samples)
    assert [r.value for r in results] == [1.0, 0.0, None]
    assert results[2].failed and results[2].reason.startswith("no_reference:")
    assert {(r.reward_name, r.reward_version) for r in results} == {(local.name, local.version)}


def _flaky_app(num_failures: int, calls: list[float]):
    """Answers 503 to the first `num_failures` POSTs, then scores with the verifier."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    inner = create_app(ArithmeticVerifierConfig().build())
    app = FastAPI()

    @app.middleware("http")
    async def fail_first(request: Request, call_next):
        if request.url.path == "/score":
            calls.append(time.monotonic())
            if len(calls) <= num_failures:
                return JSONResponse(status_code=503, content={"error": "warming up"})
        return await call_next(request)

    app.mount("/", inner)
    return app


def test_client_retries_with_exponential_backoff_until_the_server_answers():
    calls: list[float] = []
    with serve_in_thread(_flaky_app(2, calls)) as url:
        scorer = RemoteRewardConfig(url=url, max_retries=3, backoff_s=0.1).build()
        results = scorer.score([sample()])
    assert results[0].value == 1.0 and len(calls) == 3
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # backoff_s * 2**k


def test_client_fails_samples_after_retries_instead_of_scoring_zero():
    calls: list[float] = []
    with serve_in_thread(_flaky_app(100, calls)) as url:
        results = RemoteRewardConfig(url=url, max_retries=2, backoff_s=0.01).build().score([sample()] * 3)
    assert len(calls) == 3  # one request (3 samples < batch_size), 1 + 2 retries
    assert all(r.failed and r.value is None for r in results)
    assert results[0].reason.startswith("remote_unavailable: HTTP 503") and "after 3 attempts" in results[0].reason


def test_unreachable_server_fails_samples_with_the_network_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    scorer = RemoteRewardConfig(url=f"http://127.0.0.1:{port}", max_retries=1, backoff_s=0.01).build()
    results = scorer.score([sample(), sample()])
    assert all(r.failed and r.reason.startswith("remote_unavailable: ConnectError") for r in results)
    assert results[0].reward_name == "remote"


def test_client_does_not_retry_a_rejected_request():
    calls: list[float] = []
    small = create_app(ArithmeticVerifierConfig().build(), max_batch_size=2)
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.middleware("http")
    async def count(request: Request, call_next):
        if request.url.path == "/score":  # the client also asks /health once, for the server's guard timeout
            calls.append(time.monotonic())
        return await call_next(request)

    app.mount("/", small)
    with serve_in_thread(app) as url:
        results = RemoteRewardConfig(url=url, max_retries=3, batch_size=4).build().score([sample()] * 4)
    assert len(calls) == 1  # a 400 is the request's fault: retrying cannot help
    assert all(r.failed and r.reason.startswith("remote_rejected: HTTP 400") for r in results)
    assert "max batch size 2" in results[0].reason


def test_concurrency_limit_and_batching():
    in_flight, peak, lock = [0], [0], threading.Lock()
    from fastapi import FastAPI, Request

    inner = create_app(ArithmeticVerifierConfig().build())
    app = FastAPI()

    @app.middleware("http")
    async def count(request: Request, call_next):
        import asyncio

        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.2)  # long enough that both client threads overlap even on a loaded machine
        try:
            return await call_next(request)
        finally:
            with lock:
                in_flight[0] -= 1

    app.mount("/", inner)
    with serve_in_thread(app) as url:
        scorer = RemoteRewardConfig(url=url, batch_size=4, max_concurrency=2).build()
        results = scorer.score([sample()] * 20)
    assert [r.value for r in results] == [1.0] * 20
    assert scorer.raw.num_requests == 5  # 20 samples / batch_size 4
    assert peak[0] == 2


def test_serve_cli_subprocess_round_trip_on_a_free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "rewards.serve", "--reward", "length_penalty",
                               "--set", "cache_len=4", "--set", "max_len=10", "--port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{url}/health").json()
                break
            except httpx.HTTPError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "server did not come up in 30 s"
                time.sleep(0.1)
        assert health["reward_name"] == "length_penalty"
        results = RemoteRewardConfig(url=url).build().score([sample("x" * 8)])
        assert results[0].value == -0.5
    finally:
        server.terminate()
        server.wait(10)
