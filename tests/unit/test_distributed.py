"""Token-balanced shards, the rank-count check on resume, and the settings the multi-rank learner refuses."""

import json

import pytest

from rl_platform.checkpointing import CheckpointError
from rl_platform.config import ConfigError
from rl_platform.distributed import RANKS_FILE, RankGroup, balanced_shards, check_rank_count, gather_rows
from rl_platform.learner import LearnerConfig
from rl_platform.lora import LoRAConfig


def test_shards_cover_every_row_once_and_balance_tokens():
    lengths = [30, 4, 6, 3, 9, 5, 7, 4, 12, 5]
    shards = balanced_shards(lengths, 2)
    assert sorted(i for s in shards for i in s) == list(range(len(lengths)))
    assert all(s == sorted(s) for s in shards)
    loads = [sum(lengths[i] for i in s) for s in shards]
    assert max(loads) - min(loads) <= max(lengths)  # greedy longest-first bound
    assert loads == [43, 42]
    assert balanced_shards(lengths, 2) == shards  # every process computes the same split


def test_more_ranks_than_rows_leaves_empty_shards():
    assert balanced_shards([5, 3], 3) == [[0], [1], []]


def test_world_of_one_collectives_are_identities():
    ranks = RankGroup()
    assert ranks.sum([3, 4.5]) == [3.0, 4.5]
    assert ranks.max_int(7) == 7 and ranks.gather("x") == ["x"] and ranks.broadcast(2) == 2
    assert ranks.sum_metrics({"a": 1.0}, ["a"]) == {"a": 1.0}
    assert gather_rows(ranks, [None]) == [None]


def test_resume_with_another_rank_count_says_what_to_do(tmp_path):
    (tmp_path / RANKS_FILE).write_text(json.dumps({"num_ranks": 2, "zero_stage": 3}))
    check_rank_count(tmp_path, 2, 3)
    with pytest.raises(CheckpointError, match=r"learner.num_ranks=2 learner.zero_stage=3"):
        check_rank_count(tmp_path, 4, 3)
    with pytest.raises(CheckpointError, match="ZeRO-3"):
        check_rank_count(tmp_path, 2, 1)
    check_rank_count(tmp_path / "old", 1, 2)  # checkpoints from before the file existed are one rank's


def test_unsupported_combinations_are_refused():
    with pytest.raises(ConfigError, match="learner.lora.enabled"):
        LearnerConfig(num_ranks=2, lora=LoRAConfig(enabled=True))
    with pytest.raises(ConfigError, match="LearnerConfig.zero_stage"):
        LearnerConfig(zero_stage=4)
    with pytest.raises(ConfigError, match="LearnerConfig.num_ranks"):
        LearnerConfig(num_ranks=0)
    assert LearnerConfig(num_ranks=2, zero_stage=3).num_ranks == 2


def test_dry_run_plan_counts_every_rank():
    import argparse
    import dataclasses

    from jobs.recipes.rl import grpo_smoke
    from jobs.rl import plan

    config = grpo_smoke()
    config.learner = dataclasses.replace(config.learner, num_ranks=2)
    text = "\n".join(plan("grpo_smoke", config, argparse.Namespace(address=None)))
    assert "2 learner ranks: DeepSpeed ZeRO-2" in text and "0.5 CPU each" in text
    assert "1.6 logical CPUs requested" in text  # engine 0.5 + reward 0.1 + 2 ranks x 0.5
