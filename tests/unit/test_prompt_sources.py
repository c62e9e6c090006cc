"""Prompt sources picked by config (file, reasoning_gym, arithmetic) and the rewards that score them."""

import json

import pytest

from jobs.recipes.byo import RG_MIX, _chat_user_turn
from jobs.rl_config import RLJobConfig
from rewards.answer_match import AnswerMatchConfig
from rewards.reasoning_gym import ReasoningGymRewardConfig
from rl_platform.config import ConfigError, apply_overrides
from rl_platform.model.tokenizer import train_tokenizer
from rl_platform.tasks.file_prompts import FilePromptsConfig
from rl_platform.tasks.reasoning_gym_prompts import ReasoningGymPromptsConfig, corpus_documents
from rl_platform.types import RewardInput

ROWS = [{"question": f"What is {i} plus {i}?", "solution": str(2 * i), "level": i % 3} for i in range(200)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["What is 12 plus 3? Q: A: legs words sort Calculate"] * 20, vocab_size=300)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("data")
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), root / "rows.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(root / "rows_ds"))
    return root


def _file_config(path, **kw):
    return FilePromptsConfig(path=str(path), prompt_column="question", answer_column="solution",
                             metadata_columns=("level",), **kw)


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.parquet", "rows_ds"])
def test_file_formats_give_the_same_split_and_mapped_columns(data_files, tokenizer, name):
    source = _file_config(data_files / name).build(tokenizer, seed=3)
    train, held = source.train_rows, source.held_rows
    assert len(train) + len(held) == len(ROWS) and 5 <= len(held) <= 40  # ~10 % by prompt hash
    assert not {r["question"] for r in train} & {r["question"] for r in held}
    prompt = source.train_batch(0, 1)[0]
    assert prompt.text.startswith("Q: What is") and prompt.text.endswith("\nA:")  # the chat template
    assert prompt.token_ids[0] == tokenizer.bos_token_id
    row = next(r for r in ROWS if r["question"] in prompt.text)
    assert prompt.metadata == {"answer": row["solution"], "level": row["level"]}


