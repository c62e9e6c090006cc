"""DAPO dynamic sampling (arXiv:2503.14476, section 3.2): keep only groups that carry a learning signal (not every
scored reward equal) and re-sample new prompts until the batch holds `num_prompts_per_step` such groups, for at
most `max_rounds` extra rounds. What is still missing after the last round is trained without (the step is
smaller, and `dapo/short_groups` says by how much); verl's DAPO recipe bounds the rounds the same way
(max_num_gen_batches).

Refill prompts come from the prompt source's re-sample stream for the step (`resample_batch(step, start, k)`,
rl_platform/tasks/sources.py): round after round the controller takes the next k prompts of it, so a step's
refills are a pure function of (seed, step) and a resumed run re-samples the same prompts; they never borrow
from the training stream, whose later batches belong to later steps.
docs/rl_algorithms.md, 'DAPO dynamic sampling'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rl_platform.config import check
from rl_platform.types import Prompt, Rollout

ResampleFn = Callable[[int, int, int], list[Prompt]]
"""(step, start, count) -> prompts [start, start + count) of the step's re-sample stream
(PromptSource.resample_batch)."""


@dataclass(kw_only=True, slots=True)
class DynamicSamplingConfig:
    """Refill the batch with signal-carrying groups (`--set loop.dynamic_sampling.enabled=true`)."""

    enabled: bool = False
    max_rounds: int = 3
    """Extra generation rounds per step at most."""
    oversample: float = 1.5
    """Prompts drawn per missing group in a re-sample round (> 1 anticipates that some come back flat too)."""

    def __post_init__(self) -> None:
        check(self.max_rounds >= 1, "DynamicSamplingConfig.max_rounds", self.max_rounds, "must be >= 1", "use 3")
        check(self.oversample >= 1.0, "DynamicSamplingConfig.oversample", self.oversample, "must be >= 1",
              "use 1.5")


def has_signal(group: Sequence[Rollout]) -> bool:
    """At least two scored samples with different rewards."""
    values = {r.reward.value for r in group if r.reward.value is not None}
    return len(values) > 1


class DynamicSampler:
    """Filters flat groups and refills the batch.

    Example:
        sampler = DynamicSampler(DynamicSamplingConfig(enabled=True), prompts.resample_batch)
        groups, metrics = sampler.fill(groups, target=16, sample_more=lambda k: generate_and_score(next_k(k)))
    """

    def __init__(self, config: DynamicSamplingConfig, resample: ResampleFn | None = None) -> None:
        if config.enabled and resample is None:
            raise ValueError("DynamicSamplingConfig.enabled=True but the prompt source gives no re-sample stream "
                             "(no `resample_batch`); implement it on the source (rl_platform/tasks/sources.py) or "
                             "set loop.dynamic_sampling.enabled=false")
        self.config = config
        self.resample = resample
        """Where refill prompts come from (the controller draws them in order, see `fill`)."""

    def fill(self, groups: list[list[Rollout]], target: int,
             sample_more: Callable[[int], list[list[Rollout]]]) -> tuple[list[list[Rollout]], dict[str, float]]:
        """The first `target` signal-carrying groups (in draw order) and `dapo/*` metrics; `sample_more(k)`
        generates and scores k new prompts' groups."""
        if not self.config.enabled:
            return groups, {}
        kept = [g for g in groups if has_signal(g)]
        generated, rounds = len(groups), 0
        while len(kept) < target and rounds < self.config.max_rounds:
            rounds += 1
            more = sample_more(math.ceil((target - len(kept)) * self.config.oversample))
            generated += len(more)
            kept += [g for g in more if has_signal(g)]
        return kept[:target], {"dapo/resample_rounds": float(rounds), "dapo/generated_groups": float(generated),
                               "dapo/short_groups": float(max(0, target - len(kept)))}
