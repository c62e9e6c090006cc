"""Prompts from the user's own files (`--set prompts=file --set prompts.path=...`): JSONL, Parquet, or a
directory written by `datasets.Dataset.save_to_disk` (a DatasetDict's split is picked by `split`).

A row gives a prompt (text, or a list of chat messages), a reference answer and optional metadata columns;
the answer and the metadata travel in `Prompt.metadata` to the reward (`metadata["answer"]`, plus each
metadata column under its own name), which is how TRL passes dataset columns to reward functions.

Split: a row is held out when a hash of its prompt falls in the held-out bucket (`held_out_fraction`), or,
with `held_out_path`, the held-out rows are that file's. Training order: each pass over the training rows
is a permutation drawn from (seed, pass); batch `step` takes rows [step * n, (step + 1) * n) of that
stream, so a resumed run sees the same prompts. docs/bring_your_own_model.md, 'Prompts from files'.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_platform.config import ConfigError, check
from rl_platform.tasks.sources import PROMPT_SOURCES, PromptSourceConfig, in_held_out_bucket, make_prompt
from rl_platform.types import Prompt


@PROMPT_SOURCES.register("file")
@dataclass(kw_only=True, slots=True)
class FilePromptsConfig(PromptSourceConfig):
    """Prompts and answers from a JSONL / Parquet file or a local `datasets` directory.

    Example:
        FilePromptsConfig(path="data/gsm8k.parquet", prompt_column="question", answer_column="answer",
                          metadata_columns=("level",), held_out_fraction=0.1)
    """

    path: str = ""
    """A .jsonl / .parquet file, or a directory saved by `datasets` (save_to_disk)."""
    prompt_column: str = "prompt"
    """Column with the prompt: text, or a list of {"role", "content"} chat messages."""
    answer_column: str = "answer"
    """Column with the reference answer (metadata["answer"]); empty = rows have no answer (a reward model)."""
    metadata_columns: tuple[str, ...] = ()
    """Further columns copied into the prompt's metadata under their own names."""
    split: str = "train"
    """Split of a saved DatasetDict (ignored for files and single datasets)."""
    held_out_path: str = ""
    """Optional separate held-out file/directory; empty = hold out by hash with held_out_fraction."""
    held_out_fraction: float = 0.1
    """Share of rows (by prompt hash) kept for the held-out evaluation when held_out_path is empty."""
    use_chat_template: bool = True
    """Render text prompts as one user turn of the tokenizer's chat template (when it has one)."""
    shuffle_seed: int = -1
    """Seed of the training order; -1 = the run's seed."""

    def __post_init__(self) -> None:
        check(0.0 <= self.held_out_fraction < 1.0, "prompts.held_out_fraction", self.held_out_fraction,
              "must be in [0, 1)", "use e.g. 0.1")

    def build(self, tokenizer: Any, seed: int) -> FilePrompts:
        check(bool(self.path), "prompts.path", self.path, "is empty", "give a .jsonl, .parquet or datasets directory")
        return FilePrompts(self, tokenizer, seed if self.shuffle_seed < 0 else self.shuffle_seed)


def read_rows(path: str, split: str = "train") -> list[dict]:
    """Rows of a JSONL / Parquet file or a saved `datasets` directory, as dicts."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"prompts.path={path!r} does not exist; give a .jsonl, .parquet or datasets directory")
    if p.is_dir():
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(str(p))
        if isinstance(data, DatasetDict):
            if split not in data:
                raise ConfigError(f"prompts.split={split!r}: {path} has splits {sorted(data)}; pick one")
            data = data[split]
        return data.to_list()
    if p.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{n}: not a JSON object ({exc.msg}); fix or remove the line") from None
        return rows
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(str(p)).to_pylist()
    raise ConfigError(f"prompts.path={path!r}: unknown format {p.suffix!r}; use .jsonl, .parquet or a datasets "
                      "directory")


class FilePrompts:
    """The rows of a file, split into train and held-out, rendered as Prompts."""

    def __init__(self, config: FilePromptsConfig, tokenizer: Any, seed: int) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.seed = seed
        rows = read_rows(config.path, config.split)
        self._check_columns(rows, config.path)
        if config.held_out_path:
            held = read_rows(config.held_out_path, config.split)
            self._check_columns(held, config.held_out_path)
            self.train_rows, self.held_rows = rows, held
        else:
            key = self._key
            self.train_rows = [r for r in rows if not in_held_out_bucket(key(r), config.held_out_fraction)]
            self.held_rows = [r for r in rows if in_held_out_bucket(key(r), config.held_out_fraction)]
        self._orders: dict[int, list[int]] = {}
        if not self.train_rows:
            raise ConfigError(f"prompts.path={config.path!r}: no training rows left after the held-out split "
                              f"({len(rows)} rows, held_out_fraction={config.held_out_fraction}); lower it")

    def _key(self, row: dict) -> str:
        value = row[self.config.prompt_column]
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    def _check_columns(self, rows: list[dict], path: str) -> None:
        c = self.config
        if not rows:
            raise ConfigError(f"{path}: no rows; give a file with at least one row")
        needed = [c.prompt_column, *([c.answer_column] if c.answer_column else []), *c.metadata_columns]
        for n, row in enumerate(rows):
            missing = [col for col in needed if col not in row]
            if missing:
                raise ConfigError(f"{path}: row {n} has no column(s) {missing}; it has {sorted(row)}. Map them with "
                                  "--set prompts.prompt_column=... / prompts.answer_column=... / metadata_columns")

    def _prompt(self, row: dict, prompt_id: str) -> Prompt:
        c = self.config
        metadata = {col: row[col] for col in c.metadata_columns}
        if c.answer_column:
            metadata["answer"] = row[c.answer_column]
        return make_prompt(self.tokenizer, prompt_id, row[c.prompt_column], metadata, c.use_chat_template)

    def train_batch(self, step: int, num_prompts: int) -> list[Prompt]:
        n = len(self.train_rows)
        out = []
        for position in range(step * num_prompts, (step + 1) * num_prompts):
            epoch, index = divmod(position, n)
            order = self._order(epoch)
            out.append(self._prompt(self.train_rows[order[index]], f"train/{epoch}.{order[index]}"))
        return out

    def resample_batch(self, step: int, start: int, num_prompts: int) -> list[Prompt]:
        """DAPO's extra prompts for `step` (rl_platform/tasks/sources.py, PromptSource.resample_batch): rows
        [start, start + num_prompts) of a permutation of the training rows seeded by (seed, step), cycling when
        the stream is longer than the file. The training stream cannot lend them: its batch for a step is fixed
        by (step, batch size), so rows taken from it would be trained twice. A row of the step's own batch can
        come back (chance ~ batch / rows); its id differs, so its samples do too."""
        n = len(self.train_rows)
        order = list(range(n))
        random.Random(f"{self.seed}:file-resample:{step}").shuffle(order)
        return [self._prompt(self.train_rows[order[i % n]], f"train/r{step}.{i}")
                for i in range(start, start + num_prompts)]

    def _order(self, epoch: int) -> list[int]:
        """The seeded permutation of the training rows for pass `epoch`."""
        if epoch not in self._orders:
            order = list(range(len(self.train_rows)))
            random.Random(f"{self.seed}:file-prompts:{epoch}").shuffle(order)
            self._orders = {epoch: order}  # batches walk forward: keep only the current pass
        return self._orders[epoch]

    def held_out(self, num_prompts: int) -> list[Prompt]:
        rows = self.held_rows[:num_prompts]
        return [self._prompt(row, f"validation/{i}") for i, row in enumerate(rows)]
