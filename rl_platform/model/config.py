"""Configuration of the elastic ultra-sparse MoE transformer and of one of its sub-models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rl_platform.config import check


@dataclass(kw_only=True, slots=True)
class MoEModelConfig:
    """Architecture of the MoE decoder (ERNIE 5.0 style; exported as HF `Ernie4_5_MoeForCausalLM`).

    Example:
        MoEModelConfig(vocab_size=1024, hidden_size=128, num_layers=4, num_experts=32, top_k=4)
    """

    vocab_size: int = 1024
    """Tokens in the vocabulary (must equal the tokenizer's length)."""
    hidden_size: int = 128
    """Model dim D."""
    num_layers: int = 4
    """Decoder layers; every layer has an MoE FFN (no dense first layer, see docs/algorithms.md,
    'Aux-loss-free balancing and routing diagnostics')."""
    num_heads: int = 4
    """Query heads."""
    num_kv_heads: int = 2
    """Key/value heads (GQA); must divide num_heads."""
    head_dim: int = 32
    """Per-head dim; even (RoPE rotates pairs)."""
    num_experts: int = 32
    """Routed experts E per MoE layer."""
    top_k: int = 4
    """Default experts per token K."""
    num_shared_experts: int = 1
    """Always-on experts per layer, fused into one MLP of width num_shared_experts * expert_ffn_dim."""
    expert_ffn_dim: int = 64
    """Hidden width F of each routed expert's SiLU-gated FFN."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rms_norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    max_position_embeddings: int = 4096
    """Longest sequence the exported config advertises."""
    tie_word_embeddings: bool = True
    """Share the LM head with the input embedding."""
    initializer_range: float = 0.02
    """Std of the normal init of every matrix (router included; HF leaves the Ernie router at zero)."""
    aux_loss_coef: float = 0.0
    """Weight of the optional Switch-style balance loss; 0 relies on aux-loss-free bias balancing alone."""
    num_mtp_heads: Literal[0, 1] = 0
    """1 adds a multi-token-prediction block predicting token t+2 (training only; not exported)."""
    attention_backend: Literal["dense", "rrattention"] = "dense"
    """Prefill attention: dense causal SDPA, or RRAttention block-sparse (kernels/rrattention)."""
    rr_block_size: int = 64
    """RRAttention block size (official 128; smaller for small models)."""
    rr_stride: int = 8
    """RRAttention stride S."""
    rr_tau: float = 0.95
    """RRAttention top-tau threshold of block mass kept."""
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "num_experts", "top_k", "expert_ffn_dim"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0, f"MoEModelConfig.{name}", value, "must be a positive int",
                  "set it to a positive integer")
        check(self.num_heads % self.num_kv_heads == 0, "MoEModelConfig.num_kv_heads", self.num_kv_heads,
              f"must divide num_heads={self.num_heads}", "choose a divisor of num_heads")
        check(self.head_dim % 2 == 0, "MoEModelConfig.head_dim", self.head_dim, "must be even (RoPE pairs)",
              "use an even head_dim")
        check(self.top_k <= self.num_experts, "MoEModelConfig.top_k", self.top_k,
              f"must be <= num_experts={self.num_experts}", "lower top_k or raise num_experts")
        check(self.num_shared_experts >= 0, "MoEModelConfig.num_shared_experts", self.num_shared_experts,
              "must be >= 0", "use 0 for no shared expert")
        check(0.0 < self.rr_tau <= 1.0, "MoEModelConfig.rr_tau", self.rr_tau, "must be in (0, 1]",
              "use 0.9-0.95 (paper) or 1.0 for dense-equivalent")
        check(self.rr_block_size % self.rr_stride == 0, "MoEModelConfig.rr_block_size", self.rr_block_size,
              f"must be a multiple of rr_stride={self.rr_stride}", "use e.g. block 64 with stride 8")

    def num_params(self, *, active: bool = False, top_k: int | None = None) -> int:
        """Parameter count; `active=True` counts only what one token uses (shared + top-k experts)."""
        d, f = self.hidden_size, self.expert_ffn_dim
        attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_expert = 3 * d * f
        routed = (top_k or self.top_k) if active else self.num_experts
        layer = attn + 2 * d + d * self.num_experts + (routed + self.num_shared_experts) * per_expert
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embed + d

    def activation_ratio(self) -> float:
        """Share of the expert parameters one token activates (shared + top-k over shared + all)."""
        return (self.top_k + self.num_shared_experts) / (self.num_experts + self.num_shared_experts)


@dataclass(frozen=True, slots=True)
class SubModel:
    """One member of the elastic family: which layers run, which experts the router may pick, and k.

    Example:
        SubModel(layers=(0, 1, 3), experts=tuple(range(16)), top_k=2)   # depth 3/4, half the experts, k=2
    """

    layers: tuple[int, ...]
    """Indices of the decoder layers that run, ascending; the others are skipped (identity)."""
    experts: tuple[int, ...]
    """Expert ids the router may choose from, ascending; the same subset in every layer."""
    top_k: int
    """Experts per token (<= len(experts))."""

    @classmethod
    def full(cls, config: MoEModelConfig) -> SubModel:
        return cls(layers=tuple(range(config.num_layers)), experts=tuple(range(config.num_experts)),
                   top_k=config.top_k)

    def validate(self, config: MoEModelConfig) -> None:
        check(len(self.layers) > 0 and list(self.layers) == sorted(set(self.layers))
              and 0 <= self.layers[0] and self.layers[-1] < config.num_layers,
              "SubModel.layers", self.layers, f"must be ascending unique ids in [0, {config.num_layers})",
              "list the layers to keep in order")
        check(len(self.experts) > 0 and list(self.experts) == sorted(set(self.experts))
              and 0 <= self.experts[0] and self.experts[-1] < config.num_experts,
              "SubModel.experts", self.experts, f"must be ascending unique ids in [0, {config.num_experts})",
              "list the experts to keep in order")
        check(1 <= self.top_k <= len(self.experts), "SubModel.top_k", self.top_k,
              f"must be in [1, {len(self.experts)}] (experts kept)", "lower top_k or keep more experts")

    def is_full(self, config: MoEModelConfig) -> bool:
        return self == SubModel.full(config)

    def describe(self, config: MoEModelConfig) -> str:
        return (f"layers {len(self.layers)}/{config.num_layers}, experts {len(self.experts)}/{config.num_experts}, "
                f"top-k {self.top_k}/{config.top_k}")
