"""Bring-your-own recipes: RL on a user's Hugging Face MoE directory, and reasoning-gym end to end on CPU
(docs/bring_your_own_model.md)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from jobs.recipes import recipe
from jobs.rl_config import RLJobConfig
from pretrain.config import PretrainJobConfig, PretrainLoopConfig
from pretrain.data.pipeline import PretrainDataConfig
from rewards.reasoning_gym import ReasoningGymRewardConfig
from rl_platform.controller import ControllerConfig, SamplingConfig
from rl_platform.model.tokenizer import CHAT_TEMPLATE
from rl_platform.tasks.reasoning_gym_prompts import ReasoningGymPromptsConfig, corpus_documents

logger = logging.getLogger(__name__)

CORPUS_DIR = Path("models") / "corpora"
"""Where generated task corpora are cached (beside the cached base models)."""


@recipe("rl")
def grpo_hf() -> RLJobConfig:
    """GRPO + R3 on your own HF MoE directory (Qwen3MoeForCausalLM, Ernie4_5_MoeForCausalLM, OlmoeForCausalLM):
    `--set base_model.path=<dir>`; its tokenizer and chat template are used, and the policy is exported in
    the same architecture. Prompts: reasoning-gym basic_arithmetic with answers in <answer></answer>, scored by
    the task's own verifier; point it at your data with `--set prompts=file --set prompts.path=...`."""
    config = RLJobConfig(
        sampling=SamplingConfig(num_samples_per_prompt=8, max_tokens=256, temperature=1.0),
        loop=ControllerConfig(num_steps=20, num_prompts_per_step=8),
        prompts=ReasoningGymPromptsConfig(
            tasks=("basic_arithmetic",), instruction=" Put only the final answer in <answer></answer>."),
        reward=ReasoningGymRewardConfig(answer_format="answer_tag"),
    )
    config.base_model.pretrain_recipe = ""  # no fallback: the point is the user's own model
    config.learner.routing_replay = "R3"
    config.learner.optim.lr = 1e-6  # pretrained checkpoints move at 1e-6..1e-5 (the tiny demo bases take 1e-4)
    config.learner.micro_batch_size = 8
    config.rollout.max_model_len = 1024
    config.eval.num_prompts = 64
    config.eval.max_tokens = 256
    config.eval.every_steps = 0
    return config


@recipe("rl")
def grpo_hf_smoke() -> RLJobConfig:
    """Two R3 steps on a tiny HF directory (`--set base_model.path=<dir>`, e.g. one written by
    rl_platform.model.tiny_hf.build_tiny_hf): for tests and for checking a new checkpoint end to end."""
    config = grpo_hf()
    config.sampling = SamplingConfig(num_samples_per_prompt=4, max_tokens=12)
    config.loop = ControllerConfig(num_steps=2, num_prompts_per_step=4)
    config.reward = ReasoningGymRewardConfig(answer_format="first_line")
    config.learner.optim.lr = 2e-4  # two steps must visibly move a random model
    config.eval.num_prompts = 4
    config.eval.max_tokens = 12
    config.eval.num_samples = 0
    config.checkpoint_every = 0
    config.resources.num_reward_workers = 1
    config.rollout.max_model_len = 256
    return config


RG_MIX = ReasoningGymPromptsConfig(
    tasks=("basic_arithmetic", "leg_counting", "word_sorting"),
    task_options={
        "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                             "operators": ["+", "-"], "allow_parentheses": False, "allow_negation": False},
        "leg_counting": {"min_animals": 1, "max_animals": 1, "max_instances": 6},
        "word_sorting": {"min_words": 2, "max_words": 2, "min_word_length": 3, "max_word_length": 6},
    },
)
"""Three reasoning-gym tasks a ~2 M-parameter model learns in minutes: two-term +/- arithmetic with 1-2 digit
operands, the legs of 1-6 animals of one kind, and sorting two short words by ASCII order."""


def _chat_user_turn(question: str) -> str:
    """The project tokenizer's chat template applied to one user message (what the RL prompt will be)."""
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # transformers' settings
    return env.from_string(CHAT_TEMPLATE).render(messages=[{"role": "user", "content": question}],
                                                 eos_token="</s>", add_generation_prompt=True)


def reasoning_gym_corpus(mix: ReasoningGymPromptsConfig, seed: int, num_documents: int) -> str:
    """A JSONL corpus ({"text": ...}) of training-side instances of `mix` in the RL prompt's exact format,
    written once under models/corpora/ (about 1.5 ms per document) and reused; returns its path."""
    key = json.dumps({"mix": [mix.tasks, mix.task_options, mix.held_out_fraction, mix.instruction], "seed": seed,
                      "n": num_documents, "template": CHAT_TEMPLATE}, sort_keys=True)
    path = CORPUS_DIR / f"reasoning_gym-{hashlib.sha1(key.encode()).hexdigest()[:10]}.jsonl"
    if not path.exists():
        logger.info("writing %d reasoning-gym documents to %s", num_documents, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        docs = corpus_documents(mix, seed, num_documents, _chat_user_turn)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        tmp.rename(path)
    return str(path)


@recipe("pretrain")
def pretrain_rg_tiny() -> PretrainJobConfig:
    """The tiny elastic MoE pretrained on a reasoning-gym task mix (RG_MIX, 20k generated training-side
    instances, written once to models/corpora/): the base of grpo_rg_tiny. 500 steps, ~5 min on 2 idle cores."""
    from jobs.recipes.pretrain import pretrain_tiny

    config = pretrain_tiny()
    config.data = PretrainDataConfig(seq_len=256, tokenizer_vocab_size=512, arithmetic_weight=0.0, story_weight=0.0,
                                     glyph_weight=0.0, user_weight=1.0,
                                     user_files=(reasoning_gym_corpus(RG_MIX, seed=0, num_documents=20_000),))
    config.loop = PretrainLoopConfig(num_steps=500, micro_batch_size=8, grad_accum_steps=2, max_minutes=15.0)
    return config


@recipe("rl")
def grpo_rg_tiny() -> RLJobConfig:
    """reasoning-gym end to end on CPU: pretrain the tiny base on RG_MIX (pretrain_rg_tiny, cached), then GRPO
    + R3 on held-out-disjoint instances of the same tasks, scored by each task's own verifier; the report
    has held-out pass@1 per task before and after."""
    config = RLJobConfig(
        sampling=SamplingConfig(num_samples_per_prompt=8, max_tokens=16, temperature=1.0),
        loop=ControllerConfig(num_steps=40, num_prompts_per_step=32),
        prompts=RG_MIX,
        reward=ReasoningGymRewardConfig(answer_format="first_line"),
    )
    config.base_model.pretrain_recipe = "pretrain_rg_tiny"
    config.learner.optim.lr = 1e-4
    config.learner.loss.kl_coef = 0.05
    config.learner.micro_batch_size = 32
    config.eval.num_prompts = 240  # 80 per task
    config.eval.max_tokens = 16
    config.eval.every_steps = 0  # before and after only
    return config
