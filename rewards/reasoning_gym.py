"""reasoning-gym's own verifiers as a reward (`--set reward=reasoning_gym`): each sample is scored by its
task's `score_answer(answer, entry)`, with the task entry the prompt source put in the metadata
(rl_platform/tasks/reasoning_gym_prompts.py). Values are in [0, 1]; some tasks give partial credit (e.g.
basic_arithmetic for an answer with stray whitespace), a pass is 1.0.

The answer is cut from the completion first (`answer_format`): the first line (a model trained to answer
directly, as the tiny recipe is), the content of the last <answer>...</answer> (reasoning-gym's own
convention for chat models), or the last non-empty line. A sample whose prompt has no task entry cannot
be judged: it fails (excluded from the loss), it is not scored 0. docs/bring_your_own_model.md, 'reasoning-gym'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Literal

from rewards.answer_match import EXTRACTORS
from rewards.base import REWARDS, Failure, RewardConfig, RewardInput, config_version


@REWARDS.register("reasoning_gym")
@dataclass(kw_only=True, slots=True)
class ReasoningGymRewardConfig(RewardConfig):
    """The task's own `score_answer` on the extracted answer.

    Example:
        ReasoningGymRewardConfig(answer_format="answer_tag")
    """

    answer_format: Literal["first_line", "answer_tag", "last_line"] = "first_line"
    """Where the answer is in the completion (see the module docstring)."""
    entry_key: str = "rg_entry"
    """Metadata key of the reasoning-gym entry (question, answer, metadata)."""

    def make_scorer(self) -> ReasoningGymReward:
        return ReasoningGymReward(self)


class ReasoningGymReward:
    name = "reasoning_gym"
    pass_threshold = 1.0

    def __init__(self, config: ReasoningGymRewardConfig) -> None:
        self.config = config
        # the verifiers' code is the package's: its version is part of the reward's
        self.version = config_version(config, f"reasoning-gym=={version('reasoning-gym')}")
        self.extract = EXTRACTORS[config.answer_format]

    def score_one(self, sample: RewardInput) -> float | Failure:
        from reasoning_gym import get_score_answer_fn

        entry = sample.metadata.get(self.config.entry_key)
        if not isinstance(entry, dict) or "source_dataset" not in entry.get("metadata", {}):
            return Failure(f"no_reference: metadata[{self.config.entry_key!r}] holds no reasoning-gym entry; use "
                           "--set prompts=reasoning_gym (or put the task entry there)")
        score = get_score_answer_fn(entry["metadata"]["source_dataset"])
        return float(score(self.extract(sample.completion), entry))

    def score_batch(self, samples: Sequence[RewardInput]) -> list[float | Failure]:
        return [self.score_one(s) for s in samples]
