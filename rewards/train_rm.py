"""Trains a tiny reward model on arithmetic preference pairs with TRL's RewardTrainer.

    arithmetic problems --(chosen: reference worked solution, rejected: a corrupted copy)--> pairs
    pairs -> byte-level BPE tokenizer (digits split) -> random-init LlamaForSequenceClassification
          -> trl.RewardTrainer (Bradley-Terry loss; optional LoRA via peft) -> save_pretrained(output_dir)
          -> held-out pairwise accuracy, measured through the `reward_model` scorer (the path RL uses)

Corruptions (one per rejected answer, drawn uniformly from `TrainRewardModelConfig.corruptions`):
  answer_line:         only the `#### N` line has a digit changed; the working (`so M`) is still right,
                       so the answer contradicts the solution's own working;
  step_only:           one column's result digit changed; the final answer is left right, so the
                       working contradicts the answer (a process error);
  final_answer:        steps right, both `so N` and `#### N` changed together;
  step_digit:          one column's result digit changed and the answer changed to agree with it: a
                       self-consistent wrong solution that only checking the column arithmetic catches.
The default uses all four. The contradictory kinds are what a randomly initialised model finds first;
the self-consistent ones need real arithmetic and stay near chance in a CPU budget.

Measured on the shared 2-core dev machine (3-digit problems, 400 held-out pairs with unseen prompts):
  defaults (99k params, 1500 steps, all four kinds)   63.3% (answer_line 66.7, step_only 72.2,
                                                      final_answer 63.5, step_digit 52.3), 325 s
  same, seed=1                                        66.3% (step_digit 54.6), 243 s
  same, max_digits=2                                  64.8% (step_digit 58.6), 223 s
  same, 3000 steps on 8000 pairs                      60.3%  (longer did not help)
  hidden 128 (362k params), lr 2e-3, 1000 steps       45.5%  (did not converge; smaller is better here)
  answer_line + step_only only, 400 steps (the test)  77.7% on 300 pairs, 30 s quiet / ~210 s loaded

No hub model exists on this machine, so the base model is randomly initialised; the numbers this returns
measure the recipe end to end, not a production reward model. The CLI is `jobs/train_reward_model.py`.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rl_platform.config import check, config_to_dict
from rl_platform.tasks.arithmetic import ArithmeticProblem, make_problem

logger = logging.getLogger(__name__)

_STEP_RESULT_RE = re.compile(r"=(\d+)")


def _change_digit(number: int, rng: random.Random) -> int:
    """`number` with one digit replaced by a different one (never a leading zero, sign kept)."""
    text = str(abs(number))
    while True:
        pos = rng.randrange(len(text))
        digit = str(rng.choice([d for d in range(10) if str(d) != text[pos]]))
        if pos == 0 and digit == "0" and len(text) > 1:
            continue
        changed = int(text[:pos] + digit + text[pos + 1:])
        return -changed if number < 0 else changed


def _with_answer(solution: str, old: int, new: int) -> str:
    return solution.replace(f"; so {old}\n#### {old}", f"; so {new}\n#### {new}")


def corrupt_final_answer(problem: ArithmeticProblem, rng: random.Random) -> str:
    return _with_answer(problem.solution, problem.answer, _change_digit(problem.answer, rng))


def corrupt_step_digit(problem: ArithmeticProblem, rng: random.Random) -> str:
    """Changes the units digit of one column's result and the matching digit of the final answer."""
    body, _, _ = problem.solution.partition("; so ")
    steps = body.split("; ")
    column = rng.randrange(len(steps))
    match = _STEP_RESULT_RE.search(steps[column])
    assert match is not None, steps[column]  # every worked step is "<expr>=<int>..."
    result = match.group(1)
    new_units = rng.choice([d for d in "0123456789" if d != result[-1]])
    steps[column] = steps[column][:match.end() - 1] + new_units + steps[column][match.end():]
    answer_text = str(abs(problem.answer)).zfill(len(steps))
    pos = len(answer_text) - 1 - column
    new_answer = int(answer_text[:pos] + new_units + answer_text[pos + 1:])
    new_answer = -new_answer if problem.answer < 0 else new_answer
    if new_answer == problem.answer:  # only when stripping a leading zero hid the change; fall back
        return corrupt_final_answer(problem, rng)
    return "; ".join(steps) + f"; so {new_answer}\n#### {new_answer}"


def corrupt_answer_line(problem: ArithmeticProblem, rng: random.Random) -> str:
    wrong = _change_digit(problem.answer, rng)
    return problem.solution.replace(f"\n#### {problem.answer}", f"\n#### {wrong}")


