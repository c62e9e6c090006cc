"""The composed clipped policy-gradient loss (module doc of rl_platform/losses/base.py):

    r_BS  = ratio(logp, old_logp)                       token or GSPO sequence level
    J_BS  = clip(r_BS, A)                               symmetric | clip-higher | dual-clip surrogate
    w_BS  = correction(old_logp_t1, generator_logp)     detached train-inference weight (0 = masked)
    loss  = - aggregate(w_BS * J_BS) + kl_coef * aggregate(k3(logp, ref_logp))
The presets (`grpo`, `dr_grpo`, `gspo`, `gspo_icepop`, `misc`) are this class with other defaults; any piece
can be swapped on top of a preset: `--set learner.loss=misc --set learner.loss.correction=tis`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rl_platform.config import check
from rl_platform.losses.aggregation import AggregationConfig, TokenMean
from rl_platform.losses.base import LossConfig, PolicyLossInputs, PolicyLossOutput, kl_k3
from rl_platform.losses.clipping import ClipConfig, ClipHigher
from rl_platform.losses.corrections import CorrectionConfig, NoCorrection
from rl_platform.losses.ratio import RatioConfig, TokenRatio


@dataclass(kw_only=True, slots=True)
class PolicyLossConfig(LossConfig):
    """A clipped surrogate assembled from registered pieces; subclasses are the named presets."""

    ratio: RatioConfig = field(default_factory=TokenRatio)
    """Importance-ratio level: token | sequence."""
    clip: ClipConfig = field(default_factory=ClipHigher)
    """Clipping: symmetric | clip_higher | dual_clip."""
    correction: CorrectionConfig = field(default_factory=NoCorrection)
    """Train-inference correction: none | tis | icepop | seq_icepop."""
    aggregation: AggregationConfig = field(default_factory=TokenMean)
    """Aggregation: token_mean | seq_mean_token_mean | constant."""

    def __post_init__(self) -> None:
        check(self.kl_coef >= 0.0, f"{type(self).__name__}.kl_coef", self.kl_coef, "must be >= 0",
              "use 0 or ~1e-3..0.1")

    def loss(self, x: PolicyLossInputs) -> PolicyLossOutput:
        mask = x.mask_BS
        ratio_BS = self.ratio.ratio(x.logprobs_BS, x.old_logprobs_BS, mask)
        surrogate_BS, clipped_BS = self.clip.objective(ratio_BS, x.advantages_B[:, None])
        old_t1 = x.old_logprobs_BS if x.old_logprobs_t1_BS is None else x.old_logprobs_t1_BS
        correction = self.correction.weights(old_t1.detach(), x.generator_logprobs_BS, mask)
        counts = (x.num_global_tokens, x.num_global_seqs)
        loss = -self.aggregation.reduce(correction.weight_BS * surrogate_BS, mask, *counts)
        kl = 0.0
        if self.kl_coef > 0 and x.ref_logprobs_BS is not None:
            kl_term = self.aggregation.reduce(kl_k3(x.logprobs_BS, x.ref_logprobs_BS), mask, *counts)
            loss = loss + self.kl_coef * kl_term
        with torch.no_grad():
            n = mask.sum().clamp_min(1)
            if self.kl_coef > 0 and x.ref_logprobs_BS is not None:
                kl = float((kl_k3(x.logprobs_BS, x.ref_logprobs_BS) * mask).sum() / n)
            clip_frac = float((clipped_BS.float() * mask).sum() / n)
            ratio_mean = float((ratio_BS * mask).sum() / n)
        return PolicyLossOutput(loss=loss, clip_frac=clip_frac, kl_to_ref=kl, ratio_mean=ratio_mean,
                                metrics=correction.metrics(mask))
