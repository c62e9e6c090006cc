"""Which CPU cores and how many torch threads an actor process uses (docs/async_rl.md, "CPU split").

When generation and training overlap, the engine and the learner run at the same time; left to the OS, their
thread pools (2 + 2 threads on 2 cores) oversubscribe the cores and each spin-waits on the other. Pinning each
role's process to its own cores with one torch thread per core keeps both busy without contention. When they
take turns (sync), both use every core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class CpuShare:
    """The cores an actor process is pinned to; empty: not pinned, `threads` threads.

    Example:
        CpuShare(cores=(1,), threads=1).apply()
    """

    cores: tuple[int, ...] = ()
    threads: int = 2

    def apply(self) -> None:
        """Pins this process (every thread it starts later inherits it) and sets the torch thread count.
        OMP_NUM_THREADS is set too: vLLM's CPU engine reads it and otherwise forces one thread."""
        if self.cores:
            os.sched_setaffinity(0, set(self.cores))
        os.environ["OMP_NUM_THREADS"] = str(self.threads)
        import torch

        torch.set_num_threads(self.threads)


def split_cores(cores: list[int], rollout_share: float) -> tuple[CpuShare, CpuShare]:
    """(rollout, learner) shares of `cores`: the rollout gets the last round(share * n) cores (at least one),
    the learner the rest (at least one). A single core cannot be split: both then share it."""
    n = len(cores)
    if n < 2:
        return CpuShare(cores=tuple(cores), threads=1), CpuShare(cores=tuple(cores), threads=1)
    num_rollout = min(n - 1, max(1, round(rollout_share * n)))
    rollout, learner = tuple(cores[n - num_rollout:]), tuple(cores[:n - num_rollout])
    return CpuShare(cores=rollout, threads=len(rollout)), CpuShare(cores=learner, threads=len(learner))
