"""Request-level driving of the in-process vLLM engine: requests enter and leave at any engine step, and a
weight update lands between two steps while requests are in flight (docs/async_rl.md, "Streaming engine").

    engine = StreamingEngine(build_llm(path, ...))
    engine.add("train/3.1#0@0", prompt_token_ids, sampling_params)   # any time, between steps
    finished = engine.step()                                         # one engine step -> finished sequences
    engine.update_weights(named_tensors, version=4)                  # between steps, requests in flight

What an in-flight update does, using vLLM's own machinery (no patch): the new tensors are loaded in place
(`reload_weights`, with patches.py's CPU fixes), the engine's weight-version label is set, and the prefix
cache is reset with `reset_running_requests=True`, which preempts every running request. vLLM preempts by
recomputation: the request's prompt and the tokens it has generated so far are prefilled again under the
new weights, and decoding continues. Consequences, checked by tests/vllm_cpu/test_streaming.py:
- token j of a response was sampled from exactly pi_v(. | prompt, tokens < j), v its version, so its
  log-prob is the behaviour log-prob of that version (not of a mix of stale KV and new weights);
- vLLM's `CompletionOutput.weight_versions` spans give each token's version;
- the routed-experts rows of the positions forwarded before the update are kept and only the rows from the
  recomputation point on are new, so every segment keeps the routes that produced its tokens (R3 replays
  them as recorded).
The cost is one prefill of the in-flight sequences per update.

Everything here runs on the thread that owns the engine; the rollout actor (actors/rollout.py) serialises
calls onto that thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rl_platform.vllm_cpu.engine import update_weights

if TYPE_CHECKING:
    import vllm


@dataclass(frozen=True, kw_only=True, slots=True)
class FinishedSequence:
    """One finished request, engine-side (the rollout actor turns it into a Completion).

    Example:
        FinishedSequence(request_id="train/3.1#0@0", token_ids=[5, 2], text="7", logprobs=[-0.1, -0.3],
                         versions=[3, 4], routed_experts=np.zeros((9, 4, 4), np.uint8), finish_reason="stop")
    """

    request_id: str
    token_ids: list[int]
    """[R] generated tokens."""
    text: str
    logprobs: list[float]
    """[R] log-prob of each token under the weights that sampled it (temperature 1)."""
    versions: list[int]
    """[R] weight version that sampled each token."""
    routed_experts: np.ndarray | None
    """[P + R - 1, L, K] experts per forwarded position; None without capture."""
    finish_reason: str
    """vLLM's reason: "stop", "length" or "abort"."""


class StreamingEngine:
    """Drives `llm.llm_engine` (vLLM V1 LLMEngine) step by step.

    Example:
        engine = StreamingEngine(llm, version=0)
        engine.add("r0", [1, 17, 33], SamplingParams(max_tokens=16, logprobs=0, seed=5))
        while engine.num_unfinished:
            for seq in engine.step(): ...
    """

    def __init__(self, llm: vllm.LLM, version: int = 0) -> None:
        self.llm = llm
        self.engine = llm.llm_engine
        self.version = version
        self.engine.set_weight_version(str(version))
        self.busy_seconds = 0.0
        """Wall seconds spent inside engine steps that had work (for the busy fraction)."""
        self.generated_tokens = 0
        self._unfinished: set[str] = set()

    @property
    def num_unfinished(self) -> int:
        return len(self._unfinished)

    def add(self, request_id: str, prompt_token_ids: list[int], params: Any) -> None:
        """Queues a request; `params` is a vllm.SamplingParams with logprobs=0 (its output kind is forced to
        FINAL_ONLY: only finished requests come back)."""
        from vllm import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if request_id in self._unfinished:
            raise ValueError(f"StreamingEngine.add: request {request_id!r} is already in flight; ids must be "
                             "unique among unfinished requests (abort it first to re-issue it)")
        if params.logprobs != 0:
            raise ValueError(f"StreamingEngine.add: request {request_id!r} has logprobs={params.logprobs}; use "
                             "logprobs=0 (the sampled token's log-prob is the behaviour log-prob)")
        params.output_kind = RequestOutputKind.FINAL_ONLY
        self.engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(prompt_token_ids)), params)
        self._unfinished.add(request_id)

    def abort(self, request_ids: Iterable[str]) -> list[str]:
        """Drops unfinished requests (unknown or finished ids are ignored); returns the ids it dropped."""
        ids = [r for r in request_ids if r in self._unfinished]
        if ids:
            self.engine.abort_request(ids)
            self._unfinished.difference_update(ids)
        return ids

    def step(self) -> list[FinishedSequence]:
        """One engine step (a no-op without unfinished requests); returns the requests it finished."""
        if not self._unfinished:
            return []
        start = time.perf_counter()
        outputs = self.engine.step()
        self.busy_seconds += time.perf_counter() - start
        finished = []
        for out in outputs:
            if not out.finished or out.request_id not in self._unfinished:
                continue
            self._unfinished.discard(out.request_id)
            seq = _finished_sequence(out, self.version)
            self.generated_tokens += len(seq.token_ids)
            finished.append(seq)
        return finished

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> float:
        """Loads new weights between two steps; unfinished requests continue under them (module doc).
        Returns the seconds the update took."""
        seconds = update_weights(self.llm, named_tensors, version=version)
        self.version = version
        return seconds


def _finished_sequence(out: Any, fallback_version: int) -> FinishedSequence:
    c = out.outputs[0]
    token_ids = list(c.token_ids)
    logprobs = [c.logprobs[j][tok].logprob for j, tok in enumerate(token_ids)]
    return FinishedSequence(request_id=out.request_id, token_ids=token_ids, text=c.text, logprobs=logprobs,
                            versions=token_versions(c.weight_versions, len(token_ids), fallback_version),
                            routed_experts=None if c.routed_experts is None else np.asarray(c.routed_experts),
                            finish_reason=str(c.finish_reason))


def token_versions(spans: list[Any] | None, num_tokens: int, fallback_version: int) -> list[int]:
    """Expands vLLM's WeightVersionSpan list (version label, [start, end) of output tokens) to one int per
    token. No spans (no label was reported) means every token came from `fallback_version`."""
    if not spans:
        return [fallback_version] * num_tokens
    versions: list[int] = []
    for span in spans:
        versions.extend([int(span.version)] * (span.end - span.start))
    if len(versions) != num_tokens:
        raise RuntimeError(f"vLLM weight-version spans cover {len(versions)} tokens of a {num_tokens}-token "
                           f"response ({spans}); vLLM's span bookkeeping changed (run tests/vllm_cpu)")
    return versions
