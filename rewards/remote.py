"""`remote`: a reward scored by a `python -m rewards.serve` server over HTTP.

    score(samples) --split into batch_size chunks--> ThreadPool(max_concurrency)
        each chunk: POST {url}/score, up to 1 + max_retries attempts, sleeping backoff_s * 2**attempt
                    between them; retried: connection errors, timeouts, HTTP 429 and 5xx;
                    not retried: other 4xx (the request itself is wrong; retrying cannot help)
        a chunk that never succeeds -> its samples fail ("remote_unavailable: ..."), never 0

Results keep the provenance the server reports (its reward's name and version), so a run logs which
reward actually scored each sample, not just "remote". Samples the client had to fail carry the name
"remote" and the client config's version.

Threads rather than asyncio: `score()` is synchronous and may be called from inside a running event
loop (an async reward actor), where `asyncio.run` would fail.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rewards.base import REWARDS, Failure, RewardConfig, RewardInput, RewardResult, config_version
from rl_platform.config import check

logger = logging.getLogger(__name__)


@REWARDS.register("remote")
@dataclass(kw_only=True, slots=True)
class RemoteRewardConfig(RewardConfig):
    """Client of a reward server; `timeout_s` (inherited) bounds the whole batch, `request_timeout_s` one POST.

    Example:
        RemoteRewardConfig(url="http://10.0.0.7:8000", max_concurrency=8, batch_size=128)
    """

    timeout_s: float | None = 600.0
    url: str = "http://127.0.0.1:8000"
    """Base URL of a `rewards.serve` server (POST {url}/score, GET {url}/health)."""
    request_timeout_s: float = 90.0
    """httpx timeout of one request (connect, read, write, pool). It must exceed the server's own guard
    (`timeout_s` in its /health, 60 s by default), or a slow batch is abandoned while the server still scores
    it and then sent again; the client raises it to the server's guard + 10 s when it is shorter."""
    token_env: str = "REWARD_SERVER_TOKEN"
    """Environment variable holding the server's bearer token (the token itself never goes in a config,
    which is written to the run directory); unset or empty: no Authorization header."""
    max_retries: int = 3
    """Retries after the first attempt, for connection errors, timeouts, 429 and 5xx."""
    backoff_s: float = 0.5
    """Sleep before retry k (0-based) is backoff_s * 2**k."""
    max_concurrency: int = 4
    """Requests in flight at once (threads and pooled connections)."""
    batch_size: int = 64
    """Samples per request."""

    def __post_init__(self) -> None:
        RewardConfig.__post_init__(self)
        check(self.url.startswith(("http://", "https://")), "RemoteRewardConfig.url", self.url,
              "is not an http(s) URL", "write it like http://127.0.0.1:8000")
        check(self.request_timeout_s > 0, "RemoteRewardConfig.request_timeout_s", self.request_timeout_s,
              "must be > 0", "give seconds")
        check(self.max_retries >= 0, "RemoteRewardConfig.max_retries", self.max_retries, "must be >= 0",
              "give 0 for no retries")
        check(self.backoff_s >= 0, "RemoteRewardConfig.backoff_s", self.backoff_s, "must be >= 0", "give seconds")
        check(self.max_concurrency >= 1, "RemoteRewardConfig.max_concurrency", self.max_concurrency, "must be >= 1",
              "give e.g. 4")
        check(self.batch_size >= 1, "RemoteRewardConfig.batch_size", self.batch_size, "must be >= 1",
              "give e.g. 64")

    def make_scorer(self) -> RemoteScorer:
        return RemoteScorer(self)


class _Rejected(Exception):
    """A 4xx answer: the request is wrong, so it is not retried."""


class RemoteScorer:
    name = "remote"
    pass_threshold = None

    def __init__(self, config: RemoteRewardConfig) -> None:
        import httpx

        self.config = config
        self.version = config_version(config)
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=config.url.rstrip("/"), timeout=config.request_timeout_s,
            limits=httpx.Limits(max_connections=config.max_concurrency,
                                max_keepalive_connections=config.max_concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="remote-reward")
        self._lock = threading.Lock()
        self.num_requests = 0
        """Total POST attempts (for tests and throughput accounting)."""
        token = os.environ.get(config.token_env, "").strip()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout_s: float | None = None
        """The per-request timeout in force, settled on the first contact with the server (see _timeout)."""

    def health(self) -> dict[str, Any]:
        """The server's `{"status", "reward_name", "reward_version", "timeout_s"}`; raises httpx errors."""
        response = self._client.get("/health", headers=self._headers)
        response.raise_for_status()
        return response.json()

    def _timeout(self) -> float:
        """request_timeout_s, raised above the server's guard when the server says it is longer (asked once;
        while the server is unreachable the configured value is used and it is asked again next time)."""
        if self._timeout_s is not None:
            return self._timeout_s
        try:
            server_guard = self.health().get("timeout_s")
        except (self._httpx.HTTPError, ValueError):
            return self.config.request_timeout_s
        timeout = self.config.request_timeout_s
        if isinstance(server_guard, (int, float)) and server_guard + 10 > timeout:
            logger.warning("remote reward: request_timeout_s=%s is not longer than the server's guard (%s s); "
                           "waiting %s s per request instead, so slow batches are answered, not re-sent",
                           timeout, server_guard, server_guard + 10)
            timeout = server_guard + 10
        self._timeout_s = timeout
        return timeout

    def _post(self, chunk: Sequence[RewardInput]) -> list[RewardResult | Failure]:
        body = {"samples": [{"prompt": s.prompt, "completion": s.completion, "metadata": s.metadata} for s in chunk]}
        attempts = self.config.max_retries + 1
        last_error = ""
        for attempt in range(attempts):
            if attempt:
                wait = self.config.backoff_s * 2 ** (attempt - 1)
                logger.warning("remote reward %s: attempt %d/%d failed (%s); retrying in %.1f s", self.config.url,
                               attempt, attempts, last_error[:200], wait)
                time.sleep(wait)
            with self._lock:
                self.num_requests += 1
            try:
                response = self._client.post("/score", json=body, headers=self._headers, timeout=self._timeout())
            except self._httpx.HTTPError as exc:  # connect/read/write/pool errors and timeouts
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 200:
                results = [RewardResult.from_dict(item) for item in response.json()["results"]]
                if len(results) != len(chunk):
                    return [Failure(f"remote_contract: server returned {len(results)} results for "
                                    f"{len(chunk)} samples")] * len(chunk)
                return list(results)
            last_error = f"HTTP {response.status_code}: {response.text[:300]}"
            if 400 <= response.status_code < 500 and response.status_code != 429:
                return [Failure(f"remote_rejected: {last_error}")] * len(chunk)
        return [Failure(f"remote_unavailable: {last_error} after {attempts} attempts to {self.config.url}")] \
            * len(chunk)

    def score_batch(self, samples: Sequence[RewardInput]) -> list[RewardResult | Failure]:
        size = self.config.batch_size
        chunks = [samples[i:i + size] for i in range(0, len(samples), size)]
        return [result for chunk_results in self._pool.map(self._post, chunks) for result in chunk_results]

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()
