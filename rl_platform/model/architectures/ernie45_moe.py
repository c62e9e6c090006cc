"""ERNIE-4.5 MoE (`Ernie4_5_MoeForCausalLM`): interleaved RoPE, no q/k-norm, softmax router whose
`e_score_correction_bias` only selects, renormalised gates, shared experts, dense layers outside
[moe_layer_start_index, moe_layer_end_index] or off the moe_layer_interval (real ERNIE-4.5 starts at 1)."""

from __future__ import annotations

from typing import Any

from rl_platform.model.architectures.base import HFArchitecture, common_fields, common_hf_fields, register, unsupported
from rl_platform.model.config import MoEModelConfig


@register
class Ernie45Moe(HFArchitecture):
    name = "Ernie4_5_MoeForCausalLM"
    model_type = "ernie4_5_moe"
    router_bias_key = "moe_statics.e_score_correction_bias"
    shared_expert_key = "shared_experts"

    @classmethod
    def config_from_hf(cls, hf: Any) -> MoEModelConfig:
        if getattr(hf, "use_bias", False):
            raise unsupported("use_bias", True, "attention and dense-FFN biases are not implemented",
                              "use a checkpoint with use_bias=false (every released ERNIE-4.5 MoE)")
        if not isinstance(hf.moe_num_experts, int):
            raise unsupported("moe_num_experts", hf.moe_num_experts, "multimodal expert groups are not supported",
                              "use a text-only ERNIE-4.5 MoE checkpoint")
        start, end, interval = hf.moe_layer_start_index, hf.moe_layer_end_index, hf.moe_layer_interval
        if end < 0:  # older configs write -1 for "the last layer"
            end = hf.num_hidden_layers - 1
        dense = tuple(i for i in range(hf.num_hidden_layers)
                      if not ((i + 1) % interval == 0 and start <= i <= end))
        return MoEModelConfig(
            **common_fields(hf), num_experts=hf.moe_num_experts, top_k=hf.moe_k,
            num_shared_experts=hf.moe_num_shared_experts or 0, expert_ffn_dim=hf.moe_intermediate_size,
            dense_layers=dense, dense_ffn_dim=hf.intermediate_size if dense else 0,
            aux_loss_coef=getattr(hf, "router_aux_loss_coef", 0.0) or 0.0,
            rope_style="interleaved", qk_norm="none", normalize_gates=True, hf_architecture=cls.name)

    @classmethod
    def config_to_hf(cls, config: MoEModelConfig, dense_layers: tuple[int, ...], num_layers: int, num_experts: int,
                     top_k: int) -> dict:
        moe = [i for i in range(num_layers) if i not in set(dense_layers)]
        if moe != list(range(moe[0], moe[-1] + 1)):
            raise ValueError(f"Ernie4_5_MoeForCausalLM can only express dense layers before and after one run of MoE "
                             f"layers (moe_layer_start_index..moe_layer_end_index); got dense layers {dense_layers} of "
                             f"{num_layers}. Keep a contiguous run of MoE layers in the sub-model.")
        return {
            "architectures": [cls.name], "model_type": cls.model_type, **common_hf_fields(config, num_layers),
            "intermediate_size": config.dense_ffn_dim or config.expert_ffn_dim * max(1, config.num_shared_experts),
            "use_bias": False, "moe_intermediate_size": config.expert_ffn_dim, "moe_k": top_k,
            "moe_num_experts": num_experts, "moe_num_shared_experts": config.num_shared_experts,
            "moe_layer_start_index": moe[0], "moe_layer_end_index": moe[-1], "moe_layer_interval": 1,
            "moe_norm_min": 1e-12, "router_aux_loss_coef": config.aux_loss_coef,
        }
