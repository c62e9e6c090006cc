"""Graceful stop: the first SIGTERM / SIGINT asks the job to stop after the current step, the second exits now.

    with GracefulStop() as stop:
        for step in range(start, num_steps):
            run_step(step)
            if stop.requested:
                save_checkpoint(step + 1)      # then flush logs and return 0
                break

What sends the signals: Ctrl-C (SIGINT), `kill`, a scheduler's preemption notice (SIGTERM), and
`ray job stop`, which sends SIGTERM to the entrypoint and, after `RAY_JOB_STOP_WAIT_TIME_S` (default 3 s,
read by the cluster's job supervisor), SIGKILL: give the head a longer wait than one step plus one
checkpoint (docs/fault_tolerance.md, 'Graceful stop').

The handler only sets a flag, so it is safe wherever the main thread is blocked (a `ray.get`, a
DeepSpeed step); the loop decides where to stop. A second signal exits at once with 128 + signum, the
shell's convention, without a checkpoint: the previous checkpoint stays valid, because saves are atomic
(rl_platform/checkpointing.py).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """Installs the two-stage handlers for STOP_SIGNALS while the `with` block runs (main thread only).

    Example:
        with GracefulStop() as stop:
            ...
            if stop.requested:
                print(f"stopping: {stop.reason}")
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.signal: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        return f"received {self.signal.name}" if self.signal is not None else "not requested"

    def request(self, signum: signal.Signals) -> None:
        """What the first signal does (also callable directly, e.g. by a test or an in-process watchdog)."""
        self.signal = signal.Signals(signum)
        self._event.set()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            # The second signal: the user means it. os._exit skips cleanup that could block (Ray, wandb).
            sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting now, without a checkpoint; "
                             "the last committed checkpoint is intact\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.request(signal.Signals(signum))
        # stderr directly as well as the log: a user pressing Ctrl-C wants to see it was heard at once
        message = (f"{self.signal.name} received: finishing the current step, then writing a checkpoint and "
                   f"exiting (send it again to exit at once)")
        sys.stderr.write(f"\n{message}\n")
        sys.stderr.flush()
        logger.warning(message)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("GracefulStop outside the main thread: signals will not be caught here")
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def resume_command(module: str, run_dir: Path | str, argv: list[str] | None = None, with_flag: bool = True) -> str:
    """The command line that continues this run: the same arguments, `--run-dir` pinned, `--resume` added."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--run-dir" not in args and not any(a.startswith("--run-dir=") for a in args):
        args += ["--run-dir", str(run_dir)]
    if with_flag and "--resume" not in args:
        args.append("--resume")
    return shlex.join(["python", "-m", module, *args])
