"""What every supported Hugging Face MoE architecture shares: checkpoint names and the registry.

An architecture is a translation, not a model: `config_from_hf` maps the directory's config.json onto the
switches of our one decoder (rl_platform/model/config.py) and refuses what the decoder cannot compute;
`config_to_hf` writes config.json back; the checkpoint names below are the ones `save_pretrained` writes and
vLLM's loader and `reload_weights` read, which all three supported families share:

    model.embed_tokens.weight, model.norm.weight, lm_head.weight (untied only)
    model.layers.{i}.{input,post_attention}_layernorm.weight
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight, self_attn.{q,k}_norm.weight (q/k-norm only)
    dense layer:  model.layers.{i}.mlp.{gate,up,down}_proj.weight
    MoE layer:    model.layers.{i}.mlp.gate.weight, mlp.experts.{e}.{gate,up,down}_proj.weight
plus per family: the selection bias (`router_bias_key`) and the shared expert (`shared_expert_key`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from rl_platform.model.config import MoEModelConfig, SubModel

ARCHITECTURES: dict[str, type[HFArchitecture]] = {}
"""HF `architectures[0]` name -> its translation class."""

_EXPERT_NAMES = (("w_gate_EFD", "gate_proj"), ("w_up_EFD", "up_proj"), ("w_down_EDF", "down_proj"))


def register(cls: type[HFArchitecture]) -> type[HFArchitecture]:
    ARCHITECTURES[cls.name] = cls
    return cls


def unsupported(where: str, value: Any, why: str, fix: str) -> ValueError:
    """The error for a config.json option our decoder does not compute (where, value, why, fix)."""
    return ValueError(f"config.json {where}={value!r}: {why}; {fix}.")


class HFArchitecture:
    """One Hugging Face MoE family: config translation both ways; names follow the module docstring."""

    name: ClassVar[str]
    """The `architectures[0]` of config.json."""
    model_type: ClassVar[str]
    router_bias_key: ClassVar[str | None] = None
    """Checkpoint name (after `mlp.`) of the selection-only router bias, stored [1, E]; None: the family has none."""
    shared_expert_key: ClassVar[str | None] = None
    """Module name (after `mlp.`) of the shared expert; None: the family has none."""

    @classmethod
    def config_from_hf(cls, hf: Any) -> MoEModelConfig:
        """Our config from a transformers PretrainedConfig; ValueError naming the option it cannot compute."""
        raise NotImplementedError

    @classmethod
    def config_to_hf(cls, config: MoEModelConfig, dense_layers: tuple[int, ...], num_layers: int, num_experts: int,
                     top_k: int) -> dict:
        """config.json fields of a (sub-)model with these layers, experts and k."""
        raise NotImplementedError

    @classmethod
    def checkpoint_tensors(cls, model: Any, submodel: SubModel | None = None,
                           dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
        """(checkpoint name, tensor) of the (sub-)model, detached; routers and the bias stay float32."""
        cfg = model.config
        sm = submodel or SubModel.full(cfg)
        sm.validate(cfg)
        experts = torch.tensor(sm.experts)
        cast = (lambda t: t.detach()) if dtype is None else (lambda t: t.detach().to(dtype))
        yield "model.embed_tokens.weight", cast(model.embed_tokens.weight)
        for new_index, old_index in enumerate(sm.layers):
            layer = model.layers[old_index]
            p = f"model.layers.{new_index}."
            yield p + "input_layernorm.weight", cast(layer.input_layernorm.weight)
            yield p + "post_attention_layernorm.weight", cast(layer.post_attention_layernorm.weight)
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                yield p + f"self_attn.{name}.weight", cast(getattr(layer.self_attn, name).weight)
            if cfg.qk_norm != "none":
                yield p + "self_attn.q_norm.weight", cast(layer.self_attn.q_norm.weight)
                yield p + "self_attn.k_norm.weight", cast(layer.self_attn.k_norm.weight)
            if layer.is_moe:
                yield from cls._moe_tensors(layer.mlp, p + "mlp.", sm.experts, experts, cast)
            else:
                for name in ("gate_proj", "up_proj", "down_proj"):
                    yield p + f"mlp.{name}.weight", cast(getattr(layer.mlp, name).weight)
        yield "model.norm.weight", cast(model.norm.weight)
        if model.lm_head is not None:
            yield "lm_head.weight", cast(model.lm_head.weight)

    @classmethod
    def _moe_tensors(cls, moe: Any, p: str, kept: tuple[int, ...], experts: Tensor,
                     cast) -> Iterator[tuple[str, Tensor]]:
        # Both HF and vLLM keep the router in float32 (HF: _keep_in_fp32_modules_strict for Ernie).
        yield p + "gate.weight", moe.router.weight.detach().float()[experts]
        bias = moe.router.selection_bias_E.float()[experts]
        if cls.router_bias_key is not None:
            yield p + cls.router_bias_key, bias[None]
        elif bool(bias.any()):
            raise ValueError(f"{cls.name} has no router bias, but this model's selection bias is non-zero "
                             f"(max |b| {float(bias.abs().max()):.3g}); export it as Ernie4_5_MoeForCausalLM "
                             "(--set model.hf_architecture=Ernie4_5_MoeForCausalLM) or train without bias balancing")
        for new_e, old_e in enumerate(kept):
            for ours, theirs in _EXPERT_NAMES:
                yield p + f"experts.{new_e}.{theirs}.weight", cast(getattr(moe, ours)[old_e])
        if moe.shared is not None:
            if cls.shared_expert_key is None:
                raise ValueError(f"{cls.name} has no shared expert; the model has one (num_shared_experts > 0)")
            for name in ("gate_proj", "up_proj", "down_proj"):
                yield p + f"{cls.shared_expert_key}.{name}.weight", cast(getattr(moe.shared, name).weight)

    @classmethod
    def state_dict_from_checkpoint(cls, ckpt: dict[str, Tensor], config: MoEModelConfig) -> dict[str, Tensor]:
        """Our module's state dict from checkpoint tensors (the inverse of checkpoint_tensors, full model)."""
        out = {"embed_tokens.weight": ckpt["model.embed_tokens.weight"], "norm.weight": ckpt["model.norm.weight"]}
        if not config.tie_word_embeddings:
            out["lm_head.weight"] = ckpt["lm_head.weight"]
        dense = set(config.dense_layers)
        for i in range(config.num_layers):
            p, q = f"model.layers.{i}.", f"layers.{i}."
            out[q + "input_layernorm.weight"] = ckpt[p + "input_layernorm.weight"]
            out[q + "post_attention_layernorm.weight"] = ckpt[p + "post_attention_layernorm.weight"]
            names = ["q_proj", "k_proj", "v_proj", "o_proj"]
            names += ["q_norm", "k_norm"] if config.qk_norm != "none" else []
            for name in names:
                out[q + f"self_attn.{name}.weight"] = ckpt[p + f"self_attn.{name}.weight"]
            if i in dense:
                for name in ("gate_proj", "up_proj", "down_proj"):
                    out[q + f"mlp.{name}.weight"] = ckpt[p + f"mlp.{name}.weight"]
                continue
            out[q + "mlp.router.weight"] = ckpt[p + "mlp.gate.weight"].float()
            bias = ckpt.get(p + f"mlp.{cls.router_bias_key}") if cls.router_bias_key else None
            out[q + "mlp.router.selection_bias_E"] = (torch.zeros(config.num_experts) if bias is None
                                                      else bias.reshape(-1).float())
            for ours, theirs in _EXPERT_NAMES:
                out[q + f"mlp.{ours}"] = torch.stack(
                    [ckpt[p + f"mlp.experts.{e}.{theirs}.weight"] for e in range(config.num_experts)])
            if config.num_shared_experts:
                for name in ("gate_proj", "up_proj", "down_proj"):
                    out[q + f"mlp.shared.{name}.weight"] = ckpt[p + f"mlp.{cls.shared_expert_key}.{name}.weight"]
        return out


