"""Per-step metrics of the rollout pipeline (docs/async_rl.md, "Metrics").

    rollout/staleness_mean|max    versions between the learner and the weights that sampled each trained token
    rollout/partial_frac          trained responses whose tokens came from more than one weight version
    rollout/stale_dropped         samples dropped as too stale and regenerated during the step
    rollout/length_ks_vs_sync     two-sample KS distance between the response lengths a step trained on and
                                  those of the groups sync would have trained on in that step (its groups in
                                  dataset order); 0 by construction for sync and urb, APRIL's length bias shows
                                  here. Reported step by step in order, once a step's dataset-order groups
                                  have all finished (`rollout/length_ks_lag` steps late; APRIL finishes late).
    perf/engine_busy_frac         share of the time the engines spent in engine steps with work, on each engine's
                                  own clock between its reports nearest the previous and this step's end
    perf/samples_per_s            trained samples per second of wall time
    perf/generate_tokens_per_s    tokens the engines finished per second of wall time
    timing/score                  seconds spent scoring during the step
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Callable, Sequence

from rl_platform.replay_buffer import GroupRecord
from rl_platform.types import GeneratorPoll, Rollout


def ks_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)| (0 when either sample is empty)."""
    if not a or not b:
        return 0.0
    sa, sb = sorted(a), sorted(b)
    return max(abs(bisect.bisect_right(sa, x) / len(sa) - bisect.bisect_right(sb, x) / len(sb))
               for x in set(sa) | set(sb))


class RolloutStats:
    """Counters the scheduler updates as samples arrive and steps are released."""

    def __init__(self, num_engines: int, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.scoring_seconds = 0.0
        self.stale_dropped = 0
        # Each engine's latest report: cumulative busy seconds and the engine's clock when it read them. Engines
        # count from their start (earlier runs on a shared engine, an evaluation before step 1), so this run's
        # first window opens at its first report.
        self._busy = [0.0] * num_engines
        self._engine_clock = [0.0] * num_engines
        self._at_step_start: tuple[list[float], list[float]] | None = None
        self._busy_frac = 0.0
        self._tokens = 0
        self._step_start = clock()
        self._trained_samples = 0
        self._trained_by_step: dict[int, list[int]] = {}
        self._lengths_by_position: dict[int, list[int]] = {}
        self.first_position: int | None = None
        """Dataset position of the run's first admitted group (set by the scheduler)."""
        self._first_step: int | None = None
        self._release_metrics: dict[str, float] = {}

    def on_poll(self, polled: GeneratorPoll) -> None:
        self._busy, self._engine_clock = list(polled.busy_seconds), list(polled.clock_seconds)
        if self._at_step_start is None:
            self._at_step_start = (list(self._busy), list(self._engine_clock))
        self._tokens += sum(len(c.token_ids) for c in polled.completions)

    def on_done(self, group: GroupRecord) -> None:
        """A group has all its samples scored (again, after a regeneration): remember its lengths by position."""
        self._lengths_by_position[group.position] = [len(c.token_ids) for c in group.completions if c is not None]

    def on_release(self, step: int, groups: list[GroupRecord], rollouts: list[Rollout],
                   version: int) -> dict[str, float]:
        lags = [version - v for r in rollouts for v in r.completion.policy_versions]
        self._trained_samples += len(rollouts)
        self._trained_by_step[step] = [len(r.completion.token_ids) for r in rollouts]
        if self._first_step is None:
            self._first_step = step
        metrics = {
            "rollout/staleness_mean": statistics.fmean(lags) if lags else 0.0,
            "rollout/staleness_max": float(max(lags, default=0)),
            "rollout/partial_frac": sum(r.completion.is_partial for r in rollouts) / max(1, len(rollouts)),
        }
        metrics.update(self._length_bias(step, len(groups)))
        return metrics

    def end_step(self) -> dict[str, float]:
        """Metrics of the step that ends now (wall time since the previous call)."""
        now = self.clock()
        wall = max(now - self._step_start, 1e-9)
        # Busy share of each engine between its reports nearest the previous and this step end, on the engine's
        # own clock (<= 1 by construction); a step in which no engine reported repeats the previous value.
        busy0, clock0 = self._at_step_start or (self._busy, self._engine_clock)
        busy = [(b - b_0) / (c - c_0) for b, b_0, c, c_0 in
                zip(self._busy, busy0, self._engine_clock, clock0, strict=True) if c > c_0]
        if busy:
            self._busy_frac = statistics.fmean(busy)
        metrics = {
            "perf/engine_busy_frac": self._busy_frac,
            "perf/samples_per_s": self._trained_samples / wall,
            "perf/generate_tokens_per_s": self._tokens / wall,
            "perf/step_wall_seconds": wall,
            "rollout/stale_dropped": float(self.stale_dropped),
            "timing/score": self.scoring_seconds,
        }
        self._step_start = now
        if self._at_step_start is not None:  # before the first report there is no window to close
            self._at_step_start = (list(self._busy), list(self._engine_clock))
        self._tokens = self._trained_samples = self.stale_dropped = 0
        self.scoring_seconds = 0.0
        return metrics

    def _length_bias(self, step: int, num_groups: int) -> dict[str, float]:
        """KS of the oldest step not reported yet, once all its dataset-order groups have finished ({} before)."""
        if self.first_position is None or self._first_step is None or not self._trained_by_step:
            return {}
        s = min(self._trained_by_step)
        start = self.first_position + (s - self._first_step) * num_groups
        window = [self._lengths_by_position.get(p) for p in range(start, start + num_groups)]
        if any(w is None for w in window):
            return {}
        reference = [n for w in window if w is not None for n in w]
        ks = ks_distance(self._trained_by_step.pop(s), reference)
        for p in range(start, start + num_groups):
            del self._lengths_by_position[p]
        return {"rollout/length_ks_vs_sync": ks, "rollout/length_ks_lag": float(step - s)}
