"""Learner-vs-engine parity: does our forward compute what the vLLM rollout engine computed?

For completions sampled by the engine, compare per token:
- log-probabilities of the sampled tokens (ours, teacher-forced on prompt+response, vs the engine's);
- routed experts per (token, MoE layer) as sets (ours captured vs the engine's `routed_experts`);
and the same log-probabilities with the engine's routes forced in our forward (routing replay), which
is what R3 gives the learner. These are the baseline numbers that routing replay improves on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from kernels.fused_logprobs import fused_logprobs
from rl_platform.model import MoETransformer
from rl_platform.types import Completion, Prompt


@dataclass
class ParityReport:
    num_tokens: int
    """Scored (sampled) tokens."""
    num_routes: int
    """(token, layer) routing decisions compared (prompt and response positions)."""
    route_mismatch: float
    """Share of (token, layer) whose expert set differs, ours (live) vs the engine's."""
    logprob_abs_diff_mean: float
    logprob_abs_diff_max: float
    replay_logprob_abs_diff_mean: float
    """Same, with the engine's routes forced in our forward (R3)."""
    replay_logprob_abs_diff_max: float

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def teacher_forced_logprobs(model: MoETransformer, token_ids: list[int]) -> list[float]:
    """log p(token_t | tokens_<t) of every token after the first, in one forward of `model`."""
    with torch.no_grad():
        ids = torch.tensor([token_ids])
        logprobs, _ = fused_logprobs(model(ids).hidden_BSD[0, :-1], model.lm_head_weight, ids[0, 1:])
    return logprobs.tolist()


def measure_parity(model: MoETransformer, prompts: list[Prompt], groups: list[list[Completion]]) -> ParityReport:
    diffs, replay_diffs = [], []
    mismatched = compared = 0
    for prompt, group in zip(prompts, groups, strict=True):
        for completion in group:
            ids = torch.tensor([prompt.token_ids + completion.token_ids])
            p, r = len(prompt.token_ids), len(completion.token_ids)
            engine_routes = torch.from_numpy(np.asarray(completion.routed_experts).astype(np.int16))
            forced = torch.full((1, p + r, *engine_routes.shape[1:]), -1, dtype=torch.int16)
            forced[0, : p + r - 1] = engine_routes
            generator = torch.tensor(completion.generator_logprobs)
            for routes, sink in ((None, diffs), (forced, replay_diffs)):
                out = model(ids, forced_routes_BSLK=routes, capture_routes=routes is None)
                lp, _ = fused_logprobs(out.hidden_BSD[0, :-1].float(), model.lm_head_weight.float(), ids[0, 1:])
                sink.append((lp[p - 1:] - generator).abs())
                if routes is None:
                    ours = out.routes_BSLK[0, : p + r - 1].long().sort(-1).values
                    theirs = engine_routes.long().sort(-1).values
                    differs = (ours != theirs).any(-1)
                    mismatched += int(differs.sum())
                    compared += differs.numel()
    d, rd = torch.cat(diffs), torch.cat(replay_diffs)
    return ParityReport(num_tokens=d.numel(), num_routes=compared, route_mismatch=mismatched / max(1, compared),
                        logprob_abs_diff_mean=float(d.mean()), logprob_abs_diff_max=float(d.max()),
                        replay_logprob_abs_diff_mean=float(rd.mean()), replay_logprob_abs_diff_max=float(rd.max()))
