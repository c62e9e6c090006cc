"""Progress display: rate and ETA as plain lines off a terminal, a bar on one, and the RL step summary."""

from __future__ import annotations

import logging

import pytest

from jobs.rl import step_summary
from rl_platform import progress as progress_module
from rl_platform.progress import Progress, format_duration, format_rate, progress_mode


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", fake)
    return fake


def test_durations_and_rates_read_naturally():
    assert [format_duration(s) for s in (7, 125, 4000, float("nan"), -1)] == ["7s", "2m05s", "1h06m", "?", "?"]
    assert format_rate(1.1, "step") == "1.10 s/step" and format_rate(0.01, "sample") == "100.0 sample/s"


def test_lines_mode_logs_count_rate_eta_and_a_closing_line(clock, caplog):
    caplog.set_level(logging.INFO, logger="rl_platform.progress")
    bar = Progress(total=10, desc="pretrain", unit="step", initial=2, interval_s=5.0, mode="lines")
    for _ in range(4):
        clock.now += 2.0  # 2 s per step
        bar.update(loss="1.234")
    lines = [r.getMessage() for r in caplog.records]
    # a line every >= 5 s: after the 3rd step (6 s), not after every step
    assert lines == ["[progress] pretrain 5/10 step (50%) 2.00 s/step, ETA 10s, loss=1.234"]
    assert bar.eta_s == pytest.approx(4 * 2.0)  # 4 steps left at 2 s/step; resumed steps are not counted as done
    bar.close()
    assert caplog.records[-1].getMessage() == "[progress] pretrain 6/10 step done in 8s (2.00 s/step)"


def test_bar_mode_draws_a_bar_with_the_rate(capsys):
    with Progress(total=3, desc="eval greedy", unit="sample", mode="bar") as bar:
        bar.update(3)
    err = capsys.readouterr().err
    assert "eval greedy" in err and "3/3" in err and "sample/s" in err


def test_mode_follows_the_environment_variable(monkeypatch):
    monkeypatch.setenv("RL_PLATFORM_PROGRESS", "lines")
    assert progress_mode() == "lines"
    monkeypatch.setenv("RL_PLATFORM_PROGRESS", "off")
    assert progress_mode() == "off"


def test_rl_step_summary_has_step_reward_pass_kl_mismatch_speed_and_eta():
    metrics = {"reward/mean": 0.8712, "reward/pass_rate": 0.85, "train/kl_train_infer": 2.1e-5,
               "moe/route_mismatch": 0.0134}
    line = step_summary(12, 100, metrics, seconds=4.61, eta_s=404)
    assert line == "step 12/100 reward 0.871 pass 0.850 kl_ti 2.1e-05 mismatch 0.013 4.6 s/step ETA 6m44s"
