"""Rollouts -> padded, target-aligned training tensors (pure functions).

Layout of one row (prompt length P, response length R, right-padded to S):
    input_ids      [p0 .. p(P-1) r0 .. r(R-1) pad ...]
    position t predicts token t+1, so response token r_j is scored at position P-1+j:
    mask[t] = 1 for P-1 <= t <= P+R-2 (and the sample did not fail)
    generator_logprobs[P-1+j] = the engine's logprob of r_j
    rollout_routes[t] = the engine's experts for the forward of token t, t <= P+R-2 (vLLM returns P+R-1
    rows: the last sampled token is never forwarded); -1 elsewhere (live routing, never scored).
Routes cover the MoE layers only (L = the model's `LayerMap.num_moe_layers`; dense layers have no slot), in
the order of `LayerMap.moe_layers`; the rollout worker has already dropped the engine's dense-layer rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rl_platform.model.config import SubModel
from rl_platform.types import Rollout


@dataclass
class TrainingBatch:
    input_ids_BS: Tensor
    attention_mask_BS: Tensor
    mask_BS: Tensor
    """float 1.0 where a response token of a non-failed sample is scored."""
    generator_logprobs_BS: Tensor
    advantages_B: Tensor
    rollout_routes_BSLK: Tensor | None
    """[B, S, L MoE layers, K] int16 engine routes aligned with input positions (-1: none); None when the engine
    gave no routes."""
    num_tokens: int
    """Scored response tokens."""
    prompt_lengths_B: Tensor | None = None
    """int64 prompt length P of every row (where its response starts); None for hand-built batches."""
    submodels_B: tuple[SubModel, ...] | None = None
    """The elastic family member each row trains (elastic RL, rl_platform/elastic_rl.py); None: all full."""

    def rows(self, index: Tensor | slice) -> TrainingBatch:
        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        mask = self.mask_BS[index]
        submodels = None
        if self.submodels_B is not None:
            picked = torch.arange(len(self.submodels_B))[index]
            submodels = tuple(self.submodels_B[i] for i in picked.reshape(-1).tolist())
        return TrainingBatch(self.input_ids_BS[index], self.attention_mask_BS[index], mask,
                             self.generator_logprobs_BS[index], self.advantages_B[index],
                             take(self.rollout_routes_BSLK), int(mask.sum()), take(self.prompt_lengths_B), submodels)

    def trimmed(self) -> TrainingBatch:
        """The same rows cut to their longest sequence: the trailing columns are padding in every row, and with
        right padding and causal attention no real position sees them, so the forward of the real positions
        is unchanged (a micro-batch of short rows then costs what short rows cost)."""
        s = max(1, int(self.attention_mask_BS.sum(-1).max()))
        if s == self.input_ids_BS.shape[1]:
            return self
        routes = None if self.rollout_routes_BSLK is None else self.rollout_routes_BSLK[:, :s]
        return TrainingBatch(self.input_ids_BS[:, :s], self.attention_mask_BS[:, :s], self.mask_BS[:, :s],
                             self.generator_logprobs_BS[:, :s], self.advantages_B, routes, self.num_tokens,
                             self.prompt_lengths_B, self.submodels_B)


def build_training_batch(rollouts: Sequence[Rollout], advantages: Sequence[float | None], pad_id: int,
                         num_moe_layers: int, top_k: int) -> TrainingBatch:
    """Stacks rollouts; a failed sample (advantage None) keeps its row but contributes no scored token.
    num_moe_layers, top_k: the policy's `LayerMap` (routes are checked against it)."""
    lengths = [len(r.prompt.token_ids) + len(r.completion.token_ids) for r in rollouts]
    b, s = len(rollouts), max(lengths)
    input_ids = torch.full((b, s), pad_id, dtype=torch.long)
    attention = torch.zeros(b, s, dtype=torch.long)
    mask = torch.zeros(b, s)
    gen_lp = torch.zeros(b, s)
    have_routes = all(r.completion.routed_experts is not None for r in rollouts)
    routes = torch.full((b, s, num_moe_layers, top_k), -1, dtype=torch.int16) if have_routes else None
    for i, rollout in enumerate(rollouts):
        prompt, completion = rollout.prompt.token_ids, rollout.completion
        p, r = len(prompt), len(completion.token_ids)
        input_ids[i, :p] = torch.tensor(prompt)
        input_ids[i, p:p + r] = torch.tensor(completion.token_ids)
        attention[i, : p + r] = 1
        if r and advantages[i] is not None:
            mask[i, p - 1:p + r - 1] = 1.0
        gen_lp[i, p - 1:p + r - 1] = torch.tensor(completion.generator_logprobs, dtype=torch.float32)
        if routes is not None:
            rows = np.asarray(completion.routed_experts)
            if rows.shape[0] != p + r - 1 or rows.shape[1] != num_moe_layers or rows.shape[2] != top_k:
                raise ValueError(
                    f"rollout {rollout.prompt.prompt_id}#{completion.sample_index}: routed_experts shape "
                    f"{rows.shape}, expected ({p + r - 1}, {num_moe_layers}, {top_k}) = (prompt+response-1, MoE "
                    "layers, top_k); the engine and the learner disagree on the model (export the policy again), "
                    "or the engine's dense-layer rows were not dropped (LayerMap.engine_to_moe)")
            routes[i, : p + r - 1] = torch.from_numpy(rows.astype(np.int16))
    adv = torch.tensor([0.0 if a is None else a for a in advantages], dtype=torch.float32)
    prompt_lengths = torch.tensor([len(r.prompt.token_ids) for r in rollouts], dtype=torch.long)
    return TrainingBatch(input_ids, attention, mask, gen_lp, adv, routes, int(mask.sum()), prompt_lengths)