def test_training_order_is_a_seeded_shuffle_that_covers_every_row_once_per_pass(data_files, tokenizer):
    source = _file_config(data_files / "rows.jsonl").build(tokenizer, seed=3)
    n = len(source.train_rows)
    first_pass = [p.prompt_id for step in range(n // 4) for p in source.train_batch(step, 4)]
    assert len(set(first_pass)) == len(first_pass)  # no repeats within a pass
    again = _file_config(data_files / "rows.jsonl").build(tokenizer, seed=3)
    other = _file_config(data_files / "rows.jsonl").build(tokenizer, seed=4)
    assert [p.prompt_id for p in again.train_batch(5, 4)] == [p.prompt_id for p in source.train_batch(5, 4)]
    assert [p.prompt_id for p in other.train_batch(0, 8)] != [p.prompt_id for p in source.train_batch(0, 8)]


def test_a_missing_column_is_named_with_the_columns_the_file_has(data_files, tokenizer):
    with pytest.raises(ConfigError, match=r"no column\(s\) \['prompt', 'answer'\]; it has \['level', 'question'"):
        FilePromptsConfig(path=str(data_files / "rows.jsonl")).build(tokenizer, seed=0)


def test_prompt_sources_are_picked_by_registered_name():
    config = apply_overrides(RLJobConfig(), ["prompts=reasoning_gym", "prompts.tasks=leg_counting,basic_arithmetic",
                                             "reward=reasoning_gym", "reward.answer_format=answer_tag"])
    assert config.prompts.tasks == ("leg_counting", "basic_arithmetic")
    with pytest.raises(ConfigError, match="not a registered PromptSourceConfig"):
        apply_overrides(RLJobConfig(), ["prompts=huggingface_hub"])


def test_reasoning_gym_held_out_is_disjoint_balanced_and_scored_by_the_task_verifier(tokenizer):
    source = RG_MIX.build(tokenizer, seed=0)
    held = source.held_out(30)
    assert [p.metadata["task"] for p in held[:3]] == list(RG_MIX.tasks)
    train = [p for step in range(10) for p in source.train_batch(step, 16)]
    assert not {p.metadata["rg_entry"]["question"] for p in held} & {p.metadata["rg_entry"]["question"] for p in train}
    assert [p.text for p in source.train_batch(3, 4)] == [p.text for p in RG_MIX.build(tokenizer, 0).train_batch(3, 4)]
    scorer = ReasoningGymRewardConfig().build()
    samples = [RewardInput(prompt=p.text, completion=f" {p.metadata['answer']}\nmore", metadata=p.metadata)
               for p in held[:6]]
    wrong = [RewardInput(prompt=s.prompt, completion=" no idea", metadata=s.metadata) for s in samples]
    assert [r.value for r in scorer.score(samples)] == [1.0] * 6
    assert [r.value for r in scorer.score(wrong)] == [0.0] * 6
    missing = scorer.score([RewardInput(prompt="q", completion="1", metadata={})])[0]
    assert missing.failed and "no_reference" in missing.reason


def test_an_unknown_task_or_option_fails_before_anything_runs(tokenizer):
    with pytest.raises(ConfigError, match="not a reasoning-gym task"):
        ReasoningGymPromptsConfig(tasks=("no_such_task",)).build(tokenizer, 0)
    with pytest.raises(ConfigError, match="task_options"):
        ReasoningGymPromptsConfig(tasks=("leg_counting",), task_options={"basic_arithmetic": {}})


def test_the_pretraining_corpus_is_the_rl_prompt_plus_the_answer_and_never_held_out(tokenizer):
    docs = corpus_documents(RG_MIX, seed=0, num_documents=60, render=_chat_user_turn)
    held = RG_MIX.build(tokenizer, seed=0).held_out(60)
    for prompt in held[:3]:
        assert prompt.text == _chat_user_turn(prompt.metadata["rg_entry"]["question"])  # same rendering
    held_texts = {p.text for p in held}
    assert all(d.rsplit(" ", 1)[0] not in held_texts for d in docs)
    assert all(d.startswith("Q: ") and "\nA: " in d for d in docs)


def test_answer_match_scores_the_extracted_answer_and_fails_without_a_reference():
    scorer = AnswerMatchConfig(answer_format="answer_tag").build()
    out = scorer.score([RewardInput(prompt="", completion="think <answer> 42 </answer>", metadata={"answer": "42"}),
                        RewardInput(prompt="", completion="<answer>41</answer>", metadata={"answer": 42}),
                        RewardInput(prompt="", completion="<answer>41</answer>", metadata={})])
    assert [o.value for o in out] == [1.0, 0.0, None] and out[2].failed


def test_held_out_pass_rate_is_also_reported_per_task_and_tabled_in_the_report():
    import dataclasses

    from jobs.rl_report import task_table
    from rl_platform.controller import SamplingConfig
    from rl_platform.evaluation import evaluate_pass_rate
    from tests.fakes import FakeGenerator, FakeScorer, prompts

    tagged = [dataclasses.replace(p, prompt_id=f"{p.prompt_id}", metadata={"task": task})
              for p, task in zip(prompts(0, 3), ["a", "b", "a"], strict=True)]
    flat_b = FakeScorer(flat_prompts=frozenset({tagged[1].prompt_id}))  # task b never passes
    metrics = evaluate_pass_rate(FakeGenerator(), flat_b, tagged, SamplingConfig(num_samples_per_prompt=3),
                                 pass_threshold=1.0, by="task")
    assert metrics["eval/pass_rate/a"] == pytest.approx(1 / 3) and metrics["eval/pass_rate/b"] == 0.0
    table = task_table([{"eval/pass_rate/a": 0.1, "eval/pass_rate/b": 0.0}], metrics)
    assert "| a | 0.100 | 0.333 |" in table[-2] and table[-1].startswith("| b | 0.000 | 0.000 |")


@pytest.mark.parametrize("kind", ["arithmetic", "file", "reasoning_gym"])
def test_resample_stream_is_prefix_stable_reproducible_and_never_reuses_a_batch_id(kind, data_files, tokenizer):
    # DAPO refills take the next prompts of the step's re-sample stream round after round; the training stream
    # cannot lend them (the file source's batch of a step is fixed by step * batch size, so train_batch(step, n + k)
    # [n:] would be rows of later steps' batches)
    from rl_platform.tasks.prompts import ArithmeticPromptsConfig

    config = {"arithmetic": ArithmeticPromptsConfig(), "file": _file_config(data_files / "rows.jsonl"),
              "reasoning_gym": RG_MIX}[kind]
    source, again = config.build(tokenizer, seed=3), config.build(tokenizer, seed=3)
    ids = [p.prompt_id for p in source.resample_batch(2, 0, 5)]
    assert [p.prompt_id for p in source.resample_batch(2, 0, 2) + source.resample_batch(2, 2, 3)] == ids
    assert [p.text for p in again.resample_batch(2, 1, 3)] == [p.text for p in source.resample_batch(2, 0, 5)[1:4]]
    assert len(set(ids)) == 5 and [p.prompt_id for p in source.resample_batch(3, 0, 5)] != ids
    batch_ids = {p.prompt_id for step in range(4) for p in source.train_batch(step, 8)}
    assert not batch_ids & {p.prompt_id for step in range(4) for p in source.resample_batch(step, 0, 8)}
