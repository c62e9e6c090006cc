"""Which CPU cores and how many torch threads an actor process uses (docs/async_rl.md, "CPU split").

When generation and training overlap, the engine and the learner run at the same time; left to the OS, their
thread pools (2 + 2 threads on 2 cores) oversubscribe the cores and each spin-waits on the other. Pinning each
role's process to its own cores with one torch thread per core keeps both busy without contention. When they
take turns (sync), both use every core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True, slots=True)
class CpuShare:
    """A role's share of the cores of the machine its actor runs on, resolved inside the actor.

    Example:
        CpuShare(role="rollout", rollout_share=0.5).apply()   # on 2 cores: pinned to core 1, 1 thread
        CpuShare(role="all", threads=2).apply()               # not pinned, 2 threads
    """

    role: Literal["all", "rollout", "learner"] = "all"
    """all: every core, not pinned; rollout / learner: that side of a split of the process's cores."""
    rollout_share: float = 0.5
    """Fraction of the cores the rollout side gets under a split."""
    threads: int = 2
    """Torch threads when not split (a split uses one thread per core it gets)."""

    def cores(self) -> list[int]:
        """The cores this role gets out of the ones the process may use (all of them for role=all)."""
        available = sorted(os.sched_getaffinity(0))
        if self.role == "all" or len(available) < 2:  # one core cannot be split: both roles share it
            return available
        n = len(available)
        num_rollout = min(n - 1, max(1, round(self.rollout_share * n)))
        return available[n - num_rollout:] if self.role == "rollout" else available[:n - num_rollout]

    def apply(self) -> list[int]:
        """Pins this process (threads it starts later inherit it), sets the torch thread count, and returns the
        cores. OMP_NUM_THREADS is set too: vLLM's CPU engine reads it and otherwise forces one thread."""
        cores = self.cores()
        threads = self.threads
        if self.role != "all":
            os.sched_setaffinity(0, set(cores))
            threads = len(cores)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
        return cores
