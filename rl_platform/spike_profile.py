"""What makes a step's train-inference KL high, from its dump alone (no weights, no model): how many tokens carry
it, how probable those tokens were when the engine sampled them, and whether a route flip precedes them
(docs/routing_replay.md, 'Results').

The per-step KL is a mean over the step's scored tokens, so one token with |log r| ~ 1 among ~1000 moves it by
~5e-4. A spike is "a few tokens" when `tokens_for_half_kl` is small; those tokens are "improbable samples"
when the engine gave them a low probability (sampling at temperature 1 draws them now and then, and a
low-probability token's log-prob is the most sensitive to rounding of the logits); they are "routing" when
the learner's live router disagrees with the engine's routes at or before the token in its sequence.
"""

from __future__ import annotations

import math

from torch import Tensor

from rl_platform.replay_forensics import kl_terms_BS
from rl_platform.step_dump import StepDump

LOW_PROB = 0.01
"""A sampled token the engine gave less than this probability counts as an improbable sample."""


def flips_so_far_BS(rollout_routes_BSLK: Tensor | None, live_routes_BSLK: Tensor | None) -> Tensor | None:
    """Per position: how many (position, layer) route sets up to and including it differ between the learner's
    live router and the engine (None without both routes)."""
    if rollout_routes_BSLK is None or live_routes_BSLK is None:
        return None
    differs = (live_routes_BSLK.long().sort(-1).values != rollout_routes_BSLK.long().sort(-1).values).any(-1)
    valid = (rollout_routes_BSLK[..., 0] >= 0) & (live_routes_BSLK[..., 0] >= 0)
    return (differs & valid).sum(-1).cumsum(-1)


def spike_profile(generator_lp_BS: Tensor, learner_lp_BS: Tensor, mask_BS: Tensor,
                  flips_BS: Tensor | None = None) -> dict[str, float]:
    """KL concentration and the nature of the tokens that carry it, for one step."""
    mask = mask_BS.bool()
    terms = kl_terms_BS(learner_lp_BS, generator_lp_BS)[mask].double()
    total = float(terms.sum())
    n = int(mask.sum())
    out: dict[str, float] = {"tokens": float(n), "kl": total / n if n else math.nan}
    if n == 0 or total <= 0:
        return out
    ordered = terms.sort(descending=True).values
    out["tokens_for_half_kl"] = float(int((ordered.cumsum(0) < 0.5 * total).sum()) + 1)
    p_engine = generator_lp_BS[mask].double().exp()
    low = p_engine < LOW_PROB
    out["low_prob_token_frac"] = float(low.double().mean())
    out["low_prob_kl_mass"] = float(terms[low].sum() / total)
    worst = int(terms.argmax())
    out["worst_token_kl_mass"] = float(terms[worst] / total)
    out["worst_token_p_engine"] = float(p_engine[worst])
    out["worst_token_p_learner"] = float(learner_lp_BS[mask][worst].double().exp())
    if flips_BS is not None:
        after = flips_BS[mask] > 0
        out["after_flip_token_frac"] = float(after.double().mean())
        out["after_flip_kl_mass"] = float(terms[after].sum() / total)
        out["worst_token_after_flip"] = float(after[worst])
    return out


def dump_spike_profile(dump: StepDump) -> dict[str, float]:
    """spike_profile of a dumped update (the learner's logged log-probs, the engine's, the live-route flips)."""
    batch = dump.batch
    return spike_profile(batch.generator_logprobs_BS, dump.learner_lp_BS, batch.mask_BS,
                         flips_so_far_BS(batch.rollout_routes_BSLK, dump.live_routes_BSLK))
