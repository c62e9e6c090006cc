"""Serves any registered reward over HTTP, for the `remote` reward (rewards/remote.py).

    python -m rewards.serve --reward arithmetic_verifier [--port 8000] [--host 127.0.0.1]
    REWARD_SERVER_TOKEN=... python -m rewards.serve --reward reward_model --set path=models/rm --host 0.0.0.0
    python -m rewards.serve --reward python_code_verifier --set tests_file=tasks/code.jsonl

    POST /score   {"samples": [{"prompt": str, "completion": str, "metadata": {...}}, ...]}
                  Authorization: Bearer <token>   (when the server has a token)
                  -> 200 {"reward_name", "reward_version", "results": [RewardResult as dict, ...]}
                  -> 400 body is not JSON, or more than --max-batch-size samples
                  -> 401 missing or wrong bearer token
                  -> 413 body larger than --max-body-bytes (checked before any parsing)
                  -> 422 body is JSON but not the schema above (message names the field)
                  -> 429 --max-concurrency requests are already being scored (Retry-After: 1)
    GET /health   -> {"status": "ok", "reward_name", "reward_version", "timeout_s"}

Security model (docs/fault_tolerance.md, 'Reward server'): loopback by default; bound to anything else it
refuses to start without a token (env REWARD_SERVER_TOKEN or --token-file), compared in constant time.
The body size is checked on the raw byte stream, before JSON parsing, so an oversized or endless body costs
at most --max-body-bytes of memory. A reward that executes model output (python_code_verifier) is served
only with its tests read from a server-side file (`tests_file`): a client names the task, never the code
that runs. `timeout_s` in /health lets the client wait longer than this server's guard, so a slow batch is
answered (as failed samples) rather than abandoned and re-sent.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rewards.base import RewardConfig, RewardInput, Scorer

logger = logging.getLogger(__name__)

TOKEN_ENV = "REWARD_SERVER_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_BATCH_SIZE = 4096
DEFAULT_MAX_BODY_BYTES = 8 << 20
DEFAULT_MAX_CONCURRENCY = 4


# Module level (not inside create_app): FastAPI resolves the endpoint's string annotations against the
# module's globals, and would otherwise take the body for a query parameter.
class SampleIn(BaseModel):
    """One sample of a /score request (RewardInput on the wire)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    completion: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScoreRequest(BaseModel):
    """The /score request body."""

    model_config = ConfigDict(extra="forbid")
    samples: list[SampleIn]


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


