"""jobs.compare's table rules and the base-model cache key (everything that changes the weights, nothing else)."""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser

import pytest

from jobs.base_model import BASE_MODEL_CODE_VERSION, cache_dir_for, cache_key
from jobs.compare import compare, final_value, load_run, main
from jobs.recipes.pretrain import pretrain_tiny
from jobs.rl_config import BaseModelConfig


def _write_run(path, steps, routing_replay, eval_values):
    path.mkdir(parents=True)
    rows = [{"step": s, "reward/mean": 0.1 * s, "moe/route_mismatch": 0.01} for s in range(1, steps + 1)]
    rows += [{"step": s, "eval/pass_rate": v} for s, v in eval_values]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"recipe": "grpo_smoke", "config": {"learner": {"routing_replay": routing_replay, "bf16": False},
                                                 "run": {"run_dir": str(path)}}}
    (path / "config.json").write_text(json.dumps(config))


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_final_metrics_take_the_last_evaluation_and_the_last_quarter_of_steps(tmp_path):
    _write_run(tmp_path / "a", steps=8, routing_replay="R3", eval_values=[(0, 0.5), (8, 0.7)])
    run = load_run(tmp_path / "a", "a")
    assert final_value(run, "eval/pass_rate") == 0.7
    assert final_value(run, "reward/mean") == pytest.approx((0.7 + 0.8) / 2)  # steps 7 and 8
    assert final_value(run, "train/loss") != final_value(run, "train/loss")  # never logged: nan


def test_comparison_page_lists_runs_differences_and_embeds_overlaid_curves(tmp_path):
    _write_run(tmp_path / "r3", steps=4, routing_replay="R3", eval_values=[(4, 0.7)])
    _write_run(tmp_path / "off", steps=4, routing_replay="off", eval_values=[(4, 0.6)])
    page = compare([tmp_path / "r3", tmp_path / "off"], tmp_path / "cmp")
    text = page.read_text()
    assert "| learner.routing_replay | `\"R3\"` | `\"off\"` |" in (tmp_path / "cmp" / "compare.md").read_text()
    assert "learner.bf16" not in text  # equal in both runs
    parser = _Images()
    parser.feed(text)
    assert len(parser.sources) == len(list((tmp_path / "cmp").glob("*.png"))) >= 2
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)


def test_compare_needs_two_run_directories(tmp_path, capsys):
    _write_run(tmp_path / "a", steps=2, routing_replay="R3", eval_values=[])
    assert main([str(tmp_path / "a")]) == 2
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "a"), str(tmp_path / "not_a_run")])
    assert exc.value.code == 2 and "has no metrics.jsonl" in capsys.readouterr().err


def _key_dir(config) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(cache_key(config), sort_keys=True).encode()).hexdigest()


def test_cache_key_covers_what_changes_the_weights_and_nothing_else():
    base = pretrain_tiny()
    key = cache_key(base)
    assert key["code_version"] == BASE_MODEL_CODE_VERSION and key["torch"] and key["deepspeed"]
    assert key["config"]["loop.num_steps"] == 900 and "loop.max_minutes" not in key["config"]
    same = [dataclasses.replace(base, loop=dataclasses.replace(base.loop, max_minutes=0.0, log_every=1))]
    different = [dataclasses.replace(base, loop=dataclasses.replace(base.loop, num_steps=899)),
                 dataclasses.replace(base, run=dataclasses.replace(base.run, seed=1)),
                 dataclasses.replace(base, model=dataclasses.replace(base.model, top_k=3))]
    assert all(_key_dir(c) == _key_dir(base) for c in same)
    assert len({_key_dir(c) for c in [base, *different]}) == 4


def test_cache_folder_is_named_after_recipe_and_key(tmp_path):
    root, config = cache_dir_for(BaseModelConfig(pretrain_recipe="pretrain_tiny", cache_dir=str(tmp_path)))
    assert root.parent == tmp_path and root.name == f"pretrain_tiny-{_key_dir(config)[:10]}"


def test_pretrain_overrides_pick_their_own_cache_folder():
    default, _ = cache_dir_for(BaseModelConfig())
    seeded, config = cache_dir_for(BaseModelConfig(pretrain_overrides=("run.seed=1",)))
    assert config.run.seed == 1 and seeded != default
    assert seeded.name == f"pretrain_tiny-{_key_dir(dataclasses.replace(pretrain_tiny(), run=config.run))[:10]}"