def rope_theta(hf: Any) -> float:
    """RoPE base of a transformers 5 config; refuses scaled RoPE (YaRN, linear, ...), which we do not compute."""
    params = getattr(hf, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise unsupported("rope_parameters.rope_type", rope_type, "only plain RoPE is implemented",
                          "use a checkpoint without RoPE scaling (or drop rope_scaling for short-context RL)")
    theta = params.get("rope_theta", getattr(hf, "rope_theta", None))
    if theta is None:
        raise unsupported("rope_parameters.rope_theta", None, "the RoPE base is missing", "add rope_theta")
    return float(theta)


def common_fields(hf: Any) -> dict:
    """MoEModelConfig fields every family spells the same way."""
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise unsupported("hidden_act", hf.hidden_act, "experts and dense FFNs are SwiGLU", "use a silu checkpoint")
    pad = hf.pad_token_id
    eos = hf.eos_token_id[0] if isinstance(hf.eos_token_id, list) else hf.eos_token_id
    return dict(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads, num_kv_heads=hf.num_key_value_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        rope_theta=rope_theta(hf), rms_norm_eps=hf.rms_norm_eps, max_position_embeddings=hf.max_position_embeddings,
        tie_word_embeddings=bool(hf.tie_word_embeddings), initializer_range=getattr(hf, "initializer_range", 0.02),
        pad_token_id=pad if pad is not None else (eos if eos is not None else 0),
        bos_token_id=hf.bos_token_id if hf.bos_token_id is not None else 1,
        eos_token_id=eos if eos is not None else 2,
    )


def common_hf_fields(config: MoEModelConfig, num_layers: int) -> dict:
    return {
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size, "num_hidden_layers": num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "hidden_act": "silu", "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range, "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
        "pad_token_id": config.pad_token_id, "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id, "use_cache": True, "output_router_logits": False,
    }
