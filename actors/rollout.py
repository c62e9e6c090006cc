"""Rollout worker: a real vLLM engine (in-process, routed-expert capture on) behind the Generator protocol.

Runs inside its own Ray actor process (actors/remote.py); `rl_platform.vllm_cpu.prepare_vllm_process()` is
called before vLLM is imported there. Weight updates are in place and versioned: the engine only changes
weights between `generate` calls (the controller is synchronous), so every completion of one call carries
one policy version.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rl_platform.config import check
from rl_platform.run_dir import setup_logging
from rl_platform.types import Completion, PolicyWeights, Prompt

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class RolloutEngineConfig:
    """The rollout engines."""

    num_workers: int = 1
    """Rollout actors; prompts are split evenly between them."""
    dtype: str = "float32"
    """Engine dtype; bfloat16 is where train-infer mismatch (and routing replay's benefit) shows."""
    max_model_len: int = 512
    kv_cache_gib: float = 1.0
    enforce_eager: bool = True
    num_threads: int = 2
    """torch threads inside the engine process."""
    max_num_seqs: int = 512
    """Sequences the engine decodes at once. vLLM's CPU default is 256; a tiny model's decode step costs about
    the same at 512, so the demo's 32 x 16 samples finish in one wave instead of two."""

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, "RolloutEngineConfig.num_workers", self.num_workers, "must be >= 1", "use 1")
        check(self.dtype in ("float32", "bfloat16"), "RolloutEngineConfig.dtype", self.dtype,
              "must be float32 or bfloat16", "pick one")
        check(self.max_num_seqs >= 1, "RolloutEngineConfig.max_num_seqs", self.max_num_seqs, "must be >= 1",
              "use 256-1024")


class RolloutWorker:
    """Implements rl_platform.protocols.Generator on one vLLM engine."""

    def __init__(self, config: RolloutEngineConfig, model_path: str, seed: int, worker_index: int = 0) -> None:
        setup_logging(f"rollout {worker_index}")
        # An in-process vLLM-CPU engine sizes its thread pool from OMP_NUM_THREADS (Ray sets 1 for fractional
        # actors) and then disables torch.set_num_threads, so the count has to be in the environment first.
        os.environ["OMP_NUM_THREADS"] = str(config.num_threads)
        from rl_platform.vllm_cpu import build_llm, prepare_vllm_process

        prepare_vllm_process()
        self.config = config
        self.seed = seed + 1000 * worker_index
        start = time.perf_counter()
        self.llm = build_llm(model_path, dtype=config.dtype, seed=self.seed, max_model_len=config.max_model_len,
                             enable_routed_experts=True, enforce_eager=config.enforce_eager,
                             kv_cache_gib=config.kv_cache_gib, max_num_seqs=config.max_num_seqs)
        self.tokenizer = self.llm.get_tokenizer()
        from rl_platform.model.adapter import layer_map_from_dir

        # vLLM captures a row per decoder layer; the learner's routes cover the MoE layers only
        self.layer_map = layer_map_from_dir(model_path)
        self.version = 0
        self.calls = 0
        logger.info("engine up in %.1f s (%s, %s)", time.perf_counter() - start, model_path, config.dtype)

    def generate(self, prompts: Sequence[Prompt], sampling) -> list[list[Completion]]:
        from vllm import SamplingParams, TokensPrompt

        self.calls += 1
        # One seed per prompt (from its stable id): with one seed for the whole call, every prompt drew the same
        # random numbers, so identical prompts got identical groups and different prompts correlated samples.
        params = [SamplingParams(n=sampling.num_samples_per_prompt, max_tokens=sampling.max_tokens,
                                 temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                 logprobs=0, seed=self.seed + sampling.seed + zlib.crc32(p.prompt_id.encode()),
                                 skip_special_tokens=True, ignore_eos=getattr(sampling, "ignore_eos", False))
                  for p in prompts]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p.token_ids) for p in prompts], params,
                                    use_tqdm=False)
        groups = []
        for prompt, out in zip(prompts, outputs, strict=True):
            group = []
            for i, c in enumerate(out.outputs):
                token_ids = list(c.token_ids)
                logprobs = [c.logprobs[j][tok].logprob for j, tok in enumerate(token_ids)]
                routes = (None if c.routed_experts is None
                          else self.layer_map.engine_to_moe(np.asarray(c.routed_experts)))
                finish = c.finish_reason if c.finish_reason in ("stop", "length") else "abort"
                group.append(Completion(prompt_id=prompt.prompt_id, sample_index=i, token_ids=token_ids,
                                        text=c.text, generator_logprobs=logprobs, routed_experts=routes,
                                        finish_reason=finish, policy_version=self.version))
            groups.append(group)
        return groups

    def load_weights(self, weights: PolicyWeights) -> float:
        from rl_platform.vllm_cpu import update_weights

        seconds = update_weights(self.llm, weights.tensors.items())
        self.version = weights.version
        return seconds

    def policy_version(self) -> int:
        return self.version
