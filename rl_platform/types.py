"""Every payload that crosses a role boundary (controller, rollout, reward, learner).

Shapes: P prompt tokens, R response tokens, L MoE layers, K experts per token.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Iterator
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
class SampleKey:
    """The identity of one sample: the same across every retry, never reused within an epoch. It names the
    engine request, the ledger row and the trained row, so a re-issued request cannot be counted twice.

    Example:
        SampleKey(prompt_id="train/17.3", sample_index=2, epoch=0)   # str(): "train/17.3#2@0"
    """

    prompt_id: str
    sample_index: int
    """0..num_samples_per_prompt-1 within the group."""
    epoch: int = 0
    """Pass over the prompt source (a generated task stream has one epoch: its prompt ids never repeat)."""

    def __str__(self) -> str:
        return f"{self.prompt_id}#{self.sample_index}@{self.epoch}"

    def seed(self, base: int) -> int:
        """This sample's sampling seed under the run's base seed: a hash of (base, key), so it does not
        depend on the engine, the batch or the step the sample happens to be generated in."""
        digest = hashlib.blake2b(f"{base}:{self}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little") & 0x7FFFFFFF


@dataclass(frozen=True, kw_only=True, slots=True)
class SampleRequest:
    """One sample to generate, as the rollout scheduler hands it to an engine.

    Example:
        SampleRequest(key=SampleKey(prompt_id="train/17.3", sample_index=2), prompt=prompt, seed=913,
                      attempt=0)
    """

    key: SampleKey
    prompt: Prompt
    seed: int
    """Sampling seed of this sample, a function of its key (a re-issued request samples the same way on the
    same weights, whichever engine runs it)."""
    attempt: int = 0
    """0 for the first issue; +1 each time the sample is re-issued (too stale, or its engine was lost)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Completion:
    """One sampled continuation of one prompt, as returned by a Generator.

    With streaming generation a weight update can land while a response is being generated: the engine
    then recomputes the response's prefix under the new weights and continues, so token j was sampled from
    exactly pi_{policy_versions[j]}(. | prompt, tokens < j) (docs/async_rl.md, "Partial rollouts").

    Example:
        Completion(prompt_id="train/17", sample_index=2, token_ids=[53, 9, 2], text=" 7\n#### 7",
                   generator_logprobs=[-0.2, -1.1, -0.01], routed_experts=np.zeros((5, 4, 4), np.uint8),
                   finish_reason="stop", policy_versions=[3, 3, 4])
    """

    prompt_id: str
    sample_index: int
    """0..num_samples_per_prompt-1 within the group."""
    token_ids: list[int]
    """[R] generated token ids (prompt excluded; EOS included when it stopped)."""
    text: str
    """Detokenised response."""
    generator_logprobs: list[float]
    """[R] behaviour log-probabilities: token j under the weights that sampled it (policy_versions[j]),
    temperature-1 (the engine's raw log-softmax)."""
    routed_experts: np.ndarray | None
    """[P + R - 1, L, K] uint8 (int16 above 256 experts) experts the engine chose at every forwarded position
    (row i = the forward of token i, under the weights that sampled token i+1); None when the engine does
    not capture routes."""
    finish_reason: Literal["stop", "length", "abort"]
    policy_versions: list[int]
    """[R] version of the weights that sampled each token (non-decreasing; more than one value when a
    weight update landed while the response was being generated)."""
    epoch: int = 0
    """Epoch of the sample's key (SampleKey)."""

    @property
    def key(self) -> SampleKey:
        return SampleKey(prompt_id=self.prompt_id, sample_index=self.sample_index, epoch=self.epoch)

    @property
    def policy_version(self) -> int:
        """The oldest version among the tokens (staleness counts from it); -1 for an empty response."""
        return self.policy_versions[0] if self.policy_versions else -1

    @property
    def is_partial(self) -> bool:
        """True when the tokens come from more than one weight version."""
        return bool(self.policy_versions) and self.policy_versions[0] != self.policy_versions[-1]


@dataclass(frozen=True, kw_only=True, slots=True)
class GeneratorPoll:
    """What the engines finished since the previous poll, and how busy they have been.

    Example:
        GeneratorPoll(completions=[completion], busy_seconds=[12.5, 11.9], clock_seconds=[301.0, 300.2],
                      versions=[4, 4])
    """

    completions: list[Completion]
    busy_seconds: list[float]
    """[num_engines] cumulative seconds each engine has spent in engine steps that had work."""
    clock_seconds: list[float]
    """[num_engines] each engine's own monotonic clock when it read busy_seconds: a report can reach the driver
    long after it was taken (the driver was training), so busy fractions divide by the engine's clock."""
    versions: list[int]
    """[num_engines] the policy version each engine serves (the last weight update it has applied)."""


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
    """A published policy: its checkpoint-format tensors (the names vLLM loads) packed back to back into one flat
    buffer per dtype, and their version. One numpy buffer is one zero-copy object in Ray's object store; a dict
    of 430 torch tensors pickles each storage separately (measured on the tiny model, put + get: 0.45 s vs
    0.03 s, docs/async_rl.md, "Faster step").

    Example:
        weights = PolicyWeights.pack(3, model_named_tensors)
        for name, tensor in weights.named_tensors(): ...    # views into the buffers, no copy
    """

    version: int
    buffers: dict[str, np.ndarray]
    """torch dtype name ("float32", "bfloat16", ...) -> [N] flat buffer; bfloat16 travels as its uint16 bits."""
    layout: list[tuple[str, str, tuple[int, ...], int]]
    """(name, dtype name, shape, offset into that dtype's buffer), in publishing order."""

    @staticmethod
    def pack(version: int, named_tensors: Iterable[tuple[str, Any]]) -> PolicyWeights:
        import torch

        items = [(name, t.detach()) for name, t in named_tensors]
        sizes: dict[str, int] = {}
        layout = []
        for name, t in items:
            dtype = str(t.dtype).removeprefix("torch.")
            layout.append((name, dtype, tuple(t.shape), sizes.get(dtype, 0)))
            sizes[dtype] = sizes.get(dtype, 0) + t.numel()
        flat = {dtype: torch.empty(n, dtype=getattr(torch, dtype)) for dtype, n in sizes.items()}
        for (_, dtype, _, offset), (_, t) in zip(layout, items, strict=True):
            flat[dtype][offset:offset + t.numel()].copy_(t.reshape(-1))
        buffers = {d: (b.view(torch.uint16) if d == "bfloat16" else b).numpy() for d, b in flat.items()}
        return PolicyWeights(version=version, buffers=buffers, layout=layout)

    def named_tensors(self) -> Iterator[tuple[str, Any]]:
        """(name, tensor) views into the buffers (read-only memory when it came from the object store)."""
        import warnings

        import torch

        with warnings.catch_warnings():  # read-only object-store memory: we never write to these views
            warnings.simplefilter("ignore", UserWarning)
            flat = {d: torch.from_numpy(b) for d, b in self.buffers.items()}
        flat = {d: (b.view(torch.bfloat16) if d == "bfloat16" else b) for d, b in flat.items()}
        for name, dtype, shape, offset in self.layout:
            numel = 1
            for n in shape:
                numel *= n
            yield name, flat[dtype][offset:offset + numel].view(shape)
