"""TRL-style callables: the adapter, kwargs columns, and `python_function(path="mod:fn")`."""

from __future__ import annotations

import pytest

from rewards.python_function import CallableReward, PythonFunctionConfig
from rl_platform.config import ConfigError

from .conftest import GOOD, sample

SEEN_KWARGS: list[dict] = []


def brevity(prompts, completions, **kwargs):
    """A user's reward, TRL signature; referenced by import path in the tests below."""
    SEEN_KWARGS.append(kwargs)
    return [-len(c) / 100 for c in completions]


def half_known(prompts, completions, **kwargs):
    return [1.0 if i % 2 == 0 else None for i in range(len(prompts))]


def test_adapter_calls_trl_signature_with_metadata_as_columns():
    SEEN_KWARGS.clear()
    scorer = CallableReward.from_callable(brevity)
    results = scorer.score([sample("abc", answer=1), sample("abcdef", difficulty="hard")])
    assert [r.value for r in results] == [-0.03, -0.06]
    assert SEEN_KWARGS[-1] == {"answer": [1, None], "difficulty": [None, "hard"]}
    assert results[0].reward_name == "brevity"


def test_trl_none_means_failed_not_zero():
    results = CallableReward.from_callable(half_known).score([sample()] * 3)
    assert [r.failed for r in results] == [False, True, False]


def test_import_path_reward_scores_and_versions_by_source():
    scorer = PythonFunctionConfig(path=f"{__name__}:brevity").build()
    assert scorer.score([sample("abcd")])[0].value == -0.04
    assert scorer.name == f"python_function:{__name__}:brevity"
    other = PythonFunctionConfig(path=f"{__name__}:half_known").build()
    assert scorer.version != other.version


def test_default_python_function_is_the_arithmetic_trl_reward():
    scorer = PythonFunctionConfig().build()
    assert [r.value for r in scorer.score([sample(GOOD), sample(GOOD.replace("433", "1"))])] == [1.0, 0.0]


@pytest.mark.parametrize(("path", "message"), [
    ("no_colon_here", "is not of the form"),
    ("tests.rewards.does_not_exist:fn", "cannot import module"),
    (f"{__name__}:missing_fn", "has no attribute 'missing_fn'"),
    (f"{__name__}:SEEN_KWARGS", "not a function"),
])
def test_bad_import_paths_fail_with_the_fix(path, message):
    with pytest.raises(ConfigError, match=message):
        PythonFunctionConfig(path=path).build()
