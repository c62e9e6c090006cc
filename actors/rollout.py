"""Rollout worker: a real vLLM engine (in-process, routed-expert capture on) that generates continuously.

Runs inside its own Ray actor process (actors/remote.py); `rl_platform.vllm_cpu.prepare_vllm_process()` is
called before vLLM is imported there. One engine thread owns the engine and loops

    run queued commands (add requests, abort, load weights)  ->  one engine step  ->  hand out finished

so requests enter at any step, finished samples stream out as they finish (`poll`), and a weight update
lands between two engine steps while requests are in flight (rl_platform/vllm_cpu/streaming.py). The actor
is threaded (several Ray calls at once): a long `poll` never delays `submit` or `load_weights`.
`generate` (evaluation) is a blocking batch built on the same stream.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from actors.cpu_share import CpuShare
from actors.fault_injection import FaultHook
from rl_platform.config import check
from rl_platform.run_dir import setup_logging
from rl_platform.types import Completion, GeneratorPoll, PolicyWeights, Prompt, SampleKey, SampleRequest

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class RolloutEngineConfig:
    """The rollout engines."""

    num_workers: int = 1
    """Rollout actors; the scheduler sends each sample to the least-loaded one."""
    dtype: str = "float32"
    """Engine dtype; bfloat16 is where train-infer mismatch (and routing replay's benefit) shows."""
    max_model_len: int = 512
    kv_cache_gib: float = 1.0
    enforce_eager: bool = True
    num_threads: int = 2
    """torch threads inside the engine process (ActorResources may lower it when roles share the cores)."""
    max_num_seqs: int = 512
    """Sequences the engine decodes at once. vLLM's CPU default is 256; a tiny model's decode step costs about
    the same at 512, so the demo's 32 x 16 samples finish in one wave instead of two."""

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, "RolloutEngineConfig.num_workers", self.num_workers, "must be >= 1", "use 1")
        check(self.dtype in ("float32", "bfloat16"), "RolloutEngineConfig.dtype", self.dtype,
              "must be float32 or bfloat16", "pick one")
        check(self.max_num_seqs >= 1, "RolloutEngineConfig.max_num_seqs", self.max_num_seqs, "must be >= 1",
              "use 256-1024")


def sampling_params(sampling: Any, seed: int) -> Any:
    """vLLM SamplingParams of one sample (n=1; the group is G requests, each with its own seed)."""
    from vllm import SamplingParams

    return SamplingParams(n=1, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                          top_p=sampling.top_p, top_k=sampling.top_k, logprobs=0, seed=seed,
                          skip_special_tokens=True, ignore_eos=getattr(sampling, "ignore_eos", False))


