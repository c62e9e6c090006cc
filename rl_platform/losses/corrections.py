"""Train-inference corrections (`--set learner.loss.correction=<name>`): a detached weight per token from the
gap between the learner's and the rollout engine's probability of the same sampled token under the same
(old) weights,

    rho_it = pi_train(y_it; theta_old) / pi_infer(y_it; theta_old)       (bf16 engine, other kernels, routes)

    none        w_it = 1
    tis         w_it = min(rho_it, C)                     truncated IS, token level, C = 2.0
    icepop      w_it = M(rho_it; alpha, beta)             IcePop token mask, [alpha, beta] = [0.5, 5.0]
    seq_icepop  w_it = M(rho_i;  alpha, beta)             the same on the sequence's geometric-mean ratio
                rho_i = exp(mean_t log rho_it)            (GSPO-IcePop, ERNIE 5.0 Eq. 2)
    M(k; alpha, beta) = k if alpha <= k <= beta else 0

MISC (ERNIE 5.0 Eq. 3, "Mixed-IcePop") is `icepop` on top of the GSPO sequence ratio: the loss preset `misc`
(rl_platform/losses/gspo.py). A masked token's weight is exactly 0, so it contributes exactly zero gradient.
Sources and defaults: docs/rl_algorithms.md, 'Train-inference corrections'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rl_platform.config import Registry, check

CORRECTIONS = Registry("train-inference correction")


@dataclass
class CorrectionWeights:
    weight_BS: Tensor
    """Detached weight per position (>= 0)."""
    masked_BS: Tensor | None = None
    """bool: positions whose weight the correction set to 0 (mask variants)."""
    capped_BS: Tensor | None = None
    """bool: positions whose ratio was truncated at the cap (TIS)."""

    def metrics(self, mask_BS: Tensor) -> dict[str, float]:
        """Token means over the scored positions."""
        n = mask_BS.sum().clamp_min(1)
        out = {"correction/weight_mean": float((self.weight_BS * mask_BS).sum() / n)}
        if self.masked_BS is not None:
            out["correction/masked_frac"] = float((self.masked_BS.float() * mask_BS).sum() / n)
        if self.capped_BS is not None:
            out["correction/capped_frac"] = float((self.capped_BS.float() * mask_BS).sum() / n)
        return out


@dataclass(kw_only=True, slots=True)
class CorrectionConfig:
    """Base of the correction variants."""

    @classmethod
    def registry(cls) -> dict[str, type]:
        return CORRECTIONS.classes()

    def weights(self, old_logprobs_BS: Tensor, generator_logprobs_BS: Tensor | None,
                mask_BS: Tensor) -> CorrectionWeights:
        """Weights from the old policy's and the engine's temperature-1 log-probs of the sampled tokens."""
        raise NotImplementedError


def _log_rho(old_logprobs_BS: Tensor, generator_logprobs_BS: Tensor | None, mask_BS: Tensor, name: str) -> Tensor:
    if generator_logprobs_BS is None:
        raise ValueError(f"correction {name!r} needs the rollout engine's log-probs (generator_logprobs_BS), but the "
                         "loss was called without them; pass them in PolicyLossInputs or use correction='none'")
    # Positions outside the mask hold padding; zero them so exp() cannot overflow into a NaN there.
    return ((old_logprobs_BS - generator_logprobs_BS) * mask_BS).detach()


def _band_mask(rho: Tensor, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
    inside = (rho >= alpha) & (rho <= beta)
    return torch.where(inside, rho, torch.zeros_like(rho)), ~inside


def _check_band(where: str, alpha: float, beta: float) -> None:
    check(0.0 <= alpha < 1.0, f"{where}.alpha", alpha, "must be in [0, 1)", "use 0.5")
    check(beta > 1.0, f"{where}.beta", beta, "must be > 1", "use 5.0")


@CORRECTIONS.register("none")
@dataclass(kw_only=True, slots=True)
class NoCorrection(CorrectionConfig):
    """Trust the engine's samples as on-policy (weight 1)."""

    def weights(self, old_logprobs_BS: Tensor, generator_logprobs_BS: Tensor | None,
                mask_BS: Tensor) -> CorrectionWeights:
        return CorrectionWeights(weight_BS=torch.ones_like(old_logprobs_BS))


@CORRECTIONS.register("tis")
@dataclass(kw_only=True, slots=True)
class TISCorrection(CorrectionConfig):
    """Truncated importance sampling, token level: w = min(rho, C) (cap 2.0, the default of verl/slime/SkyRL)."""

    cap: float = 2.0
    """C: ratios above it are truncated (the token keeps weight C)."""

    def __post_init__(self) -> None:
        check(self.cap >= 1.0, "TISCorrection.cap", self.cap, "must be >= 1", "use 2.0")

    def weights(self, old_logprobs_BS: Tensor, generator_logprobs_BS: Tensor | None,
                mask_BS: Tensor) -> CorrectionWeights:
        rho = _log_rho(old_logprobs_BS, generator_logprobs_BS, mask_BS, "tis").exp()
        return CorrectionWeights(weight_BS=rho.clamp(max=self.cap), capped_BS=rho > self.cap)


@CORRECTIONS.register("icepop")
@dataclass(kw_only=True, slots=True)
class IcePopCorrection(CorrectionConfig):
    """IcePop token mask (Ring-1T, arXiv:2510.18855): w = rho inside [alpha, beta], else 0."""

    alpha: float = 0.5
    beta: float = 5.0

    def __post_init__(self) -> None:
        _check_band("IcePopCorrection", self.alpha, self.beta)

    def weights(self, old_logprobs_BS: Tensor, generator_logprobs_BS: Tensor | None,
                mask_BS: Tensor) -> CorrectionWeights:
        rho = _log_rho(old_logprobs_BS, generator_logprobs_BS, mask_BS, "icepop").exp()
        weight, masked = _band_mask(rho, self.alpha, self.beta)
        return CorrectionWeights(weight_BS=weight, masked_BS=masked)


@CORRECTIONS.register("seq_icepop")
@dataclass(kw_only=True, slots=True)
class SeqIcePopCorrection(CorrectionConfig):
    """Sequence-level IcePop mask on the length-normalised ratio rho_i (GSPO-IcePop, ERNIE 5.0 Eq. 2): a
    sequence outside [alpha, beta] loses every token. ERNIE 5.0 reports this variant collapses entropy early
    because it prunes many low-entropy responses; whether its ratio is length-normalised is not stated there."""

    alpha: float = 0.5
    beta: float = 5.0

    def __post_init__(self) -> None:
        _check_band("SeqIcePopCorrection", self.alpha, self.beta)

    def weights(self, old_logprobs_BS: Tensor, generator_logprobs_BS: Tensor | None,
                mask_BS: Tensor) -> CorrectionWeights:
        log_rho = _log_rho(old_logprobs_BS, generator_logprobs_BS, mask_BS, "seq_icepop")
        seq_rho_B = (log_rho.sum(-1) / mask_BS.sum(-1).clamp_min(1)).exp()
        weight_B, masked_B = _band_mask(seq_rho_B, self.alpha, self.beta)
        return CorrectionWeights(weight_BS=weight_B[:, None].expand_as(log_rho).contiguous(),
                                 masked_BS=masked_B[:, None].expand_as(log_rho))

