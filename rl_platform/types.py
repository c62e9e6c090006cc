"""Every payload that crosses a role boundary (controller, rollout, reward, learner).

Shapes: P prompt tokens, R response tokens, L MoE layers, K experts per token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np


@dataclass(frozen=True, kw_only=True, slots=True)
class Prompt:
    """One prompt of the task dataset.

    Example:
        Prompt(prompt_id="train/17", text="Q: 3+4=?\\nA:", token_ids=[1, 52, ...], metadata={"answer": 7})
    """

    prompt_id: str
    """Unique and stable across resumes: '<split>/<index>'."""
    text: str
    token_ids: list[int]
    """[P] prompt token ids as the learner and the engine see them (BOS included)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Task data the reward needs (e.g. the reference answer)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Completion:
    """One sampled continuation of one prompt, as returned by a Generator.

    Example:
        Completion(prompt_id="train/17", sample_index=2, token_ids=[53, 9, 2], text=" 7\\n#### 7",
                   generator_logprobs=[-0.2, -1.1, -0.01], routed_experts=np.zeros((5, 4, 4), np.uint8),
                   finish_reason="stop", policy_version=3)
    """

    prompt_id: str
    sample_index: int
    """0..num_samples_per_prompt-1 within the group."""
    token_ids: list[int]
    """[R] generated token ids (prompt excluded; EOS included when it stopped)."""
    text: str
    """Detokenised response."""
    generator_logprobs: list[float]
    """[R] log-probabilities of token_ids under the sampling engine (temperature applied)."""
    routed_experts: np.ndarray | None
    """[P + R - 1, L, K] uint8 (int16 above 256 experts) experts the engine chose at every forwarded position
    (row i = the forward of token i); None when the engine does not capture routes."""
    finish_reason: Literal["stop", "length", "abort"]
    policy_version: int
    """Version of the weights that produced every token (weights change only between generate calls)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardInput:
    """One sample to score: the prompt, the completion text, and task metadata.

    Example:
        RewardInput(prompt="Q: 347+86=?\\nA:", completion=" ...; so 433\\n#### 433", metadata={"answer": 433})
    """

    prompt: str
    completion: str
    """The generated text only (prompt excluded)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Task data the reward may use: `answer` (reference), `tests` (code tasks), `num_completion_tokens`, ..."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardResult:
    """The reward of one sample, or why there is none, and which reward (name, version) produced it.
    A failed sample has value None (it is excluded from the loss), never 0.

    Example:
        RewardResult(value=1.0, failed=False, reason=None, reward_name="arithmetic_verifier",
                     reward_version="3f2a9c01d4e5")
        RewardResult(value=None, failed=True, reason="timeout: batch took > 5.0 s", reward_name=..., ...)
    """

    value: float | None
    """The reward; None exactly when `failed`."""
    failed: bool
    reason: str | None = None
    """Why the sample failed (`"<category>: <detail>"`); may also annotate a valid score."""
    reward_name: str = ""
    reward_version: str = ""
    """Hash of the reward's config and source (+ weights for a model)."""
    shadow: RewardResult | None = None
    """The shadow reward's result for the same sample (compared, never trained on)."""
    components: dict[str, float | None] | None = None
    """Per-component values of a weighted combination (None for a failed component)."""

    def __post_init__(self) -> None:
        # Internal invariant (not user input): the two ways of saying "no reward" must agree.
        if self.failed != (self.value is None):
            raise ValueError(f"RewardResult from {self.reward_name}: failed={self.failed} but value={self.value}")
        if self.failed and not self.reason:
            raise ValueError(f"RewardResult from {self.reward_name}: a failed result needs a reason")

    @property
    def shadow_value(self) -> float | None:
        return None if self.shadow is None else self.shadow.value

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RewardResult:
        shadow = data.get("shadow")
        return RewardResult(
            value=data["value"], failed=data["failed"], reason=data.get("reason"),
            reward_name=data["reward_name"], reward_version=data["reward_version"],
            shadow=RewardResult.from_dict(shadow) if shadow else None, components=data.get("components"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Rollout:
    """A completion with its prompt and its reward: the unit the learner trains on."""

    prompt: Prompt
    completion: Completion
    reward: RewardResult


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyWeights:
    """A published policy: checkpoint-format tensors (the names vLLM loads) and their version."""

    version: int
    tensors: dict[str, Any]
    """name -> torch.Tensor (CPU), names as in the exported model.safetensors."""
