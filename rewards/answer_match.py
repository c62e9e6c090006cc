"""Exact match of an extracted answer against the prompt's reference (`--set reward=answer_match`): the
reward for prompt files with an answer column (rl_platform/tasks/file_prompts.py puts it in
`metadata["answer"]`). For anything fuzzier, give a TRL-style function (`--set reward=python_function`).

Answer extraction, shared with the reasoning_gym reward: the first line of the completion, the content of
the last <answer>...</answer>, or the last non-empty line. A sample without a reference fails (excluded
from the loss); a completion without an answer is wrong (0).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from rewards.base import REWARDS, Failure, RewardConfig, RewardInput, config_version

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def _answer_tag(text: str) -> str:
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().split("\n") if line.strip()]
    return lines[-1] if lines else ""


EXTRACTORS: dict[str, Callable[[str], str]] = {"first_line": _first_line, "answer_tag": _answer_tag,
                                               "last_line": _last_line}
"""answer_format name -> the function that cuts the answer out of a completion."""


@REWARDS.register("answer_match")
@dataclass(kw_only=True, slots=True)
class AnswerMatchConfig(RewardConfig):
    """1.0 when the extracted answer equals metadata[answer_key] (whitespace-trimmed; optionally
    case-insensitive), else 0.0.

    Example:
        AnswerMatchConfig(answer_format="answer_tag", case_sensitive=False)
    """

    answer_format: Literal["first_line", "answer_tag", "last_line"] = "first_line"
    """Where the answer is in the completion."""
    answer_key: str = "answer"
    """Metadata key of the reference answer."""
    case_sensitive: bool = True

    def make_scorer(self) -> AnswerMatch:
        return AnswerMatch(self)


class AnswerMatch:
    name = "answer_match"
    pass_threshold = 1.0

    def __init__(self, config: AnswerMatchConfig) -> None:
        self.config = config
        self.version = config_version(config)
        self.extract = EXTRACTORS[config.answer_format]

    def _norm(self, text: str) -> str:
        text = " ".join(str(text).split())
        return text if self.config.case_sensitive else text.lower()

    def score_batch(self, samples: Sequence[RewardInput]) -> list[float | Failure]:
        out: list[float | Failure] = []
        for s in samples:
            if s.metadata.get(self.config.answer_key) is None:
                out.append(Failure(f"no_reference: metadata[{self.config.answer_key!r}] is missing; map the "
                                   "answer column with --set prompts.answer_column=<column>"))
            else:
                same = self._norm(self.extract(s.completion)) == self._norm(s.metadata[self.config.answer_key])
                out.append(1.0 if same else 0.0)
        return out
