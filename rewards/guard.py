"""Failure semantics shared by every reward: raise, timeout, non-finite or missing value -> failed, never 0.

`GuardedScorer` wraps a RawScorer and turns each way a reward can go wrong into failed RewardResults:

    exception in score_batch      -> every sample of the batch: "error: <Type>: <message>"
    batch exceeds timeout_s       -> every sample of the batch: "timeout: ..."; the batch is stopped (the
                                     scorer's cancel(), then RewardTimeout raised in its thread), so a
                                     timed-out batch does not keep burning CPU beside the next one
    wrong number of values        -> every sample of the batch: "contract: ..."
    NaN / inf / non-number value  -> that sample: "non_finite: ..." / "type: ..."
    Failure(reason)               -> that sample, with the scorer's reason

Each (reward, reason category) is logged once per process at WARNING, so a reward that fails on every
sample cannot flood the logs, but cannot go unnoticed either; counts go to `reward/failed_count`.
"""

from __future__ import annotations

import ctypes
import logging
import math
import numbers
import threading
import time
from collections.abc import Sequence
from typing import Any

from rewards.core import Failure, RawScorer, RewardInput, RewardResult

logger = logging.getLogger(__name__)

_logged_reasons: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def log_failure_once(reward_name: str, reason: str) -> None:
    """Logs the first failure of each (reward, category) at WARNING; later ones at DEBUG."""
    key = (reward_name, reason.split(":", 1)[0])
    with _logged_lock:
        first = key not in _logged_reasons
        _logged_reasons.add(key)
    if first:
        logger.warning("reward %s failed a sample (%s); further %r failures are counted, not logged",
                       reward_name, reason[:500], key[1])
    else:
        logger.debug("reward %s failed a sample (%s)", reward_name, reason[:500])


class RewardTimeout(BaseException):
    """Raised inside a reward's thread when its batch ran out of time. A BaseException, so a reward's own
    `except Exception` cannot swallow it."""


_MAX_ABANDONED = 2
"""Timed-out batches whose thread could not be stopped (blocked in native code) that may still run; while
more are alive, new batches fail at once instead of piling up threads."""
_GRACE_S = 0.5


def _interrupt(thread: threading.Thread) -> None:
    """Raises RewardTimeout in `thread` at its next Python bytecode (a loop in Python stops; a blocking call
    in C stops when it returns)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(RewardTimeout))


def _run_with_timeout(fn: Any, samples: Sequence[RewardInput], timeout_s: float,
                      cancel: Any = None) -> tuple[bool, Any, threading.Thread]:
    """(finished, result-or-exception, thread). Past the timeout the batch is stopped: `cancel()` (a scorer
    that owns processes kills them) and RewardTimeout raised in its thread, then up to _GRACE_S to end."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(samples)
        except RewardTimeout:
            box["error"] = RewardTimeout()
        except BaseException as exc:  # noqa: BLE001 - reported as a failed batch, with its type
            box["error"] = exc

    thread = threading.Thread(target=target, name="reward-batch", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not thread.is_alive():
        return True, box.get("error", box.get("result")), thread
    if cancel is not None:
        try:
            cancel()
        except Exception:  # noqa: BLE001 - best effort; the async exception below still applies
            logger.exception("reward cancel() failed")
    deadline = time.monotonic() + _GRACE_S
    while thread.is_alive() and time.monotonic() < deadline:
        _interrupt(thread)
        thread.join(0.05)
    return False, None, thread


class GuardedScorer:
    """A RawScorer behind the failure semantics above; what `RewardConfig.build()` returns.

    Example:
        scorer = GuardedScorer(raw, timeout_s=5.0)
        scorer.score([RewardInput(prompt="p", completion="c")])  # never raises for a crashing reward
    """

    def __init__(self, raw: RawScorer, timeout_s: float | None) -> None:
        self.raw = raw
        self.timeout_s = timeout_s
        self.abandoned: list[threading.Thread] = []
        """Threads of timed-out batches that did not stop (blocked in native code); see _MAX_ABANDONED."""
        self.name = raw.name
        self.version = raw.version
        self.pass_threshold = raw.pass_threshold

    def _fail_all(self, count: int, reason: str) -> list[RewardResult]:
        log_failure_once(self.name, reason)
        return [self._failed(reason) for _ in range(count)]

    def _failed(self, reason: str) -> RewardResult:
        return RewardResult(value=None, failed=True, reason=reason, reward_name=self.name,
                            reward_version=self.version)

    def score(self, samples: Sequence[RewardInput]) -> list[RewardResult]:
        samples = list(samples)
        if not samples:
            return []
        if self.timeout_s is None:
            try:
                outcome: Any = self.raw.score_batch(samples)
            except Exception as exc:  # noqa: BLE001 - the point of the guard
                outcome = exc
        else:
            self.abandoned = [t for t in self.abandoned if t.is_alive()]
            if len(self.abandoned) >= _MAX_ABANDONED:
                return self._fail_all(len(samples), f"unavailable: {len(self.abandoned)} timed-out batches of this "
                                      "reward are still running in native code and could not be stopped; fix the "
                                      "reward (it blocks past timeout_s) or run it out of process (remote)")
            finished, outcome, thread = _run_with_timeout(self.raw.score_batch, samples, self.timeout_s,
                                                          getattr(self.raw, "cancel", None))
            if not finished:
                if thread.is_alive():
                    self.abandoned.append(thread)
                return self._fail_all(len(samples), f"timeout: batch of {len(samples)} took > {self.timeout_s} s"
                                      + ("" if not thread.is_alive() else "; its thread is blocked in native code"))
        if isinstance(outcome, BaseException):
            return self._fail_all(len(samples), f"error: {type(outcome).__name__}: {outcome}")
        if not isinstance(outcome, (list, tuple)) or len(outcome) != len(samples):
            got = len(outcome) if isinstance(outcome, (list, tuple)) else type(outcome).__name__
            return self._fail_all(len(samples), f"contract: expected {len(samples)} values, got {got}")
        results = [self._to_result(item) for item in outcome]
        for result in results:
            if result.failed:
                log_failure_once(result.reward_name, result.reason or "unknown")
        return results

    def _to_result(self, item: Any) -> RewardResult:
        if isinstance(item, Failure):
            return self._failed(item.reason)
        if isinstance(item, RewardResult):
            if item.value is not None and not math.isfinite(item.value):
                return RewardResult(value=None, failed=True, reason=f"non_finite: value {item.value}",
                                    reward_name=item.reward_name, reward_version=item.reward_version,
                                    components=item.components)
            return item
        if item is None:
            return self._failed("missing: the reward returned None for this sample")
        if not isinstance(item, numbers.Real):
            return self._failed(f"type: expected a float, got {type(item).__name__} ({item!r:.80})")
        value = float(item)
        if not math.isfinite(value):
            return self._failed(f"non_finite: value {value}")
        return RewardResult(value=value, failed=False, reason=None, reward_name=self.name,
                            reward_version=self.version)
