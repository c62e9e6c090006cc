"""Prompt sources: where the RL prompts come from, picked by config (`--set prompts=<name>`).

    source = config.prompts.build(tokenizer, seed)
    source.train_batch(step, num_prompts)   # a pure function of (seed, step): a resumed run sees the same prompts
    source.held_out(num_prompts)            # a fixed list, disjoint from anything train_batch can return
    source.resample_batch(step, start, n)   # DAPO re-sampling: prompts [start, start + n) of the step's own
                                            # extra stream, a pure function of (seed, step), new prompt ids

Registered: `arithmetic` (the project's generated task, rl_platform/tasks/prompts.py), `file` (JSONL, Parquet
or a local `datasets` directory; file_prompts.py), `reasoning_gym` (procedurally generated reasoning-gym
tasks; reasoning_gym_prompts.py). docs/bring_your_own_model.md, 'Prompts from files' and 'reasoning-gym'.

Rendering: a prompt given as text goes through the tokenizer's chat template as one user message when
`use_chat_template` is on and the tokenizer has a template (a prompt given as a list of chat messages always
does); the BOS token is prepended when the tokenizer has one and the rendering did not already start with it.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from rl_platform.config import Registry, check
from rl_platform.types import Prompt

PROMPT_SOURCES = Registry("prompt source")
"""Name -> PromptSourceConfig subclass."""

_BUILTIN_MODULES = ("rl_platform.tasks.prompts", "rl_platform.tasks.file_prompts",
                    "rl_platform.tasks.reasoning_gym_prompts")


class PromptSource(Protocol):
    """What the controller and the evaluation draw prompts from. A source whose prompts carry worked solutions
    may also offer `with_hint(prompt, fraction) -> Prompt` for AHRL (the arithmetic source does)."""

    def train_batch(self, step: int, num_prompts: int) -> list[Prompt]: ...

    def held_out(self, num_prompts: int) -> list[Prompt]: ...

    def resample_batch(self, step: int, start: int, num_prompts: int) -> list[Prompt]:
        """Prompts [start, start + num_prompts) of step `step`'s re-sample stream (DAPO dynamic sampling refills
        the batch from it): training prompts with ids of their own, the same for every call with the same
        arguments (so the stream is prefix-stable and a resumed run re-samples the same prompts)."""
        ...


@dataclass(kw_only=True, slots=True)
class PromptSourceConfig:
    """Base of every prompt source config; pick a subclass by registered name (`--set prompts=file`)."""

    registered_name: ClassVar[str]

    @classmethod
    def registry(cls) -> dict[str, type]:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        return PROMPT_SOURCES.classes()

    def build(self, tokenizer: Any, seed: int) -> PromptSource:
        raise NotImplementedError(f"{type(self).__name__} must implement build()")


def in_held_out_bucket(key: str, fraction: float) -> bool:
    """Held-out membership by a hash of the prompt text: a prompt that appears twice is on one side only,
    whatever the order of the rows or the seed."""
    check(0.0 <= fraction < 1.0, "held_out_fraction", fraction, "must be in [0, 1)", "use e.g. 0.05-0.2")
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 10_000 < round(fraction * 10_000)


def render_prompt(tokenizer: Any, prompt: str | list[dict], use_chat_template: bool) -> str:
    """The text the engine continues: a chat-templated user turn (or message list), or the text itself."""
    if isinstance(prompt, list):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("a prompt given as chat messages needs a tokenizer with a chat template; this "
                             "tokenizer has none (give the prompt as text, or add chat_template to the tokenizer)")
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def make_prompt(tokenizer: Any, prompt_id: str, prompt: str | list[dict], metadata: dict,
                use_chat_template: bool) -> Prompt:
    text = render_prompt(tokenizer, prompt, use_chat_template)
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return Prompt(prompt_id=prompt_id, text=text, token_ids=ids, metadata=metadata)
