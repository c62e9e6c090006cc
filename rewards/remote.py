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

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rewards.base import REWARDS, Failure, RewardConfig, RewardInput, RewardResult, config_version
from rl_platform.config import check


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
    request_timeout_s: float = 30.0
    """httpx timeout of one request (connect, read, write, pool)."""
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

    def health(self) -> dict[str, Any]:
        """The server's `{"status", "reward_name", "reward_version"}`; raises httpx errors as they come."""
        response = self._client.get("/health")
        response.raise_for_status()
        return response.json()

    def _post(self, chunk: Sequence[RewardInput]) -> list[RewardResult | Failure]:
        body = {"samples": [{"prompt": s.prompt, "completion": s.completion, "metadata": s.metadata} for s in chunk]}
        attempts = self.config.max_retries + 1
        last_error = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            with self._lock:
                self.num_requests += 1
            try:
                response = self._client.post("/score", json=body)
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
