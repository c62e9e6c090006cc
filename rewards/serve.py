"""Serves any registered reward over HTTP, for the `remote` reward (rewards/remote.py).

    python -m rewards.serve --reward arithmetic_verifier [--port 8000] [--host 127.0.0.1]
    python -m rewards.serve --reward reward_model --set path=models/reward_model

    POST /score   {"samples": [{"prompt": str, "completion": str, "metadata": {...}}, ...]}
                  -> 200 {"reward_name", "reward_version", "results": [RewardResult as dict, ...]}
                  -> 400 body is not JSON, or more than --max-batch-size samples
                  -> 422 body is JSON but not the schema above (message names the field)
    GET /health   -> {"status": "ok", "reward_name", "reward_version"}

The server binds 127.0.0.1 unless told otherwise: it has no authentication, and a reward server that
executes model output (python_code_verifier) must not be reachable from elsewhere by accident.
Scoring runs in FastAPI's worker threads (the endpoint is sync), so requests are served concurrently.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rewards.base import RewardConfig, RewardInput, Scorer

logger = logging.getLogger(__name__)


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

DEFAULT_MAX_BATCH_SIZE = 4096


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


def create_app(scorer: Scorer, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE):  # -> fastapi.FastAPI
    """The FastAPI app serving `scorer` (separate from `main` so tests can mount it in-process)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(title=f"reward server: {scorer.name}")

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
    def health() -> dict[str, str]:
        return {"status": "ok", "reward_name": scorer.name, "reward_version": scorer.version}

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

    return app


def build_reward(name: str, overrides: list[str]) -> RewardConfig:
    """The registered default of `name` with `field=value` overrides (same syntax as `--set` in jobs)."""
    from rl_platform.config import ConfigError, apply_overrides

    registry = RewardConfig.registry()
    if name not in registry:
        raise ConfigError(f"--reward {name!r} is not a registered reward; valid: {sorted(registry)}.")
    return apply_overrides(registry[name](), overrides)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rewards.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--reward", required=True, help="registered reward name")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of the reward config (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="[reward-server] %(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    import uvicorn

    scorer = build_reward(args.reward, args.set).build()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("reward server bound to %s: it has no authentication; anyone who can reach it can "
                       "use it", args.host)
    logger.info("serving %s (version %s) on http://%s:%d", scorer.name, scorer.version, args.host, args.port)
    uvicorn.run(create_app(scorer, args.max_batch_size), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
