"""Configuration of the elastic ultra-sparse MoE transformer and of one of its sub-models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rl_platform.config import check


@dataclass(kw_only=True, slots=True)
class MoEModelConfig:
    """Architecture of the MoE decoder (ERNIE 5.0 style by default; exported as HF `Ernie4_5_MoeForCausalLM`).

    A few switches (RoPE layout, q/k-norm, gate renormalisation, dense layers) make the same decoder compute
    what Qwen3-MoE and OLMoE compute; docs/bring_your_own_model.md lists which Hugging Face architecture
    sets which (rl_platform/model/architectures/).

    Example:
        MoEModelConfig(vocab_size=1024, hidden_size=128, num_layers=4, num_experts=32, top_k=4)
        MoEModelConfig(num_layers=4, dense_layers=(0,), dense_ffn_dim=256, rope_style="neox", qk_norm="head",
                       normalize_gates=False, num_shared_experts=0, hf_architecture="Qwen3MoeForCausalLM")
    """

    vocab_size: int = 1024
    """Tokens in the vocabulary (must equal the tokenizer's length)."""
    hidden_size: int = 128
    """Model dim D."""
    num_layers: int = 4
    """Decoder layers; each has an MoE FFN except those in `dense_layers` (our own pretraining uses none, see
    docs/algorithms.md, 'Aux-loss-free balancing and routing diagnostics')."""
    dense_layers: tuple[int, ...] = ()
    """Decoder layers whose FFN is one dense SwiGLU of width dense_ffn_dim (ERNIE-4.5's first layer, Qwen3-MoE's
    mlp_only_layers). They carry no routes: route tensors cover the MoE layers only (`moe_layer_ids`)."""
    dense_ffn_dim: int = 0
    """Hidden width of the dense layers' SwiGLU FFN (HF `intermediate_size`); > 0 when dense_layers is set."""
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
    rope_style: Literal["interleaved", "neox"] = "interleaved"
    """Which dims RoPE rotates together: interleaved pairs (x[2i], x[2i+1]) as ERNIE-4.5 does, or the two
    halves (x[i], x[i + Dh/2]) as GPT-NeoX, Llama, Qwen3-MoE and OLMoE do."""
    qk_norm: Literal["none", "head", "full"] = "none"
    """RMSNorm of queries and keys before RoPE: none (ERNIE-4.5), per head over Dh (Qwen3), or over the whole
    projection of all heads (OLMoE)."""
    normalize_gates: bool = True
    """Divide the chosen experts' softmax probabilities by their sum (ERNIE-4.5, Qwen3 with norm_topk_prob);
    False keeps the raw probabilities (OLMoE, Qwen3 without norm_topk_prob)."""
    hf_architecture: str = "Ernie4_5_MoeForCausalLM"
    """The Hugging Face architecture this model is exported as (rl_platform.model.architectures lists them)."""
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
        check(all(0 <= i < self.num_layers for i in self.dense_layers)
              and list(self.dense_layers) == sorted(set(self.dense_layers))
              and len(self.dense_layers) < self.num_layers,
              "MoEModelConfig.dense_layers", self.dense_layers,
              f"must be ascending unique layer ids in [0, {self.num_layers}) leaving at least one MoE layer",
              "list the dense layers in order")
        check(not self.dense_layers or self.dense_ffn_dim > 0, "MoEModelConfig.dense_ffn_dim", self.dense_ffn_dim,
              "must be > 0 when dense_layers is set", "give the dense FFN width (HF intermediate_size)")
        check(self.num_shared_experts >= 0, "MoEModelConfig.num_shared_experts", self.num_shared_experts,
              "must be >= 0", "use 0 for no shared expert")
        check(0.0 < self.rr_tau <= 1.0, "MoEModelConfig.rr_tau", self.rr_tau, "must be in (0, 1]",
              "use 0.9-0.95 (paper) or 1.0 for dense-equivalent")
        check(self.rr_block_size % self.rr_stride == 0, "MoEModelConfig.rr_block_size", self.rr_block_size,
              f"must be a multiple of rr_stride={self.rr_stride}", "use e.g. block 64 with stride 8")

    @property
    def moe_layer_ids(self) -> tuple[int, ...]:
        """Decoder layers with an MoE FFN, ascending: route slot m belongs to layer moe_layer_ids[m]."""
        dense = set(self.dense_layers)
        return tuple(i for i in range(self.num_layers) if i not in dense)

    def num_params(self, *, active: bool = False, top_k: int | None = None) -> int:
        """Parameter count; `active=True` counts only what one token uses (shared + top-k experts)."""
        d, f = self.hidden_size, self.expert_ffn_dim
        attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_expert = 3 * d * f
        routed = (top_k or self.top_k) if active else self.num_experts
        moe_layer = attn + 2 * d + d * self.num_experts + (routed + self.num_shared_experts) * per_expert
        dense_layer = attn + 2 * d + 3 * d * self.dense_ffn_dim
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        num_dense = len(self.dense_layers)
        return (self.num_layers - num_dense) * moe_layer + num_dense * dense_layer + embed + d

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
