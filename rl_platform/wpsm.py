"""WPSM, the Well-learned Positive Sample Mask (ERNIE 5.0, arXiv:2602.04705, section 4.2, Eq. 4).

Per query x the controller keeps a running success rate acc_x. A response y_i of x is *well learned* when
    acc_x > tau   and   y_i passes   and   H(y_i) < eta,
and its term in the objective is scaled by (1 - alpha):
    J = E[ 1/G sum_i (1 - M_i) min(s_i A_i, clip(s_i) A_i) ],   M_i = alpha if well learned else 0.
Because (1 - M_i) >= 0 is one scalar per response, scaling the response's advantage by it gives exactly this
objective for every clipping variant (min and max commute with a non-negative scale), so WPSM needs nothing
from the learner: the controller calls `WPSM.reweight` between the advantage estimate and the update.

Choices the paper leaves open (docs/rl_algorithms.md, 'WPSM'):
- "positive" = the response passes (reward >= pass_threshold); the reconstructed equation has no explicit A > 0;
- H(y_i) = the mean surprisal of the sampled tokens under the rollout engine, -mean_t log pi_infer(y_it): a
  Monte-Carlo estimate of the mean per-token entropy along the response, available before the update;
- acc_x is an exponential moving average over the visits of x (keyed by the prompt text), updated with the
  current group before the mask is decided, so a query seen once uses its current group's pass rate;
- tau, eta, alpha are not published: defaults tau 0.75, eta 0.2 nats/token, alpha 1.0 (a full mask).
The running rates live in the controller process and restart with it (a resumed run re-learns them).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from rl_platform.config import check
from rl_platform.types import Rollout


@dataclass(kw_only=True, slots=True)
class WPSMConfig:
    """Down-weighting of confidently solved responses of well-learned queries (`--set loop.wpsm.enabled=true`)."""

    enabled: bool = False
    tau: float = 0.75
    """A query is well learned when its running success rate exceeds this."""
    eta: float = 0.2
    """Entropy bound (nats per token): passing responses below it of a well-learned query are masked."""
    alpha: float = 1.0
    """M_i: a masked response keeps (1 - alpha) of its advantage (1.0: removed, 0: WPSM off)."""
    momentum: float = 0.5
    """acc_x <- momentum * acc_x + (1 - momentum) * group pass rate, on every visit after the first."""

    def __post_init__(self) -> None:
        check(0.0 <= self.tau < 1.0, "WPSMConfig.tau", self.tau, "must be in [0, 1)", "use 0.75")
        check(self.eta > 0.0, "WPSMConfig.eta", self.eta, "must be > 0 (nats per token)", "use 0.2")
        check(0.0 <= self.alpha <= 1.0, "WPSMConfig.alpha", self.alpha, "must be in [0, 1]", "use 1.0")
        check(0.0 <= self.momentum < 1.0, "WPSMConfig.momentum", self.momentum, "must be in [0, 1)", "use 0.5")


def response_entropy(rollout: Rollout) -> float:
    """Mean surprisal of the sampled tokens under the engine (nats per token); inf for an empty response."""
    logprobs = rollout.completion.generator_logprobs
    return -statistics.fmean(logprobs) if logprobs else float("inf")


class WPSM:
    """Running per-query success rates and the advantage reweighting.

    Example:
        wpsm = WPSM(WPSMConfig(enabled=True), pass_threshold=1.0)
        advantages, metrics = wpsm.reweight(rollouts, advantages, num_samples_per_prompt=8)
    """

    def __init__(self, config: WPSMConfig, pass_threshold: float) -> None:
        self.config = config
        self.pass_threshold = pass_threshold
        self.success_rate: dict[str, float] = {}
        """Prompt text -> running success rate acc_x."""

    def observe(self, group: Sequence[Rollout]) -> float | None:
        """Updates acc_x with one group and returns it (None when no sample of the group was scored)."""
        values = [r.reward.value for r in group if r.reward.value is not None]
        if not values:
            return self.success_rate.get(group[0].prompt.text)
        rate = sum(v >= self.pass_threshold for v in values) / len(values)
        key = group[0].prompt.text
        previous = self.success_rate.get(key)
        m = self.config.momentum
        self.success_rate[key] = rate if previous is None else m * previous + (1 - m) * rate
        return self.success_rate[key]

    def is_well_learned(self, rollout: Rollout, acc: float | None) -> bool:
        value = rollout.reward.value
        return (acc is not None and acc > self.config.tau and value is not None and value >= self.pass_threshold
                and response_entropy(rollout) < self.config.eta)

    def reweight(self, rollouts: Sequence[Rollout], advantages: Sequence[float | None],
                 num_samples_per_prompt: int) -> tuple[list[float | None], dict[str, float]]:
        """Advantages with well-learned responses scaled by (1 - alpha), and `wpsm/*` metrics."""
        if not self.config.enabled:
            return list(advantages), {}
        out = list(advantages)
        flagged = scored = well_learned_queries = groups = 0
        for start in range(0, len(rollouts), num_samples_per_prompt):
            group = rollouts[start:start + num_samples_per_prompt]
            acc = self.observe(group)
            groups += 1
            well_learned_queries += acc is not None and acc > self.config.tau
            for i, rollout in enumerate(group, start):
                scored += out[i] is not None
                if out[i] is not None and self.is_well_learned(rollout, acc):
                    out[i] = out[i] * (1.0 - self.config.alpha)
                    flagged += 1
        return out, {"wpsm/well_learned_frac": flagged / max(1, scored),
                     "wpsm/well_learned_query_frac": well_learned_queries / max(1, groups)}
