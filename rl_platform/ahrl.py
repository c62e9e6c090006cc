"""AHRL, Adaptive Hint-based RL (ERNIE 5.0, arXiv:2602.04705, section 4.3, Eq. 5).

A group whose samples all fail gives GRPO no gradient. AHRL re-asks such a query with a hint: the first
p_hint of the reference solution's worked part ("think") appended to the prompt, so the policy only has to
finish the solution, and the regenerated group replaces the failed one in the update:

    p_hint(x, t) = p_initial * exp(-gamma * t * pass_x_initial)

t is the RL step; pass_x_initial is the query's pass rate under the initial policy. Hint tokens are part of
the prompt, so the loss never trains on them; the verifier scores the completion (which must still end with
the answer line). Choices the paper leaves open (docs/rl_algorithms.md, 'AHRL'):
- the hint is whole tokens of the worked part, never the final answer line (the task's `with_hint` cuts it);
- pass_x_initial is `metadata["pass_initial"]` when the prompt source measured it, else the pass rate of the
  first group the run drew for that query (for freshly drawn queries that is the current, all-failed group,
  so p_hint = p_initial: the decay acts on queries the run sees again);
- p_initial 0.5 and gamma 0.05 are not published.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rl_platform.config import check
from rl_platform.types import Prompt, Rollout

HintFn = Callable[[Prompt, float], Prompt]
"""(prompt, fraction of the worked solution to reveal) -> the hinted prompt, with `metadata["hint_tokens"]`
(the task's prompt source provides it, e.g. ArithmeticPrompts.with_hint)."""


@dataclass(kw_only=True, slots=True)
class AHRLConfig:
    """Hinted re-sampling of all-failed groups (`--set loop.ahrl.enabled=true`)."""

    enabled: bool = False
    p_initial: float = 0.5
    """Fraction of the reference worked solution revealed to a query the initial policy never solves."""
    gamma: float = 0.05
    """Decay rate of the hint with step * initial pass rate."""
    min_fraction: float = 0.0
    """Hints shorter than this fraction are not given (the group stays as it was)."""

    def __post_init__(self) -> None:
        check(0.0 < self.p_initial <= 1.0, "AHRLConfig.p_initial", self.p_initial, "must be in (0, 1]", "use 0.5")
        check(self.gamma >= 0.0, "AHRLConfig.gamma", self.gamma, "must be >= 0", "use 0.05")
        check(0.0 <= self.min_fraction < self.p_initial, "AHRLConfig.min_fraction", self.min_fraction,
              f"must be in [0, p_initial={self.p_initial})", "use 0")

    def hint_fraction(self, step: int, pass_initial: float) -> float:
        return self.p_initial * math.exp(-self.gamma * step * pass_initial)


class AHRL:
    """Tracks initial pass rates and replaces all-failed groups by hinted ones.

    Example:
        ahrl = AHRL(AHRLConfig(enabled=True), prompts.with_hint, pass_threshold=1.0)
        groups, metrics = ahrl.apply(step, groups, regenerate=lambda hinted: generate_and_score(hinted))
    """

    def __init__(self, config: AHRLConfig, hint: HintFn | None, pass_threshold: float) -> None:
        if config.enabled and hint is None:
            raise ValueError("AHRLConfig.enabled=True but the prompt source gives no hints (no `with_hint`); use a "
                             "task whose prompts carry a reference solution, or set loop.ahrl.enabled=false")
        self.config = config
        self.hint = hint
        self.pass_threshold = pass_threshold
        self.pass_initial: dict[str, float] = {}
        """Prompt text -> pass rate of the first group drawn for it."""

    def _passes(self, group: Sequence[Rollout]) -> list[bool]:
        return [r.reward.value >= self.pass_threshold for r in group if r.reward.value is not None]

    def _initial(self, prompt: Prompt, passes: list[bool]) -> float:
        if "pass_initial" in prompt.metadata:
            return float(prompt.metadata["pass_initial"])
        return self.pass_initial.setdefault(prompt.text, sum(passes) / len(passes))

    def apply(self, step: int, groups: list[list[Rollout]],
              regenerate: Callable[[list[Prompt]], list[list[Rollout]]]) -> tuple[list[list[Rollout]], dict]:
        """`groups` with every all-failed group replaced by its hinted regeneration, and `ahrl/*` metrics."""
        if not self.config.enabled:
            return groups, {}
        targets, hinted, fractions = [], [], []
        for index, group in enumerate(groups):
            passes = self._passes(group)
            if not passes:
                continue  # every sample failed scoring: nothing to learn from, hinted or not
            initial = self._initial(group[0].prompt, passes)
            fraction = self.config.hint_fraction(step, initial)
            if any(passes) or fraction <= self.config.min_fraction:
                continue
            targets.append(index)
            hinted.append(self.hint(group[0].prompt, fraction))
            fractions.append(fraction)
        out = list(groups)
        new_groups = regenerate(hinted) if hinted else []
        for index, group in zip(targets, new_groups, strict=True):
            out[index] = group
        return out, self._metrics(groups, hinted, fractions, new_groups)

    def _metrics(self, groups, hinted: list[Prompt], fractions: list[float], new_groups) -> dict[str, float]:
        hint_tokens = [int(h.metadata.get("hint_tokens", 0)) for h in hinted]
        passes = [p for g in new_groups for p in self._passes(g)]
        return {
            "ahrl/hinted_frac": len(hinted) / max(1, len(groups)),
            "ahrl/hint_tokens_mean": statistics.fmean(hint_tokens) if hint_tokens else 0.0,
            "ahrl/hint_fraction_mean": statistics.fmean(fractions) if fractions else 0.0,
            "ahrl/hinted_pass_rate": sum(passes) / len(passes) if passes else 0.0,
            "ahrl/hinted_signal_frac": (sum(any(self._passes(g)) and not all(self._passes(g)) for g in new_groups)
                                        / max(1, len(new_groups))),
        }