async def _reply(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes) -> Any:
    sent = [False]

    async def receive() -> dict[str, Any]:
        if sent[0]:  # like a live connection: nothing more until the client goes away
            await asyncio.Event().wait()
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class Gate:
    """ASGI middleware in front of the app: token, byte limit and concurrency, before anything is parsed."""

    def __init__(self, app: Any, token: str | None, max_body_bytes: int, max_concurrency: int) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self.max_concurrency = max_concurrency

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.token is not None and not self._authorised(scope):
            return await _reply(send, 401, {"error": "missing or wrong bearer token; send 'Authorization: Bearer "
                                            f"<token>' (the client reads it from ${TOKEN_ENV})"},
                                [(b"www-authenticate", b"Bearer")])
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await self._too_large(send, length.decode(errors="replace"))
        if scope.get("path") != "/score":
            return await self.app(scope, receive, send)
        if not self.slots.acquire(blocking=False):
            return await _reply(send, 429, {"error": f"server busy: {self.max_concurrency} requests are being "
                                            "scored; retry later (the remote client backs off and retries 429)"},
                                [(b"retry-after", b"1")])
        try:
            body = await self._read_body(receive)
            if body is None:
                return await self._too_large(send, f"more than {self.max_body_bytes} (streamed)")
            await self.app(scope, _replay(body), send)
        finally:
            self.slots.release()

    def _authorised(self, scope: dict[str, Any]) -> bool:
        given = dict(scope.get("headers", [])).get(b"authorization", b"").decode(errors="replace")
        scheme, _, credential = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self.token.encode())

    async def _read_body(self, receive: Any) -> bytes | None:
        """The whole body, read chunk by chunk and given up (None) as soon as it passes the limit: a body
        without Content-Length (chunked) is bounded too."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Any, size: str) -> None:
        await _reply(send, 413, {"error": f"request body of {size} bytes exceeds this server's limit of "
                                 f"{self.max_body_bytes} bytes; send smaller batches (RemoteRewardConfig.batch_size) "
                                 "or restart the server with a larger --max-body-bytes"})


def create_app(scorer: Scorer, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, token: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_concurrency: int = DEFAULT_MAX_CONCURRENCY):
    """The ASGI app serving `scorer` (separate from `main` so tests can mount it in-process)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(title=f"reward server: {scorer.name}")
    timeout_s = getattr(scorer, "timeout_s", None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return JSONResponse(status_code=400, content={
                "error": 'request body is not valid JSON; send {"samples": [{"prompt": ..., "completion": ...}]}'})
        problems = [f"{_field_path(tuple(err['loc']))}: {err['msg']}" for err in errors]
        return JSONResponse(status_code=422, content={
            "error": "invalid request: " + "; ".join(problems[:10]) + ("; ..." if len(problems) > 10 else ""),
            "expected": {"samples": [{"prompt": "str", "completion": "str", "metadata": "object (optional)"}]}})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "reward_name": scorer.name, "reward_version": scorer.version, "timeout_s": timeout_s}

    @app.post("/score", response_model=None)
    def score(request: ScoreRequest) -> dict[str, Any] | JSONResponse:
        if len(request.samples) > max_batch_size:
            return JSONResponse(status_code=400, content={
                "error": f"batch of {len(request.samples)} samples exceeds this server's max batch size "
                         f"{max_batch_size}; split it (RemoteRewardConfig.batch_size) or restart with "
                         "--max-batch-size"})
        samples = [RewardInput(prompt=s.prompt, completion=s.completion, metadata=s.metadata)
                   for s in request.samples]
        results = scorer.score(samples)
        return {"reward_name": scorer.name, "reward_version": scorer.version,
                "results": [r.to_dict() for r in results]}

    return Gate(app, token, max_body_bytes, max_concurrency)


class ServeError(Exception):
    """A reason the server refuses to start (printed as one line, exit 2)."""


def build_reward(name: str, overrides: list[str]) -> RewardConfig:
    """The registered default of `name` with `field=value` overrides (same syntax as `--set` in jobs)."""
    from rl_platform.config import ConfigError, apply_overrides

    registry = RewardConfig.registry()
    if name not in registry:
        raise ConfigError(f"--reward {name!r} is not a registered reward; valid: {sorted(registry)}.")
    return apply_overrides(registry[name](), overrides)


def resolve_token(host: str, token_file: str | None) -> str | None:
    """The bearer token (file, then $REWARD_SERVER_TOKEN); ServeError if a non-loopback bind has none."""
    token = Path(token_file).read_text().strip() if token_file else os.environ.get(TOKEN_ENV, "").strip()
    if token_file and not token:
        raise ServeError(f"--token-file {token_file} is empty; put the token (one line) in it")
    if not token and host not in LOOPBACK:
        raise ServeError(f"--host {host} is reachable from other machines, and the server has no token: set "
                         f"{TOKEN_ENV} or --token-file (and the same {TOKEN_ENV} for the client), or bind 127.0.0.1")
    return token or None


def check_servable(config: RewardConfig) -> None:
    """A reward that executes model output is served only with server-side tests."""
    if getattr(type(config), "executes_untrusted_code", False) and not getattr(config, "tests_file", ""):
        raise ServeError(f"{type(config).__name__} executes the tests it is given: served over HTTP, its tests must "
                         "come from a server-side file, not from clients; add --set tests_file=<tasks.jsonl>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rewards.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--reward", required=True, help="registered reward name")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of the reward config (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token-file", default=None, help=f"file holding the bearer token (else ${TOKEN_ENV})")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max-concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY,
                        help="requests scored at once; more get 429")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="[reward-server] %(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    from rl_platform.config import ConfigError

    try:
        token = resolve_token(args.host, args.token_file)
        config = build_reward(args.reward, args.set)
        check_servable(config)
        scorer = config.build()
    except (ServeError, ConfigError, OSError) as exc:
        print(f"error: rewards.serve: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    logger.info("serving %s (version %s) on http://%s:%d%s", scorer.name, scorer.version, args.host, args.port,
                " with a bearer token" if token else "")
    uvicorn.run(create_app(scorer, args.max_batch_size, token, args.max_body_bytes, args.max_concurrency),
                host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
