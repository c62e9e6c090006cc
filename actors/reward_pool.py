"""Reward worker: builds the recipe's reward in its own process and scores shards of a batch.

The reward object comes from the recipe's reward config (`config.build()`, a guarded and versioned scorer);
this module never imports `rewards/`. The scorer already turns a raising, hanging or non-finite reward into
failed results; the worker guards once more around the call, so that even a scorer that breaks its
contract fails its samples (value None, with the reason) instead of killing the step or scoring them 0.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from actors.fault_injection import FaultHook
from rl_platform.run_dir import setup_logging
from rl_platform.types import Completion, Prompt, RewardInput, RewardResult

logger = logging.getLogger(__name__)


def reward_inputs(prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[RewardInput]:
    return [RewardInput(prompt=p.text, completion=c.text,
                        metadata={**p.metadata, "num_completion_tokens": len(c.token_ids),
                                  "finish_reason": c.finish_reason})
            for p, c in zip(prompts, completions, strict=True)]


class RewardWorker:
    """Implements rl_platform.protocols.RewardScorer for one shard of a batch."""

    def __init__(self, reward_config: Any, worker_index: int = 0) -> None:
        setup_logging(f"reward {worker_index}")
        self.scorer = reward_config.build()
        self._faults = FaultHook("reward", worker_index)

    def process_id(self) -> int:
        """The actor's process (supervision tells a restarted actor by a new one)."""
        return os.getpid()

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[RewardResult]:
        name = getattr(self.scorer, "name", "reward")
        self._faults.tick(len(completions))  # test-only (unset in real runs): a planned kill or hang mid-scoring
        try:
            results = list(self.scorer.score(reward_inputs(prompts, completions)))
        except Exception as exc:  # a broken reward fails its samples, it does not kill the run
            logger.exception("reward %s raised on a batch of %d", name, len(completions))
            return [RewardResult(value=None, failed=True, reason=f"error: {type(exc).__name__}: {exc}",
                                 reward_name=name) for _ in completions]
        if len(results) != len(completions):
            reason = f"contract: reward returned {len(results)} results for {len(completions)} completions"
            return [RewardResult(value=None, failed=True, reason=reason, reward_name=name) for _ in completions]
        return [r if r.failed or math.isfinite(r.value)
                else RewardResult(value=None, failed=True, reason=f"non_finite: {r.value}",
                                  reward_name=r.reward_name, reward_version=r.reward_version)
                for r in results]
