"""reasoning-gym tasks as a prompt source (`--set prompts=reasoning_gym`): procedurally generated,
verifiable problems (the `reasoning-gym` package), mixed by weight; the `reasoning_gym` reward
(rewards/reasoning_gym.py) scores them with each task's own `score_answer`.

Every prompt carries its task entry (question, answer, metadata) in `metadata["rg_entry"]`, its task name in
`metadata["task"]` (the evaluation reports pass@1 per task from it) and the reference in `metadata["answer"]`.
Train and held-out never share a question: an instance belongs to the held-out side when a hash of its
question falls in the held-out bucket (the same rule splits the pretraining corpus, `corpus_documents`).
docs/bring_your_own_model.md, 'reasoning-gym'.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from rl_platform.config import ConfigError, check
from rl_platform.tasks.sources import PROMPT_SOURCES, PromptSourceConfig, in_held_out_bucket, make_prompt
from rl_platform.types import Prompt

_INDEX_SPACE = 1 << 40
"""reasoning-gym generates instance i from Random(seed + i) on demand, so the index space is free."""


@PROMPT_SOURCES.register("reasoning_gym")
@dataclass(kw_only=True, slots=True)
class ReasoningGymPromptsConfig(PromptSourceConfig):
    """A weighted mix of reasoning-gym tasks.

    Example:
        ReasoningGymPromptsConfig(tasks=("basic_arithmetic", "leg_counting"), weights=(2.0, 1.0),
                                  task_options={"leg_counting": {"min_animals": 1, "max_animals": 2}})
    """

    tasks: tuple[str, ...] = ("basic_arithmetic",)
    """reasoning-gym dataset names (`reasoning_gym.factory.DATASETS`)."""
    weights: tuple[float, ...] = ()
    """Sampling weight per task for training batches; empty = equal."""
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-task dataset options (difficulty knobs), e.g. {"basic_arithmetic": {"max_digits": 2}}."""
    held_out_fraction: float = 0.1
    """Share of instances (by question hash) that only the held-out evaluation sees."""
    instruction: str = ""
    """Appended to every question, e.g. a request to answer in <answer></answer> tags."""
    use_chat_template: bool = True
    """Render the question as one user turn of the tokenizer's chat template (when it has one)."""

    def __post_init__(self) -> None:
        check(len(self.tasks) > 0, "prompts.tasks", self.tasks, "is empty", "name at least one reasoning-gym task")
        check(not self.weights or len(self.weights) == len(self.tasks), "prompts.weights", self.weights,
              f"must be empty or have one weight per task ({len(self.tasks)})", "give one weight per task")
        check(all(w > 0 for w in self.weights), "prompts.weights", self.weights, "must be > 0", "drop the task")
        unknown = sorted(set(self.task_options) - set(self.tasks))
        check(not unknown, "prompts.task_options", unknown, "name tasks that are not in prompts.tasks",
              "add them to prompts.tasks or remove their options")
        check(0.0 < self.held_out_fraction < 1.0, "prompts.held_out_fraction", self.held_out_fraction,
              "must be in (0, 1)", "use e.g. 0.1")

    def build(self, tokenizer: Any, seed: int) -> ReasoningGymPrompts:
        return ReasoningGymPrompts(self, tokenizer, seed)


@cache
def _dataset(name: str, seed: int, options: tuple) -> Any:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise ConfigError(f"prompts.tasks: {name!r} is not a reasoning-gym task; e.g. {sorted(DATASETS)[:12]}... "
                          "(reasoning_gym.factory.DATASETS lists all)")
    try:
        return reasoning_gym.create_dataset(name, seed=seed, size=_INDEX_SPACE, **dict(options))
    except (TypeError, AssertionError, ValueError) as exc:
        raise ConfigError(f"prompts.task_options[{name!r}]={dict(options)}: {exc}; see the task's config class "
                          "in reasoning_gym for its options") from None


class ReasoningGymPrompts:
    """Draws instances of the task mix; each task's generator is seeded from (run seed, task)."""

    def __init__(self, config: ReasoningGymPromptsConfig, tokenizer: Any, seed: int) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.seed = seed
        self.weights = list(config.weights) or [1.0] * len(config.tasks)
        for task in config.tasks:
            self._draw(task, random.Random(0), held_out=False)  # fail early on a bad name or option

    def _draw(self, task: str, rng: random.Random, held_out: bool) -> dict:
        options = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                               for k, v in self.config.task_options.get(task, {}).items()))
        dataset = _dataset(task, self.seed, options)
        for _ in range(10_000):
            entry = dataset[rng.randrange(_INDEX_SPACE)]
            if in_held_out_bucket(entry["question"], self.config.held_out_fraction) == held_out:
                return entry
        raise ConfigError(f"prompts.tasks: {task!r} produced no {'held-out' if held_out else 'training'} instance in "
                          "10000 draws (too few distinct questions at these options); widen its task_options")

    def _prompt(self, task: str, entry: dict, prompt_id: str) -> Prompt:
        question = entry["question"] + self.config.instruction
        metadata = {"task": task, "answer": entry["answer"], "rg_entry": entry}
        return make_prompt(self.tokenizer, prompt_id, question, metadata, self.config.use_chat_template)

    def train_batch(self, step: int, num_prompts: int) -> list[Prompt]:
        rng = random.Random(f"{self.seed}:rg-train:{step}")
        tasks = rng.choices(self.config.tasks, self.weights, k=num_prompts)
        return [self._prompt(task, self._draw(task, rng, held_out=False), f"train/{step}.{i}")
                for i, task in enumerate(tasks)]

    def resample_batch(self, step: int, start: int, num_prompts: int) -> list[Prompt]:
        """DAPO's extra prompts for `step` (rl_platform/tasks/sources.py, PromptSource.resample_batch): the task
        and the instance of prompt i are drawn one after the other, so the stream is prefix-stable."""
        rng = random.Random(f"{self.seed}:rg-resample:{step}")
        out = []
        for i in range(start + num_prompts):
            task = rng.choices(self.config.tasks, self.weights)[0]
            out.append(self._prompt(task, self._draw(task, rng, held_out=False), f"train/{step}.r{i}"))
        return out[start:]

    def held_out(self, num_prompts: int) -> list[Prompt]:
        """num_prompts instances, split evenly between the tasks (per-task pass rates need each task)."""
        rngs = {task: random.Random(f"{self.seed}:rg-validation:{task}") for task in self.config.tasks}
        out = []
        for i in range(num_prompts):
            task = self.config.tasks[i % len(self.config.tasks)]
            out.append(self._prompt(task, self._draw(task, rngs[task], held_out=True), f"validation/{task}/{i}"))
        return out


def corpus_documents(config: ReasoningGymPromptsConfig, seed: int, num_documents: int,
                     render: Any) -> list[str]:
    """Training-side instances as worked documents `render(question) + " " + answer` for pretraining or SFT:
    `render` must produce the exact text the RL prompt will be (the chat template's user turn), so the model
    learns the answer where the policy will be asked for it. Never contains a held-out question."""
    source = ReasoningGymPrompts(config, tokenizer=None, seed=seed)
    rng = random.Random(f"{seed}:rg-corpus")
    tasks = rng.choices(config.tasks, source.weights, k=num_documents)
    docs = []
    for task in tasks:
        entry = source._draw(task, rng, held_out=False)
        docs.append(render(entry["question"] + config.instruction) + " " + str(entry["answer"]))
    return docs
