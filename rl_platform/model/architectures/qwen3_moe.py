"""Qwen3-MoE (`Qwen3MoeForCausalLM`): NeoX RoPE, per-head q/k RMSNorm, softmax top-k router without bias,
gates renormalised only with `norm_topk_prob`, no shared expert, dense layers from `mlp_only_layers` and
`decoder_sparse_step` (layer i is MoE when (i + 1) % step == 0 and i is not in mlp_only_layers)."""

from __future__ import annotations

from typing import Any

from rl_platform.model.architectures.base import HFArchitecture, common_fields, common_hf_fields, register, unsupported
from rl_platform.model.config import MoEModelConfig


@register
class Qwen3Moe(HFArchitecture):
    name = "Qwen3MoeForCausalLM"
    model_type = "qwen3_moe"

    @classmethod
    def config_from_hf(cls, hf: Any) -> MoEModelConfig:
        if getattr(hf, "attention_bias", False):
            raise unsupported("attention_bias", True, "attention biases are not implemented",
                              "use a checkpoint with attention_bias=false (every released Qwen3-MoE)")
        if getattr(hf, "use_sliding_window", False):
            raise unsupported("use_sliding_window", True, "sliding-window attention is not implemented",
                              "set use_sliding_window=false")
        mlp_only = set(getattr(hf, "mlp_only_layers", None) or [])
        step = getattr(hf, "decoder_sparse_step", 1) or 1
        dense = tuple(i for i in range(hf.num_hidden_layers) if i in mlp_only or (i + 1) % step != 0)
        return MoEModelConfig(
            **common_fields(hf), num_experts=hf.num_experts, top_k=hf.num_experts_per_tok, num_shared_experts=0,
            expert_ffn_dim=hf.moe_intermediate_size, dense_layers=dense,
            dense_ffn_dim=hf.intermediate_size if dense else 0,
            aux_loss_coef=getattr(hf, "router_aux_loss_coef", 0.0) or 0.0,
            rope_style="neox", qk_norm="head", normalize_gates=bool(hf.norm_topk_prob), hf_architecture=cls.name)

    @classmethod
    def config_to_hf(cls, config: MoEModelConfig, dense_layers: tuple[int, ...], num_layers: int, num_experts: int,
                     top_k: int) -> dict:
        return {
            "architectures": [cls.name], "model_type": cls.model_type, **common_hf_fields(config, num_layers),
            "intermediate_size": config.dense_ffn_dim or 4 * config.expert_ffn_dim,
            "moe_intermediate_size": config.expert_ffn_dim, "num_experts": num_experts,
            "num_experts_per_tok": top_k, "norm_topk_prob": config.normalize_gates,
            "decoder_sparse_step": 1, "mlp_only_layers": list(dense_layers), "attention_bias": False,
            "use_sliding_window": False, "sliding_window": None, "router_aux_loss_coef": config.aux_loss_coef,
        }
