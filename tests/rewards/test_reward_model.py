"""The learned reward: batched scoring from a HF directory, weight-hash versioning, and training with TRL."""

from __future__ import annotations

import shutil

import pytest

from rewards.reward_model import RewardModelConfig
from rewards.train_rm import CORRUPTIONS, LoraSettings, TrainRewardModelConfig, preference_pairs, train_reward_model
from rl_platform.config import ConfigError
from rl_platform.tasks.arithmetic import extract_answer, make_problem

from .conftest import GOOD, sample


def test_scores_a_batch_larger_than_batch_size_deterministically(tiny_reward_model_dir):
    scorer = RewardModelConfig(path=tiny_reward_model_dir, batch_size=3).build()
    samples = [sample(GOOD[: 10 + i]) for i in range(7)]
    first = scorer.score(samples)
    assert len(first) == 7 and not any(r.failed for r in first)
    assert [r.value for r in first] == pytest.approx([r.value for r in scorer.score(samples)])
    # batching (and its padding) must not change a sample's score
    one_by_one = [scorer.score([s])[0].value for s in samples]
    assert [r.value for r in first] == pytest.approx(one_by_one, abs=1e-5)
    assert first[0].reward_name == "reward_model"


def test_version_is_a_hash_of_the_weights(tiny_reward_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "rm_copy"
    shutil.copytree(tiny_reward_model_dir, copy)
    same = RewardModelConfig(path=copy).build().version
    assert same == RewardModelConfig(path=tiny_reward_model_dir).build().version
    (copy / "train_metrics.json").write_text("{}")  # a report beside the weights changes nothing
    assert RewardModelConfig(path=copy).build().version == same
    weights = load_file(copy / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + torch.ones_like(weights[name]) * 1e-3
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert RewardModelConfig(path=copy).build().version != same


def test_missing_model_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        RewardModelConfig(path=tmp_path / "nothing").build()


def test_corruptions_make_a_different_worse_solution_in_the_same_format():
    import random

    rng = random.Random(0)
    for _ in range(200):
        problem = make_problem(rng, max_digits=3)
        for name, corrupt in CORRUPTIONS.items():
            rejected = corrupt(problem, rng)
            assert rejected != problem.solution and rejected.count("####") == 1
            # step_only keeps the right answer under wrong working; every other kind changes the answer
            assert (extract_answer(rejected) == problem.answer) == (name == "step_only"), (name, rejected)


def test_eval_pairs_never_share_a_prompt_with_training():
    train = preference_pairs(300, seed=0, max_digits=2)
    held_out = preference_pairs(100, seed=1, max_digits=2, exclude_prompts=frozenset(r["prompt"] for r in train))
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}


# The budget measured on the shared 2-core dev machine: 77.7% held-out accuracy (answer_line 72.9%, step_only
# 81.9%) after 400 steps: 30 s on a quiet machine, ~210 s under load. The contradiction corruptions are what a model
# of 100k params finds in this budget; the self-consistent kinds need the default run (rewards/train_rm.py).
SMALL_BUDGET = dict(num_train_pairs=3000, num_eval_pairs=300, max_digits=3, hidden_size=64, num_layers=2,
                    num_heads=4, intermediate_size=128, max_steps=400, batch_size=32, learning_rate=3e-3,
                    num_threads=1, corruptions=("answer_line", "step_only"))


@pytest.mark.slow
def test_training_reaches_60_percent_held_out_pairwise_accuracy(tmp_path):
    out = tmp_path / "rm"
    metrics = train_reward_model(TrainRewardModelConfig(output_dir=out, **SMALL_BUDGET))
    assert metrics["reward_model/eval_pairwise_accuracy"] > 0.6, metrics
    scorer = RewardModelConfig(path=out, batch_size=16).build()
    results = scorer.score([sample(GOOD), sample(GOOD.replace("433", "434"))])
    assert not any(r.failed for r in results)


@pytest.mark.slow
def test_lora_training_saves_a_plain_loadable_model(tmp_path):
    out = tmp_path / "rm_lora"
    budget = {**SMALL_BUDGET, "max_steps": 20, "num_train_pairs": 200, "num_eval_pairs": 50}
    metrics = train_reward_model(TrainRewardModelConfig(output_dir=out, lora=LoraSettings(rank=4), **budget))
    assert 0.0 <= metrics["reward_model/eval_pairwise_accuracy"] <= 1.0
    assert not (out / "adapter_config.json").exists()  # merged: the scorer needs no peft
    assert not RewardModelConfig(path=out).build().score([sample()])[0].failed
