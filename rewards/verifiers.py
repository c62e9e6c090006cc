"""Rule-based rewards for the arithmetic task: answer correctness, answer format, and overlong shaping.

The difference between "wrong" and "failed" matters here. A completion with no `####` line is *wrong*
(value 0: the policy should learn to stop doing that). A prompt whose reference answer cannot be found
(no `answer` metadata and a prompt that is not an arithmetic problem) is *failed*: the verifier cannot
judge it, so the sample is excluded rather than scored 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rewards.base import REWARDS, Failure, RewardConfig, RewardInput, config_version
from rl_platform.config import check
from rl_platform.tasks.arithmetic import ANSWER_MARK, extract_answer, reference_answer

# One well-formed answer line: the mark, one space, an optional minus, digits, nothing else.
_ANSWER_LINE_RE = re.compile(r"#### -?\d+")
_SO_RE = re.compile(r"\bso (-?\d+)\s*$")


def _reference(sample: RewardInput, answer_key: str) -> int | Failure:
    if answer_key in sample.metadata:
        try:
            return int(sample.metadata[answer_key])
        except (TypeError, ValueError):
            return Failure(f"bad_reference: metadata[{answer_key!r}]={sample.metadata[answer_key]!r} is not an int")
    try:
        return reference_answer(sample.prompt)
    except ValueError as exc:
        return Failure(f"no_reference: no metadata[{answer_key!r}] and {exc}")


@REWARDS.register("arithmetic_verifier")
@dataclass(kw_only=True, slots=True)
class ArithmeticVerifierConfig(RewardConfig):
    """1.0 if the `#### <int>` answer equals the reference, else 0.0 (a verifier: pass_threshold 1.0).

    Example:
        ArithmeticVerifierConfig(answer_key="answer", require_single_answer=True)
    """

    answer_key: str = "answer"
    """Metadata key holding the reference answer; without it the answer is recomputed from the prompt."""
    require_single_answer: bool = True
    """A completion with more than one `####` is wrong: otherwise a policy can list several guesses."""
    correct_value: float = 1.0
    incorrect_value: float = 0.0

    def __post_init__(self) -> None:
        RewardConfig.__post_init__(self)
        check(self.correct_value > self.incorrect_value, "ArithmeticVerifierConfig.correct_value",
              self.correct_value, f"must be > incorrect_value ({self.incorrect_value})", "swap or fix the values")

    def make_scorer(self) -> ArithmeticVerifier:
        return ArithmeticVerifier(self)


class ArithmeticVerifier:
    name = "arithmetic_verifier"

    def __init__(self, config: ArithmeticVerifierConfig) -> None:
        self.config = config
        self.version = config_version(config)
        self.pass_threshold = config.correct_value

    def score_one(self, sample: RewardInput) -> float | Failure:
        expected = _reference(sample, self.config.answer_key)
        if isinstance(expected, Failure):
            return expected
        if self.config.require_single_answer and sample.completion.count(ANSWER_MARK) != 1:
            return self.config.incorrect_value
        got = extract_answer(sample.completion)
        return self.config.correct_value if got == expected else self.config.incorrect_value

    def score_batch(self, samples: Sequence[RewardInput]) -> list[float | Failure]:
        return [self.score_one(s) for s in samples]


@REWARDS.register("arithmetic_format")
@dataclass(kw_only=True, slots=True)
class ArithmeticFormatConfig(RewardConfig):
    """1.0 if the completion has the task's answer format, else 0.0; does not check correctness.

    Well-formed means: exactly one `####` in the text, on its own last non-empty line written
    `#### <int>`, and (if `require_consistent_so`) a preceding `so <int>` with the same number.

    Example:
        ArithmeticFormatConfig(require_consistent_so=True)
    """

    require_consistent_so: bool = True
    """Also require the worked part to end with `so <n>` equal to the answer line (the task's format)."""

    def make_scorer(self) -> ArithmeticFormat:
        return ArithmeticFormat(self)


class ArithmeticFormat:
    name = "arithmetic_format"
    pass_threshold = 1.0

    def __init__(self, config: ArithmeticFormatConfig) -> None:
        self.config = config
        self.version = config_version(config)

    def is_well_formed(self, text: str) -> bool:
        if text.count(ANSWER_MARK) != 1:
            return False
        lines = [line.strip() for line in text.strip().split("\n")]
        if len(lines) < 2 or not _ANSWER_LINE_RE.fullmatch(lines[-1]):
            return False
        if self.config.require_consistent_so:
            so = _SO_RE.search(lines[-2])
            return so is not None and int(so.group(1)) == int(lines[-1][len(ANSWER_MARK):])
        return True

    def score_batch(self, samples: Sequence[RewardInput]) -> list[float]:
        return [1.0 if self.is_well_formed(s.completion) else 0.0 for s in samples]


@REWARDS.register("length_penalty")
@dataclass(kw_only=True, slots=True)
class LengthPenaltyConfig(RewardConfig):
    """DAPO overlong shaping (arXiv:2503.14476, eq. 13): 0 up to max_len - cache_len, linear to -1 at max_len.

    Beyond max_len the value stays -1 (DAPO's generator cannot exceed max_len; ours may, e.g. a remote
    policy with a different limit). In `tokens`, the length is `metadata["num_completion_tokens"]` (the
    generator knows it exactly) or, if absent, the count from the tokenizer at `tokenizer_path`.

    Example:
        LengthPenaltyConfig(max_len=512, cache_len=128, unit="tokens")
    """

    max_len: int = 512
    cache_len: int = 128
    """Width of the soft zone before max_len where the penalty ramps from 0 to -1."""
    unit: Literal["tokens", "chars"] = "chars"
    tokenizer_path: Path | None = None
    """A HF tokenizer directory, used in `tokens` mode when the metadata has no token count."""

    def __post_init__(self) -> None:
        RewardConfig.__post_init__(self)
        check(self.max_len > 0, "LengthPenaltyConfig.max_len", self.max_len, "must be > 0", "give a positive length")
        check(0 < self.cache_len <= self.max_len, "LengthPenaltyConfig.cache_len", self.cache_len,
              f"must be in (0, max_len={self.max_len}]", "make the soft zone narrower than max_len")

    def make_scorer(self) -> LengthPenalty:
        return LengthPenalty(self)


def overlong_penalty(length: int, max_len: int, cache_len: int) -> float:
    """DAPO soft overlong punishment for one length."""
    if length <= max_len - cache_len:
        return 0.0
    if length <= max_len:
        return (max_len - cache_len - length) / cache_len
    return -1.0


class LengthPenalty:
    name = "length_penalty"
    pass_threshold = None

    def __init__(self, config: LengthPenaltyConfig) -> None:
        self.config = config
        self.version = config_version(config)
        self._count_tokens: Callable[[str], int] | None = None
        if config.unit == "tokens" and config.tokenizer_path is not None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(config.tokenizer_path))
            self._count_tokens = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def length(self, sample: RewardInput) -> int | Failure:
        if self.config.unit == "chars":
            return len(sample.completion)
        if "num_completion_tokens" in sample.metadata:
            return int(sample.metadata["num_completion_tokens"])
        if self._count_tokens is not None:
            return self._count_tokens(sample.completion)
        return Failure("no_length: unit='tokens' needs metadata['num_completion_tokens'] or "
                       "LengthPenaltyConfig.tokenizer_path")

    def score_batch(self, samples: Sequence[RewardInput]) -> list[float | Failure]:
        out: list[float | Failure] = []
        for sample in samples:
            length = self.length(sample)
            out.append(length if isinstance(length, Failure)
                       else overlong_penalty(length, self.config.max_len, self.config.cache_len))
        return out


def arithmetic_correctness(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
    """TRL-signature reward (also the default of `python_function`): 1.0 right, 0.0 wrong, None unknown.

    `answer` may come as a dataset column (TRL passes columns as kwargs); otherwise it is recomputed.
    """
    answers = kwargs.get("answer") or [None] * len(prompts)
    out: list[float | None] = []
    for prompt, completion, answer in zip(prompts, completions, answers, strict=True):
        try:
            expected = int(answer) if answer is not None else reference_answer(prompt)
        except ValueError:
            out.append(None)
            continue
        out.append(1.0 if extract_answer(completion) == expected else 0.0)
    return out
