"""Reward worker: builds the recipe's reward in its own process and scores batches of completions.

The reward object comes from the recipe's reward config (`config.build()`); this module never imports
`rewards/`. A reward that raises, times out or returns a non-finite value yields a failed RewardOutcome
(value None) for that sample, never 0, so the learner can exclude it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from rl_platform.run_dir import setup_logging
from rl_platform.types import Completion, Prompt, RewardOutcome

logger = logging.getLogger(__name__)


class RewardWorker:
    """Implements rl_platform.protocols.RewardScorer for one shard of a batch."""

    def __init__(self, reward_config: Any, worker_index: int = 0) -> None:
        setup_logging(f"reward {worker_index}")
        self.scorer = reward_config.build()

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[RewardOutcome]:
        try:
            outcomes = list(self.scorer.score(prompts, completions))
        except Exception as exc:  # a broken reward fails its samples, it does not kill the run
            logger.exception("reward raised on a batch of %d", len(completions))
            return [RewardOutcome(value=None, failed=True, reason=f"{type(exc).__name__}: {exc}")
                    for _ in completions]
        if len(outcomes) != len(completions):
            reason = f"reward returned {len(outcomes)} outcomes for {len(completions)} completions"
            return [RewardOutcome(value=None, failed=True, reason=reason) for _ in completions]
        return [o if o.failed or (o.value is not None and math.isfinite(o.value))
                else RewardOutcome(value=None, failed=True, reason=f"non-finite reward {o.value}",
                                   reward_name=o.reward_name, reward_version=o.reward_version)
                for o in outcomes]
