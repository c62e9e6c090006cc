"""Tiny random checkpoints of every supported HF MoE architecture, written by transformers itself
(`save_pretrained`, sharded with an index), with a locally trained tokenizer and chat template: the
"bring your own model" directories the tests, `grpo_hf_smoke` and the docs' examples use (no model hub).

Every weight is drawn at random (norm weights around 1, routers with a spread, ERNIE's selection bias
non-zero) so that a wrong name, a missing q/k-norm or a wrong RoPE layout shows in the logits and routes;
HF's own init leaves routers at zero (uniform routing) and norms at exactly one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from rl_platform.model.tokenizer import train_tokenizer
from rl_platform.tasks.arithmetic import make_problem


@dataclass(kw_only=True, slots=True)
class TinyHFConfig:
    """Sizes of a tiny checkpoint (about 0.3 M parameters at the defaults).

    Example:
        build_tiny_hf("/tmp/q", "Qwen3MoeForCausalLM", TinyHFConfig(num_layers=3, dense_layers=(0,)))
    """

    vocab_size: int = 320
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 2
    """hidden_size / num_heads is the head dim: vLLM's CPU attention needs 32 or more (16 is refused)."""
    num_kv_heads: int = 1
    num_experts: int = 8
    top_k: int = 2
    expert_ffn_dim: int = 32
    dense_ffn_dim: int = 96
    dense_layers: tuple[int, ...] = ()
    """Dense (non-MoE) layers: Qwen3 mlp_only_layers; ERNIE a prefix (moe_layer_start_index); OLMoE none."""
    norm_topk_prob: bool = True
    """Qwen3 only: renormalise the top-k gates."""
    num_shared_experts: int = 1
    """ERNIE only."""
    tie_word_embeddings: bool = False
    std: float = 0.1
    """Std of every weight matrix (routers included)."""
    seed: int = 0
    max_shard_bytes: int = 200_000
    """Shard size: small enough that the directory has an index and several shards."""


def build_tiny_hf(out_dir: str | Path, architecture: str, config: TinyHFConfig | None = None) -> Path:
    """Writes a float32 random `architecture` checkpoint + tokenizer (with chat template) to `out_dir`."""
    c = config or TinyHFConfig()
    out = Path(out_dir)
    rng = random.Random(c.seed)
    texts = [(p := make_problem(rng)).prompt + p.solution for _ in range(1500)]
    tokenizer = train_tokenizer(texts, vocab_size=c.vocab_size)
    hf_config = _hf_config(architecture, c, len(tokenizer))
    from transformers import AutoModelForCausalLM

    torch.manual_seed(c.seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("e_score_correction_bias"):
                p.normal_(0.0, 0.01)
            elif p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, c.std)
    model.save_pretrained(out, max_shard_size=c.max_shard_bytes)
    tokenizer.save_pretrained(out)
    return out


def _qwen3(c: TinyHFConfig, common: dict):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(**common, head_dim=c.hidden_size // c.num_heads, num_experts=c.num_experts,
                          num_experts_per_tok=c.top_k, moe_intermediate_size=c.expert_ffn_dim,
                          intermediate_size=c.dense_ffn_dim, mlp_only_layers=list(c.dense_layers),
                          decoder_sparse_step=1, norm_topk_prob=c.norm_topk_prob)


def _ernie45(c: TinyHFConfig, common: dict):
    from transformers import Ernie4_5_MoeConfig

    start = len(c.dense_layers)
    if tuple(range(start)) != c.dense_layers:
        raise ValueError(f"TinyHFConfig.dense_layers={c.dense_layers}: ERNIE's dense layers are a prefix here")
    return Ernie4_5_MoeConfig(**common, moe_num_experts=c.num_experts, moe_k=c.top_k,
                              moe_intermediate_size=c.expert_ffn_dim, intermediate_size=c.dense_ffn_dim,
                              moe_num_shared_experts=c.num_shared_experts, moe_layer_start_index=start,
                              moe_layer_end_index=c.num_layers - 1, moe_layer_interval=1)


def _olmoe(c: TinyHFConfig, common: dict):
    from transformers import OlmoeConfig

    if c.dense_layers:
        raise ValueError("TinyHFConfig.dense_layers: OLMoE has no dense layers")
    return OlmoeConfig(**common, num_experts=c.num_experts, num_experts_per_tok=c.top_k,
                       intermediate_size=c.expert_ffn_dim, norm_topk_prob=False, rms_norm_eps=1e-5)


_BUILDERS = {"Qwen3MoeForCausalLM": _qwen3, "Ernie4_5_MoeForCausalLM": _ernie45, "OlmoeForCausalLM": _olmoe}


def _hf_config(architecture: str, c: TinyHFConfig, vocab_size: int):
    if architecture not in _BUILDERS:
        raise ValueError(f"build_tiny_hf: architecture={architecture!r}; use one of {sorted(_BUILDERS)}")
    common = dict(vocab_size=vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
                  num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, max_position_embeddings=1024,
                  tie_word_embeddings=c.tie_word_embeddings, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  architectures=[architecture])
    return _BUILDERS[architecture](c, common)