class RolloutWorker:
    """Implements the engine side of rl_platform.protocols.Generator on one vLLM engine."""

    def __init__(self, config: RolloutEngineConfig, model_path: str, seed: int, worker_index: int = 0,
                 cpu: CpuShare | None = None) -> None:
        setup_logging(f"rollout {worker_index}")
        # An in-process vLLM-CPU engine sizes its thread pool from OMP_NUM_THREADS (Ray sets 1 for fractional
        # actors) and then disables torch.set_num_threads, so the count has to be in the environment first.
        cores = (cpu or CpuShare(threads=config.num_threads)).apply()
        from rl_platform.vllm_cpu import build_llm, prepare_vllm_process
        from rl_platform.vllm_cpu.streaming import StreamingEngine

        prepare_vllm_process()
        self.config = config
        start = time.perf_counter()
        llm = build_llm(model_path, dtype=config.dtype, seed=seed + 1000 * worker_index,
                        max_model_len=config.max_model_len, enable_routed_experts=True,
                        enforce_eager=config.enforce_eager, kv_cache_gib=config.kv_cache_gib,
                        max_num_seqs=config.max_num_seqs)
        self.engine = StreamingEngine(llm, version=0)
        from rl_platform.model.adapter import layer_map_from_dir

        # vLLM captures a row per decoder layer; the learner's routes cover the MoE layers only
        self.layer_map = layer_map_from_dir(model_path)
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._keys: dict[str, SampleKey] = {}
        self._collectors: dict[str, dict[str, Completion]] = {}
        """generate() calls waiting for their own request ids: call tag -> request id -> completion."""
        self._finished: list[Completion] = []
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._calls = 0
        self._faults = FaultHook("rollout", worker_index)
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()
        logger.info("engine up in %.1f s (%s, %s, cores %s)", time.perf_counter() - start, model_path, config.dtype,
                    cores)

    # ------------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        try:
            while True:
                self._run_commands(block=self.engine.num_unfinished == 0)
                for seq in self.engine.step():
                    self._deliver(seq)
        except BaseException as exc:  # surfaced to every caller; the actor is dead for practical purposes
            logger.exception("engine thread failed")
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _run_commands(self, block: bool) -> None:
        try:
            fn, future = self._commands.get(timeout=1.0) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                future.set_result(fn())
            except Exception as exc:  # a bad command fails its caller, not the engine
                future.set_exception(exc)
            try:
                fn, future = self._commands.get_nowait()
            except queue.Empty:
                return

    def _deliver(self, seq: Any) -> None:
        key = self._keys.pop(seq.request_id)
        finish = seq.finish_reason if seq.finish_reason in ("stop", "length") else "abort"
        completion = Completion(prompt_id=key.prompt_id, sample_index=key.sample_index, epoch=key.epoch,
                                token_ids=seq.token_ids, text=seq.text, generator_logprobs=seq.logprobs,
                                routed_experts=(None if seq.routed_experts is None
                                                else self.layer_map.engine_to_moe(seq.routed_experts)),
                                finish_reason=finish,
                                policy_versions=seq.versions)
        tag = seq.request_id.split(":", 1)[0]
        with self._cond:
            if tag in self._collectors:
                self._collectors[tag][seq.request_id] = completion
            else:
                self._finished.append(completion)
            self._cond.notify_all()
        if tag == "train":
            self._faults.tick()  # test-only (unset in real runs): a planned kill or hang of this engine

    def _on_engine_thread(self, fn: Callable[[], Any]) -> Any:
        """Runs `fn` on the engine thread between two engine steps and returns its result."""
        self._raise_if_dead()
        future: Future = Future()
        self._commands.put((fn, future))
        return future.result()

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"rollout engine thread died: {type(self._error).__name__}: {self._error}")

    # ------------------------------------------------------------------ the Ray methods
    def submit(self, requests: Sequence[SampleRequest], sampling: Any) -> int:
        """Queues samples (request id = str(key)); returns the number of unfinished requests after it."""

        def add() -> int:
            for r in requests:
                rid = f"train:{r.key}"
                self.engine.add(rid, r.prompt.token_ids, sampling_params(sampling, r.seed))
                self._keys[rid] = r.key
            return self.engine.num_unfinished

        return self._on_engine_thread(add)

    def abort(self, keys: Sequence[SampleKey]) -> int:
        """Drops in-flight samples (they will not come back); returns how many were still in flight."""

        def drop() -> int:
            dropped = self.engine.abort([f"train:{k}" for k in keys])
            for rid in dropped:
                self._keys.pop(rid, None)
            return len(dropped)

        return self._on_engine_thread(drop)

    def process_id(self) -> int:
        """The actor's process (supervision tells a restarted actor by a new one)."""
        return os.getpid()

    def ping(self) -> int:
        """Answers from the engine thread (a stuck engine misses the caller's deadline); unfinished requests."""
        return self._on_engine_thread(lambda: self.engine.num_unfinished)

    def poll(self, max_wait_s: float) -> GeneratorPoll:
        """Samples finished since the last poll; waits up to max_wait_s for at least one."""
        with self._cond:
            self._cond.wait_for(lambda: self._finished or self._error is not None, timeout=max_wait_s)
            self._raise_if_dead()
            out, self._finished = self._finished, []
        return GeneratorPoll(completions=out, busy_seconds=[self.engine.busy_seconds],
                             clock_seconds=[time.monotonic()], versions=[self.engine.version])

    def load_weights(self, weights: PolicyWeights) -> float:
        """Serves `weights.version` from the next engine step on; in-flight requests continue under it."""
        return self._on_engine_thread(lambda: self.engine.update_weights(weights.named_tensors(),
                                                                          weights.version))

    def generate(self, prompts: Sequence[Prompt], sampling: Any) -> list[list[Completion]]:
        """Blocking batch (evaluation): [len(prompts)][num_samples_per_prompt], seeds from each sample's key."""
        if len({p.prompt_id for p in prompts}) != len(prompts):
            raise ValueError("RolloutWorker.generate: prompt ids repeat within one call; every sample is named by "
                             "(prompt id, sample index), so give each prompt its own id")
        self._calls += 1
        tag = f"call{self._calls}"
        keys = [SampleKey(prompt_id=p.prompt_id, sample_index=i)
                for p in prompts for i in range(sampling.num_samples_per_prompt)]
        by_id = {f"{tag}:{k}": k for k in keys}
        with self._cond:
            self._collectors[tag] = {}
        prompt_of = {p.prompt_id: p for p in prompts}

        def add() -> None:
            for rid, k in by_id.items():
                params = sampling_params(sampling, k.seed(sampling.seed))
                self.engine.add(rid, prompt_of[k.prompt_id].token_ids, params)
                self._keys[rid] = k

        self._on_engine_thread(add)
        with self._cond:
            self._cond.wait_for(lambda: len(self._collectors[tag]) == len(by_id) or self._error is not None)
            self._raise_if_dead()
            done = self._collectors.pop(tag)
        flat = [done[rid] for rid in by_id]
        G = sampling.num_samples_per_prompt
        return [flat[i * G:(i + 1) * G] for i in range(len(prompts))]

    def policy_version(self) -> int:
        return self.engine.version
