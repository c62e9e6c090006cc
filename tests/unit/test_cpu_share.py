"""The CPU split between the rollout engine and the learner: disjoint sides, never empty, off when sync."""

import pytest

from actors.cpu_share import CpuShare
from actors.remote import ActorResources


@pytest.mark.parametrize("cores, share, rollout, learner", [
    ([0, 1], 0.5, [1], [0]),
    (list(range(8)), 0.25, [6, 7], [0, 1, 2, 3, 4, 5]),
    (list(range(8)), 0.99, [1, 2, 3, 4, 5, 6, 7], [0]),  # the learner keeps at least one core
    ([3], 0.5, [3], [3]),  # one core cannot be split: both share it
])
def test_split_sides_are_disjoint_and_never_empty(monkeypatch, cores, share, rollout, learner):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(cores))
    assert CpuShare(role="rollout", rollout_share=share).cores() == rollout
    assert CpuShare(role="learner", rollout_share=share).cores() == learner


def test_auto_splits_only_when_the_roles_overlap(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    rollout, learner = ActorResources().shares(overlap=True, threads=2)
    assert (rollout.role, learner.role) == ("rollout", "learner") and rollout.cores() == [1]
    for share in ActorResources().shares(overlap=False, threads=2):
        assert share.role == "all" and share.cores() == [0, 1] and share.threads == 2
    assert ActorResources(cpu_split="split").shares(overlap=False, threads=2)[0].role == "rollout"
    assert ActorResources(cpu_split="shared").shares(overlap=True, threads=2)[1].role == "all"
