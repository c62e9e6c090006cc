"""The rollout engine as a scorer: teacher-forced log-probs and routes of given sequences from a vLLM prefill,
and the prefix-cache route check (docs/routing_replay.md, 'Forensics').

Shape legend: B rows, S positions, L MoE layers, K experts per token.

`prompt_logprobs` needs a vLLM Triton kernel without a PyTorch stand-in on CPU, so the process that scores
must be prepared with the Triton interpreter on (`prepare_vllm_process(triton_interpret=True)`, done here when
the process is not prepared yet). That kernel only gathers token ids, so the interpreter changes no arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rl_platform.batching import TrainingBatch


@dataclass
class EngineScores:
    logprobs_BS: Tensor
    """float32 log-prob of token t+1 at position t (0 where there is none), as the learner aligns them."""
    routes_BSLK: Tensor
    """int16 experts of the forward of token t (-1 past the sequence)."""


class EngineScorer:
    """One in-process vLLM engine on an exported model directory.

    Example:
        scorer = EngineScorer("runs/x/batches/weights_0007", dtype="float32")
        scores = scorer.score(batch)
    """

    def __init__(self, model_dir: str | Path, dtype: str, *, max_model_len: int = 512, block_size: int | None = None,
                 kv_cache_gib: float = 0.25) -> None:
        from rl_platform.vllm_cpu import build_llm, engine, prepare_vllm_process

        if engine._prepared_as is None:
            prepare_vllm_process(triton_interpret=True)
        extra = {} if block_size is None else {"block_size": block_size}
        self.dtype = dtype
        self.llm = build_llm(str(model_dir), dtype=dtype, seed=0, max_model_len=max_model_len,
                             enforce_eager=True, kv_cache_gib=kv_cache_gib, **extra)

    def load(self, model_dir: str | Path) -> None:
        """Swap in another exported directory's weights (same architecture), as a weight sync does."""
        from safetensors.torch import load_file

        from rl_platform.vllm_cpu import update_weights

        update_weights(self.llm, load_file(str(Path(model_dir) / "model.safetensors")).items())

    def score(self, batch: TrainingBatch) -> EngineScores:
        """Prefill every row (prompt + response) once and read back the log-prob of each next token and the
        experts of each position. The prefix cache is reset first, so nothing is served from it."""
        from vllm import SamplingParams, TokensPrompt

        self.llm.reset_prefix_cache()
        lengths = batch.attention_mask_BS.sum(dim=1).tolist()
        seqs = [batch.input_ids_BS[row, :n].tolist() for row, n in enumerate(lengths)]
        params = SamplingParams(n=1, max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False)
        b, s = batch.input_ids_BS.shape
        logprobs = torch.zeros(b, s)
        routes = None
        for row, (seq, out) in enumerate(zip(seqs, outputs, strict=True)):
            logprobs[row, : len(seq) - 1] = torch.tensor([out.prompt_logprobs[t][seq[t]].logprob
                                                          for t in range(1, len(seq))])
            rows = np.asarray(out.outputs[0].routed_experts)[: len(seq)].astype(np.int16)
            if routes is None:
                routes = torch.full((b, s, *rows.shape[1:]), -1, dtype=torch.int16)
            routes[row, : len(seq)] = torch.from_numpy(rows)
        return EngineScores(logprobs, routes)

    def prefix_cache_check(self, prompts: list[list[int]], num_samples: int = 4, max_tokens: int = 8) -> dict:
        """Do the routes the engine returns for prompt tokens served from its prefix cache equal a fresh
        prefill's? Samples every prompt twice (the second call is served from the cache), then prefills each
        prompt alone after a cache reset, and compares the prompt positions' expert sets."""
        from vllm import SamplingParams, TokensPrompt

        self.llm.reset_prefix_cache()
        params = SamplingParams(n=num_samples, max_tokens=max_tokens, temperature=1.0, seed=0, ignore_eos=True,
                                detokenize=False)
        requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        calls = [self.llm.generate(requests, params, use_tqdm=False) for _ in range(2)]
        fresh_params = SamplingParams(n=1, max_tokens=1, temperature=0.0, detokenize=False)
        block = self.llm.llm_engine.vllm_config.cache_config.block_size
        counts = {"cached": [0, 0], "computed": [0, 0]}
        served = 0
        for index, prompt in enumerate(prompts):
            self.llm.reset_prefix_cache()
            fresh = self.llm.generate([requests[index]], fresh_params, use_tqdm=False)[0]
            reference = np.sort(np.asarray(fresh.outputs[0].routed_experts)[: len(prompt)], axis=-1)
            for call_index, call in enumerate(calls):
                cached = cached_prompt_tokens(call[index], len(prompt), block, repeat=call_index == 1)
                served += cached * len(call[index].outputs)
                for completion in call[index].outputs:
                    same = (np.sort(np.asarray(completion.routed_experts)[: len(prompt)], axis=-1)
                            == reference).all(axis=-1)
                    for name, part in (("cached", same[:cached]), ("computed", same[cached:])):
                        counts[name][0] += int(part.sum())
                        counts[name][1] += part.size
        reported = all(getattr(call[i], "num_cached_tokens", None) is not None for call in calls
                       for i in range(len(prompts)))
        out = {"block_size": block, "prompts": len(prompts), "cached_prompt_positions": served,
               "cached_counts_from_engine": reported}
        for name, (equal, total) in counts.items():
            out[f"{name}_routes_compared"] = total
            out[f"{name}_routes_equal_frac"] = equal / total if total else float("nan")
        return out


def cached_prompt_tokens(output, prompt_len: int, block: int, repeat: bool) -> int:
    """How many leading prompt tokens of a request the engine served from its prefix cache: vLLM's own count
    (`RequestOutput.num_cached_tokens`) when it reports one, else every full block of a repeated prompt (vLLM
    always computes at least the last prompt token). Trusting the engine's count keeps the check honest: with
    the cache off, or with prompts shorter than a block, nothing is counted as cached."""
    reported = getattr(output, "num_cached_tokens", None)
    if reported is not None:
        return min(int(reported), prompt_len - 1)
    return (prompt_len - 1) // block * block if repeat else 0


def chain_prompts(prompts: list[list[int]], min_len: int) -> list[list[int]]:
    """Prompts of at least min_len tokens for the prefix-cache check, one per given prompt: the prompt followed
    by the next ones (cyclically). Real prompts shorter than a KV block are never served from the cache, so
    the check would compare nothing."""
    out = []
    for index, prompt in enumerate(prompts):
        chained, step = list(prompt), 1
        while len(chained) < min_len and any(prompts):
            chained += prompts[(index + step) % len(prompts)]
            step += 1
        out.append(chained)
    return out
