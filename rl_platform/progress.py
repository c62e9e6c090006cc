"""Progress of a long phase (pretraining, RL steps, evaluation): a bar with rate and ETA on a terminal, plain
periodic log lines otherwise (Ray job logs, CI, `| tee`), so a person always sees how far a run is and when it
will end.

    with Progress(total=900, desc="pretrain", unit="step", initial=resumed_step) as progress:
        for ...:
            progress.update(loss=f"{loss:.3f}")          # one unit done; the keywords show beside the bar
            progress.write("a line that must not break the bar")

Mode: `RL_PLATFORM_PROGRESS=bar|lines|off`, default `auto` = a bar when stderr is a terminal, else lines.
A line names the phase, the count, the rate, the ETA and the keywords:

    [progress] pretrain 120/900 step (13%) 1.10 s/step, ETA 14m18s, loss=1.234
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from typing import Any, Literal

logger = logging.getLogger(__name__)

Mode = Literal["bar", "lines", "off"]
ENV_VAR = "RL_PLATFORM_PROGRESS"


def progress_mode() -> Mode:
    """The display mode from RL_PLATFORM_PROGRESS, or a bar exactly when stderr is a terminal."""
    wanted = os.environ.get(ENV_VAR, "auto").strip().lower()
    if wanted in ("bar", "lines", "off"):
        return wanted  # type: ignore[return-value]
    return "bar" if sys.stderr.isatty() else "lines"


def format_duration(seconds: float) -> str:
    """7 -> '7s', 125 -> '2m05s', 4000 -> '1h06m'; unknown -> '?'."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def format_rate(seconds_per_unit: float, unit: str) -> str:
    """Slow phases read as seconds per unit, fast ones as units per second."""
    if not math.isfinite(seconds_per_unit) or seconds_per_unit <= 0:
        return f"? {unit}/s"
    if seconds_per_unit >= 1.0:
        return f"{seconds_per_unit:.2f} s/{unit}"
    return f"{1.0 / seconds_per_unit:.1f} {unit}/s"


class Progress:
    """Counts units of one phase and shows rate and ETA (see the module docstring).

    Example:
        progress = Progress(total=100, desc="rl", unit="step", interval_s=30)
        progress.update(); progress.close()
    """

    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0, interval_s: float = 30.0,
                 mode: Mode | None = None, show_lines: bool = True) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.initial = initial
        self.count = initial
        self.interval_s = interval_s
        self.mode: Mode = mode or progress_mode()
        self.show_lines = show_lines
        """False when the caller prints its own line per unit (the RL step summary): then lines mode prints
        only the closing line."""
        self.postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._last_line = self._start
        self._bar = None
        self._redirect = None
        if self.mode == "bar":
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # a terminal that reports a 0 x 0 size (some ptys) makes tqdm hide every bar: give it a fixed size
            known = shutil.get_terminal_size((0, 0)).columns > 0
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=known,
                             ncols=None if known else 100, nrows=None if known else 20, mininterval=0.5,
                             smoothing=0.1)
            # log records printed to the console while the bar is up go above it instead of through it
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    # ---------------------------------------------------------------------------------------------- counting
    def update(self, n: int = 1, **postfix: Any) -> None:
        self.count += n
        if postfix:
            self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(self.postfix, refresh=False)
        elif self.mode == "lines" and self.show_lines:
            now = time.perf_counter()
            if now - self._last_line >= self.interval_s:
                self._last_line = now
                logger.info("[progress] %s", self.line())

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._start

    @property
    def seconds_per_unit(self) -> float:
        done = self.count - self.initial
        return self.elapsed_s / done if done > 0 else float("nan")

    @property
    def eta_s(self) -> float:
        """Seconds until `total`, at the mean rate of this process so far."""
        return max(0, self.total - self.count) * self.seconds_per_unit

    def line(self) -> str:
        percent = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        return (f"{self.desc} {self.count}/{self.total} {self.unit}{percent} "
                f"{format_rate(self.seconds_per_unit, self.unit)}, ETA {format_duration(self.eta_s)}{extra}")

    # --------------------------------------------------------------------------------------------- output
    def write(self, text: str) -> None:
        """Prints a line above the bar (terminal) or logs it (lines mode)."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        elif self.mode != "off":
            logger.info("%s", text)

    def close(self) -> None:
        if self._bar is not None:
            self._redirect.__exit__(None, None, None)
            self._bar.close()
            self._bar = None
        elif self.mode == "lines":
            done = self.count - self.initial
            logger.info("[progress] %s %d/%d %s done in %s (%s)", self.desc, self.count, self.total, self.unit,
                        format_duration(self.elapsed_s), format_rate(self.seconds_per_unit, self.unit)
                        if done else "nothing to do")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
