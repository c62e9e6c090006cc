"""The arithmetic prompt source (`--set prompts=arithmetic`, the default): deterministic batches of the
project's generated task per (seed, split, step). Other sources: rl_platform/tasks/sources.py."""

from __future__ import annotations

import random
from dataclasses import dataclass

from rl_platform.config import check
from rl_platform.tasks.arithmetic import draw_problem
from rl_platform.tasks.hints import hinted_prompt
from rl_platform.tasks.sources import PROMPT_SOURCES, PromptSourceConfig
from rl_platform.types import Prompt


@PROMPT_SOURCES.register("arithmetic")
@dataclass(kw_only=True, slots=True)
class ArithmeticPromptsConfig(PromptSourceConfig):
    """Prompts of the arithmetic task family (the pretraining corpus's verifiable task)."""

    max_digits: int = 3
    """Largest operand size."""
    min_digits: int = 1
    """Smallest operand size. min_digits 4 with max_digits 5 is the hard split (recipes grpo_tiny_hard_*):
    operands longer than the pretraining corpus's 3 digits, which the base almost never solves; for AHRL and
    DAPO dynamic sampling."""

    def __post_init__(self) -> None:
        check(1 <= self.max_digits <= 9, "ArithmeticPromptsConfig.max_digits", self.max_digits, "must be in [1, 9]",
              "use 2-4")
        check(1 <= self.min_digits <= self.max_digits, "ArithmeticPromptsConfig.min_digits", self.min_digits,
              f"must be in [1, max_digits={self.max_digits}]", "use 1 (the hard split: 4 with max_digits 5)")

    def build(self, tokenizer, seed: int) -> ArithmeticPrompts:
        return ArithmeticPrompts(self, tokenizer, seed)


class ArithmeticPrompts:
    """Train batches are a function of the step (a resumed run sees the same prompts); the held-out set is
    a fixed list disjoint from anything train can draw."""

    def __init__(self, config: ArithmeticPromptsConfig, tokenizer, seed: int) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.seed = seed

    def _prompt(self, rng: random.Random, split: str, index: str) -> Prompt:
        problem = draw_problem(rng, split, self.config.max_digits, self.config.min_digits)
        ids = [self.tokenizer.bos_token_id, *self.tokenizer.encode(problem.prompt, add_special_tokens=False)]
        return Prompt(prompt_id=f"{split}/{index}", text=problem.prompt, token_ids=ids,
                      metadata={"answer": problem.answer, "solution": problem.solution})

    def train_batch(self, step: int, num_prompts: int) -> list[Prompt]:
        rng = random.Random(f"{self.seed}:rl-train:{step}")
        return [self._prompt(rng, "train", f"{step}.{i}") for i in range(num_prompts)]

    def resample_batch(self, step: int, start: int, num_prompts: int) -> list[Prompt]:
        """DAPO's extra prompts for `step` (rl_platform/tasks/sources.py, PromptSource.resample_batch)."""
        rng = random.Random(f"{self.seed}:rl-resample:{step}")
        return [self._prompt(rng, "train", f"{step}.r{i}") for i in range(start + num_prompts)][start:]

    def with_hint(self, prompt: Prompt, fraction: float) -> Prompt:
        """The prompt followed by `fraction` of its worked solution's steps (AHRL)."""
        return hinted_prompt(prompt, fraction, self.tokenizer)

    def held_out(self, num_prompts: int) -> list[Prompt]:
        rng = random.Random(f"{self.seed}:rl-validation")
        return [self._prompt(rng, "validation", str(i)) for i in range(num_prompts)]
