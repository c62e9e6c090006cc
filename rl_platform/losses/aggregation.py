"""Loss aggregation: how per-token terms become one scalar (`--set learner.loss.aggregation=<name>`).

    token_mean           sum_i sum_t v_it / N_tokens                        DAPO, arXiv:2503.14476
    seq_mean_token_mean  sum_i (sum_t v_it / |y_i|) / N_seqs                GRPO paper, GSPO
    constant             sum_i sum_t v_it / (N_seqs * C)                    Dr. GRPO, arXiv:2503.20783
N_tokens and N_seqs are counted over the whole optimizer step (every micro-batch), never over one
micro-batch: the learner sums micro-batch losses, so a per-micro-batch normaliser would make the gradient
depend on how the batch is split (it did for GSPO before; tests/unit/test_losses.py checks the invariance).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rl_platform.config import Registry, check

AGGREGATIONS = Registry("loss aggregation")


@dataclass(kw_only=True, slots=True)
class AggregationConfig:
    """Base of the aggregation variants."""

    @classmethod
    def registry(cls) -> dict[str, type]:
        return AGGREGATIONS.classes()

    def reduce(self, values_BS: Tensor, mask_BS: Tensor, num_global_tokens: int, num_global_seqs: int) -> Tensor:
        raise NotImplementedError


def global_counts(mask_BS: Tensor, num_global_tokens: int, num_global_seqs: int) -> tuple[int, int]:
    """The step-global counts, or this call's own when the caller gave none (0)."""
    tokens = num_global_tokens or int(mask_BS.sum())
    seqs = num_global_seqs or int((mask_BS.sum(-1) > 0).sum())
    return max(1, tokens), max(1, seqs)


@AGGREGATIONS.register("token_mean")
@dataclass(kw_only=True, slots=True)
class TokenMean(AggregationConfig):
    """Every response token weighs the same, so long answers are not down-weighted."""

    def reduce(self, values_BS: Tensor, mask_BS: Tensor, num_global_tokens: int, num_global_seqs: int) -> Tensor:
        tokens, _ = global_counts(mask_BS, num_global_tokens, num_global_seqs)
        return (values_BS * mask_BS).sum() / tokens


@AGGREGATIONS.register("seq_mean_token_mean")
@dataclass(kw_only=True, slots=True)
class SeqMeanTokenMean(AggregationConfig):
    """Each sequence's token mean, then the mean over sequences (every sequence weighs the same)."""

    def reduce(self, values_BS: Tensor, mask_BS: Tensor, num_global_tokens: int, num_global_seqs: int) -> Tensor:
        _, seqs = global_counts(mask_BS, num_global_tokens, num_global_seqs)
        lengths_B = mask_BS.sum(-1).clamp_min(1)
        return ((values_BS * mask_BS).sum(-1) / lengths_B).sum() / seqs


@AGGREGATIONS.register("constant")
@dataclass(kw_only=True, slots=True)
class ConstantNormaliser(AggregationConfig):
    """Dr. GRPO: token sums divided by a constant per sequence, so no length bias enters the gradient."""

    tokens_per_sequence: float = 48.0
    """The constant C; Dr. GRPO uses the generation budget (the recipes' sampling.max_tokens is 48)."""

    def __post_init__(self) -> None:
        check(self.tokens_per_sequence > 0, "ConstantNormaliser.tokens_per_sequence", self.tokens_per_sequence,
              "must be > 0", "use the generation budget, sampling.max_tokens")

    def reduce(self, values_BS: Tensor, mask_BS: Tensor, num_global_tokens: int, num_global_seqs: int) -> Tensor:
        _, seqs = global_counts(mask_BS, num_global_tokens, num_global_seqs)
        return (values_BS * mask_BS).sum() / (seqs * self.tokens_per_sequence)
