"""What every policy loss consumes and returns. Shapes: B sequences, S positions (target-aligned: position t
holds the log-probability of token t+1).

A policy loss is composed of typed pieces, each a registered variant picked by config (docs/rl_algorithms.md,
'RL objectives'):
    ratio        token | sequence (GSPO)                       -> r_BS, the importance ratio each token uses
    clip         symmetric | clip_higher | dual_clip           -> per-token surrogate objective
    correction   none | tis | icepop | seq_icepop              -> detached per-token weight w_BS from the
                                                                  train-inference gap pi_train(old) / pi_infer
    aggregation  token_mean | seq_mean_token_mean | constant   -> one scalar, normalised by step-global counts
    loss = - aggregate(w_BS * surrogate_BS) + kl_coef * aggregate(k3_BS)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from rl_platform.config import Registry

LOSSES = Registry("policy loss")


@dataclass(kw_only=True, slots=True)
class LossConfig:
    """Base of the policy-loss variants (`--set learner.loss=<name>`)."""

    kl_coef: float = 0.0
    """Weight of the k3 KL estimate to the reference policy; 0 skips the reference forward entirely."""

    @classmethod
    def registry(cls) -> dict[str, type]:
        return LOSSES.classes()

    def loss(self, inputs: PolicyLossInputs) -> PolicyLossOutput:
        raise NotImplementedError


@dataclass
class PolicyLossInputs:
    logprobs_BS: Tensor
    """Current policy (with grad), at the sampling temperature."""
    old_logprobs_BS: Tensor
    """Learner's old policy (no grad), the importance-ratio denominator."""
    advantages_B: Tensor
    mask_BS: Tensor
    """1.0 at response positions of non-failed samples."""
    generator_logprobs_BS: Tensor | None = None
    """The rollout engine's (behaviour policy's) log-probs of the sampled tokens, temperature 1 as the engine
    reports them. The train-inference corrections compare them with `old_logprobs_t1_BS`; None when the caller
    has none (then only `correction=none` works)."""
    old_logprobs_t1_BS: Tensor | None = None
    """The old policy's temperature-1 log-probs, on the engine's scale; None: `old_logprobs_BS` (temperature 1)."""
    ref_logprobs_BS: Tensor | None = None
    num_global_tokens: int = 0
    """Scored response tokens in the whole optimizer step (0: this call's own count)."""
    num_global_seqs: int = 0
    """Sequences with at least one scored token in the whole optimizer step (0: this call's own count).
    Normalising by step-global counts makes the summed micro-batch losses equal the one-batch loss."""


@dataclass
class PolicyLossOutput:
    loss: Tensor
    clip_frac: float
    """Share of scored tokens whose clipped branch is active."""
    kl_to_ref: float
    """Mean k3 KL to the reference over this call's scored tokens (0 without a KL term)."""
    ratio_mean: float
    """Mean importance ratio over scored tokens."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Further `area/name` metrics, each a mean over this call's scored tokens (the learner weights them by
    the call's token share)."""


def kl_k3(logprobs_BS: Tensor, ref_logprobs_BS: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - pi) - (ref - pi) - 1 (>= 0, unbiased)."""
    delta = ref_logprobs_BS - logprobs_BS
    return delta.exp() - delta - 1.0
