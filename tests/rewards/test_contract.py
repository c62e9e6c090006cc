"""Every registered reward, in its default config, passes the same protocol checks.

A reward whose default needs a resource (a model directory, a server) gets it from RESOURCES; a newly
registered reward with neither a runnable default nor an entry here fails `test_every_reward_is_covered`.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from rewards.base import REWARDS, RewardConfig, RewardResult, Scorer
from rewards.code_verifier import PythonCodeVerifierConfig
from rewards.sandbox import SandboxConfig
from rewards.serve import create_app
from rewards.verifiers import ArithmeticVerifierConfig
from rl_platform.config import apply_overrides, config_to_dict

from .conftest import GOOD, sample, serve_in_thread

NAMES = sorted(RewardConfig.registry())
SAMPLES = [
    sample(GOOD, answer=433),
    sample(GOOD.replace("433", "434")),
    sample("", prompt=""),
    sample("garbage \u2603 " * 20, prompt="not a task", tests=["assert True"]),
    sample("def f():\n    return 1", tests=["assert f() == 1"]),
]


@pytest.fixture(scope="module")
def remote_url():
    with serve_in_thread(create_app(ArithmeticVerifierConfig().build())) as url:
        yield url


@pytest.fixture
def runnable(request, tiny_reward_model_dir, remote_url):
    """Name -> the registered default, with the resource it needs on this machine filled in."""
    resources = {
        "reward_model": {"path": tiny_reward_model_dir},
        "remote": {"url": remote_url},
        "python_code_verifier": {"sandbox": SandboxConfig(wall_time_s=3.0)},
    }

    def make(name: str) -> RewardConfig:
        return dataclasses.replace(REWARDS.get(name)(), **resources.get(name, {}))

    return make


def test_every_reward_is_covered():
    assert set(NAMES) >= {"arithmetic_verifier", "arithmetic_format", "length_penalty", "python_function",
                          "weighted", "reward_model", "remote", "python_code_verifier"}


@pytest.mark.parametrize("name", NAMES)
def test_default_config_is_valid_selectable_and_serialisable(name):
    config = REWARDS.get(name)()
    assert isinstance(config, RewardConfig)

    @dataclasses.dataclass(kw_only=True, slots=True)
    class Recipe:
        reward: RewardConfig = dataclasses.field(default_factory=ArithmeticVerifierConfig)

    chosen = apply_overrides(Recipe(), [f"reward={name}"]).reward
    assert type(chosen) is type(config)
    tree = config_to_dict(config)
    assert tree["type"] == name
    json.dumps(tree, default=str)


@pytest.mark.parametrize("name", NAMES)
def test_scorer_follows_the_protocol(name, runnable):
    scorer = runnable(name).build()
    assert isinstance(scorer, Scorer)
    assert scorer.name and len(scorer.version) >= 8
    assert scorer.score([]) == []
    results = scorer.score(SAMPLES)
    assert len(results) == len(SAMPLES)
    for result in results:
        assert isinstance(result, RewardResult)
        assert result.failed == (result.value is None)
        assert (not result.failed) or result.reason
        assert result.value is None or math.isfinite(result.value)
        assert result.reward_name and result.reward_version
    # deterministic per sample and order-preserving: scoring a reversed batch reverses the results
    again = scorer.score(SAMPLES[::-1])[::-1]
    assert [r.value for r in again] == pytest.approx([r.value for r in results], abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_version_is_stable_across_builds(name, runnable):
    assert runnable(name).build().version == runnable(name).build().version


def test_code_verifier_default_sandbox_is_bounded():
    config = PythonCodeVerifierConfig()
    assert config.sandbox.wall_time_s <= 10 and config.sandbox.memory_mb <= 1024