def corrupt_step_only(problem: ArithmeticProblem, rng: random.Random) -> str:
    body, _, tail = problem.solution.partition("; so ")
    steps = body.split("; ")
    column = rng.randrange(len(steps))
    match = _STEP_RESULT_RE.search(steps[column])
    assert match is not None, steps[column]
    units = match.group(1)[-1]
    steps[column] = steps[column][:match.end() - 1] + rng.choice([d for d in "0123456789" if d != units]) \
        + steps[column][match.end():]
    return "; ".join(steps) + "; so " + tail


CORRUPTIONS = {
    "answer_line": corrupt_answer_line,
    "step_only": corrupt_step_only,
    "final_answer": corrupt_final_answer,
    "step_digit": corrupt_step_digit,
}
"""Name -> function(problem, rng) -> a worse solution; see the module docstring."""

Corruption = Literal["answer_line", "step_only", "final_answer", "step_digit"]


def preference_pairs(num_pairs: int, seed: int, max_digits: int, exclude_prompts: frozenset[str] = frozenset(),
                     corruptions: tuple[str, ...] = tuple(CORRUPTIONS)) -> list[dict[str, str]]:
    """`num_pairs` {prompt, chosen, rejected, corruption} rows, distinct prompts not in `exclude_prompts`."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude_prompts)
    attempts = 0
    while len(rows) < num_pairs:
        attempts += 1
        if attempts > 50 * num_pairs:
            raise ValueError(f"preference_pairs: only {len(rows)} distinct problems with max_digits={max_digits}"
                             f"; lower num_pairs ({num_pairs}) or raise max_digits")
        problem = make_problem(rng, max_digits=max_digits)
        if problem.prompt in seen:
            continue
        seen.add(problem.prompt)
        kind = rng.choice(corruptions)
        rows.append({"prompt": problem.prompt, "chosen": problem.solution,
                     "rejected": CORRUPTIONS[kind](problem, rng), "corruption": kind})
    return rows


@dataclass(kw_only=True, slots=True)
class LoraSettings:
    """LoRA adapters (peft) instead of full fine-tuning; merged into the saved model.

    Example:
        LoraSettings(rank=8, alpha=16)
    """

    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self) -> None:
        check(self.rank > 0, "LoraSettings.rank", self.rank, "must be > 0", "give e.g. 8")


@dataclass(kw_only=True, slots=True)
class TrainRewardModelConfig:
    """Everything `train_reward_model` needs; the defaults are the measured run (module docstring).

    Example:
        train_reward_model(TrainRewardModelConfig(output_dir=Path("runs/rm"), max_steps=300))
    """

    output_dir: Path = Path("models/reward_model")
    """Where the HF model + tokenizer are saved (load with RewardModelConfig(path=output_dir))."""
    num_train_pairs: int = 4000
    num_eval_pairs: int = 400
    """Held-out pairs, with prompts disjoint from training, for the pairwise accuracy."""
    max_digits: int = 3
    corruptions: tuple[Corruption, ...] = ("answer_line", "step_only", "final_answer", "step_digit")
    """Kinds of rejected answers, drawn uniformly (module docstring)."""
    seed: int = 0
    vocab_size: int = 384
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_steps: int = 1500
    batch_size: int = 32
    """Pairs per optimizer step (the model sees 2x this many sequences)."""
    learning_rate: float = 3e-3
    max_length: int = 128
    """Tokens per sequence; a 3-digit problem with its working is ~40."""
    lora: LoraSettings | None = None
    num_threads: int | None = None
    """torch intra-op threads; None keeps torch's default."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Extra trl.RewardConfig keyword arguments (e.g. {"lr_scheduler_type": "constant"})."""

    def __post_init__(self) -> None:
        for name in ("num_train_pairs", "num_eval_pairs", "max_steps", "batch_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            check(value > 0, f"TrainRewardModelConfig.{name}", value, "must be > 0", "give a positive integer")
        check(self.hidden_size % self.num_heads == 0, "TrainRewardModelConfig.hidden_size", self.hidden_size,
              f"must be divisible by num_heads={self.num_heads}", "change hidden_size or num_heads")
        unknown = sorted(set(self.corruptions) - set(CORRUPTIONS))
        check(bool(self.corruptions) and not unknown, "TrainRewardModelConfig.corruptions", self.corruptions,
              f"must be a non-empty subset of {sorted(CORRUPTIONS)}", "drop the unknown names " + str(unknown))
        check(self.learning_rate > 0, "TrainRewardModelConfig.learning_rate", self.learning_rate, "must be > 0",
              "give e.g. 1e-3")


def _tiny_model(config: TrainRewardModelConfig, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, max_position_embeddings=max(256, config.max_length),
        num_labels=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, tie_word_embeddings=False,
    )
    return LlamaForSequenceClassification(model_config)


def _trl_args(config: TrainRewardModelConfig, trainer_dir: str) -> Any:
    from trl import RewardConfig as TrlRewardConfig

    # bf16 and gradient checkpointing are TRL's defaults; both only slow a 1M-param model down on CPU.
    return TrlRewardConfig(
        output_dir=trainer_dir, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        max_length=config.max_length, lr_scheduler_type="cosine", warmup_steps=max(1, config.max_steps // 20),
        logging_steps=max(1, config.max_steps // 10), save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, gradient_checkpointing=False, disable_tqdm=True, seed=config.seed,
        dataloader_num_workers=0, **config.extra,
    )


def pairwise_accuracy(scorer: Any, rows: list[dict[str, str]]) -> dict[str, float]:
    """Fraction of pairs where the scorer ranks chosen above rejected, overall and per corruption kind."""
    from rewards.base import RewardInput

    chosen = scorer.score([RewardInput(prompt=r["prompt"], completion=r["chosen"]) for r in rows])
    rejected = scorer.score([RewardInput(prompt=r["prompt"], completion=r["rejected"]) for r in rows])
    wins_by_kind: dict[str, list[bool]] = {}
    for row, good, bad in zip(rows, chosen, rejected, strict=True):
        if not (good.failed or bad.failed):
            wins_by_kind.setdefault(row["corruption"], []).append(good.value > bad.value)
    wins = [win for kind_wins in wins_by_kind.values() for win in kind_wins]
    metrics = {"reward_model/eval_pairwise_accuracy": sum(wins) / len(wins) if wins else float("nan"),
               "reward_model/eval_num_pairs": float(len(wins))}
    for kind, kind_wins in sorted(wins_by_kind.items()):
        metrics[f"reward_model/eval_pairwise_accuracy/{kind}"] = sum(kind_wins) / len(kind_wins)
    return metrics


def train_reward_model(config: TrainRewardModelConfig) -> dict[str, float]:
    """Builds pairs, trains, saves to `config.output_dir`, and returns metrics (`reward_model/*` keys)."""
    import torch
    from datasets import Dataset
    from trl import RewardTrainer

    from rewards.reward_model import RewardModelConfig
    from rewards.tokenizer import build_digit_tokenizer

    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    train_rows = preference_pairs(config.num_train_pairs, config.seed, config.max_digits,
                                  corruptions=config.corruptions)
    eval_rows = preference_pairs(config.num_eval_pairs, config.seed + 1, config.max_digits,
                                 exclude_prompts=frozenset(r["prompt"] for r in train_rows),
                                 corruptions=config.corruptions)
    corpus = (r["prompt"] + r[key] for r in train_rows for key in ("chosen", "rejected"))
    tokenizer = build_digit_tokenizer(corpus, vocab_size=config.vocab_size)
    model = _tiny_model(config, tokenizer)
    num_params = sum(p.numel() for p in model.parameters())
    peft_config = None
    if config.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="SEQ_CLS", r=config.lora.rank, lora_alpha=config.lora.alpha,
                                 target_modules=list(config.lora.target_modules), lora_dropout=0.0)
    # Trainer scratch (logs, would-be checkpoints) stays out of output_dir, whose files are the model.
    trainer_dir = tempfile.mkdtemp(prefix="train_rm_")
    columns = ("prompt", "chosen", "rejected")
    dataset = Dataset.from_list([{key: row[key] for key in columns} for row in train_rows])
    trainer = RewardTrainer(model=model, args=_trl_args(config, trainer_dir), train_dataset=dataset,
                            processing_class=tokenizer, peft_config=peft_config)
    try:
        train_output = trainer.train()
    finally:
        shutil.rmtree(trainer_dir, ignore_errors=True)
    trained = trainer.model
    if config.lora is not None:
        trained = trained.merge_and_unload()  # save a plain HF model: the scorer needs no peft
    config.output_dir.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(str(config.output_dir))
    tokenizer.save_pretrained(str(config.output_dir))
    train_seconds = time.perf_counter() - started

    scorer = RewardModelConfig(path=config.output_dir, timeout_s=None).build()
    metrics = {
        **pairwise_accuracy(scorer, eval_rows),
        "reward_model/train_loss": float(train_output.training_loss),
        "reward_model/num_params": float(num_params),
        "reward_model/train_seconds": train_seconds,
    }
    (config.output_dir / "train_metrics.json").write_text(json.dumps(
        {"metrics": metrics, "config": config_to_dict(config), "reward_version": scorer.version}, indent=2))
    logger.info("reward model saved to %s: %s", config.output_dir, metrics)
    return metrics
