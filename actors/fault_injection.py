"""Test-only fault injection for the chaos tests (docs/fault_tolerance.md, "Chaos tests"): the environment
variable RL_PLATFORM_TEST_FAULTS (JSON) names faults that fire inside a rollout or reward actor at a precise
point of the work, once per run:

    {"marker_dir": "/tmp/run/faults",
     "faults": [{"role": "rollout", "worker": 1, "action": "hang", "after": 20},
                {"role": "reward", "worker": 0, "action": "kill", "after": 40}]}

`after`: the fault fires on the first delivered training sample (rollout) or scoring call (reward) that takes
the actor's count of samples past it. kill: SIGKILL of the actor's own process (a machine or OOM kill);
hang: the calling thread blocks forever (the engine thread of a rollout actor; the scoring call of a reward
actor). A marker file per fault makes it fire once: the restarted actor finds it and runs normally. Unset (as
in every real run), the hook does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

ENV = "RL_PLATFORM_TEST_FAULTS"


class FaultHook:
    """The faults planned for one actor (role, worker index)."""

    def __init__(self, role: str, worker: int) -> None:
        plan = json.loads(os.environ.get(ENV, "") or "{}")
        self.marker_dir = Path(plan.get("marker_dir", "."))
        self.faults = [(i, f) for i, f in enumerate(plan.get("faults", []))
                       if f["role"] == role and int(f["worker"]) == worker]
        self.label = f"{role}{worker}"
        self.count = 0

    def tick(self, n: int = 1) -> None:
        """Counts `n` more samples; fires a planned fault whose threshold they pass (once per run)."""
        if not self.faults:
            return
        self.count += n
        for index, fault in self.faults:
            if self.count > int(fault["after"]) and self._first_time(index):
                logger.error("test fault injection: %s %s after %d samples", self.label, fault["action"], self.count)
                if fault["action"] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                threading.Event().wait()  # hang: this thread never returns

    def _first_time(self, index: int) -> bool:
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.marker_dir / f"fired-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True
