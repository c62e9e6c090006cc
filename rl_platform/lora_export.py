"""The trained adapters as a peft adapter directory for the Hugging Face (transformers) model of the base.

    base = AutoModelForCausalLM.from_pretrained("models/full")
    model = PeftModel.from_pretrained(base, "runs/x/models/policy-lora")    # == runs/x/models/policy (merged)

Names follow transformers' module tree: `model.layers.{i}.self_attn.{q,k,v,o}_proj`, the shared expert under
the architecture's name (`mlp.shared_experts` for ERNIE-4.5), dense FFNs `mlp.{gate,up,down}_proj`, and the
routed experts as peft *parameter* targets `mlp.experts.gate_up_proj` [E, 2F, D] / `mlp.experts.down_proj`
[E, D, F]: transformers stores experts as 3-D stacks, and our per-expert pairs (rl_platform/lora_experts.py)
are exactly peft's layout for them up to a reordering of rows and columns, so no approximation is involved.
The shared experts and dense FFNs travel in full (peft's `modules_to_save`, holding W + s * B A): peft 0.21
reads every `*.gate_proj` / `up_proj` / `down_proj` target of a transformers-5 MoE model as a pre-fusion
routed-expert name and moves it onto `experts.gate_up_proj`, so a LoRA on those Linear layers would be
silently dropped on load. They are small (one expert's size per layer).
The directory is written by peft itself (a peft model of the base's architecture is built from its config,
the tensors are copied in, `save_pretrained` writes them), so it is whatever peft reads.
peft's parameter targets refuse dropout; dropout only acts in training, so the export records 0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rl_platform.model.architectures import get_architecture

if TYPE_CHECKING:
    from rl_platform.lora import LoRAPolicy

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def hf_module_name(ours: str, shared_expert_key: str | None) -> str:
    """Our module name (layers.3.mlp.shared.up_proj) -> transformers' (model.layers.3.mlp.shared_experts.up_proj)."""
    name = "model." + ours
    if ".mlp.shared." in name:
        if shared_expert_key is None:
            raise ValueError(f"{ours}: this architecture has no shared expert in transformers")
        name = name.replace(".mlp.shared.", f".mlp.{shared_expert_key}.")
    return name


@torch.no_grad()
def export_peft_adapter(policy: LoRAPolicy, out_dir: str | Path) -> Path:
    """Writes adapter_config.json + adapter_model.safetensors for `policy.base_path`'s transformers model."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import ParamWrapper
    from peft.utils import ModulesToSaveWrapper
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = policy.config
    arch = get_architecture(policy.module.config.hf_architecture)
    lora, saved = {}, {}
    for name, layer in policy.peft_layers():
        hf_name = hf_module_name(name, arch.shared_expert_key)
        if name.rsplit(".", 1)[-1] in ("gate_proj", "up_proj", "down_proj"):
            saved.setdefault(hf_name.rsplit(".", 1)[0], {})[hf_name.rsplit(".", 1)[1]] = layer
        else:
            lora[hf_name] = layer
    experts = dict(policy.expert_adapters())
    hf_config = AutoConfig.from_pretrained(str(policy.base_path))
    with torch.device("meta"):  # only the module tree matters; every exported tensor is assigned below
        hf_model = AutoModelForCausalLM.from_config(hf_config)
    peft_config = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0 if experts else cfg.dropout, use_rslora=cfg.use_rslora,
        bias="none", target_modules=sorted(lora) or None, modules_to_save=sorted(saved) or None,
        target_parameters=["experts.gate_up_proj", "experts.down_proj"] if experts else None)
    model = get_peft_model(hf_model, peft_config, low_cpu_mem_usage=True)
    moe_slot = {layer: slot for slot, layer in enumerate(policy.layer_map.moe_layers)}
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, ParamWrapper):
            adapter = experts[moe_slot[int(_LAYER.search(name).group(1))]]
            _assign(module, *_peft_expert_layout(adapter, module))
        elif isinstance(module, ModulesToSaveWrapper) and name in saved:
            for leaf, layer in saved.pop(name).items():  # the trained module in full: W + s * B A
                merged = layer.get_base_layer().weight + layer.get_delta_weight("default")
                getattr(module.modules_to_save["default"], leaf).weight = torch.nn.Parameter(merged.float().clone())
        elif name in lora:
            theirs = lora.pop(name)
            _assign(module, theirs.lora_A["default"].weight, theirs.lora_B["default"].weight)
    if lora or saved:
        raise ValueError(f"transformers' {hf_config.architectures} has no modules {sorted(lora) + sorted(saved)}; "
                         "the adapter cannot be expressed for it (use the merged directory)")
    out = Path(out_dir)
    model.save_pretrained(str(out))
    meta = json.loads((out / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = str(policy.base_path.resolve())
    (out / "adapter_config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _peft_expert_layout(adapter, wrapper) -> tuple[torch.Tensor, torch.Tensor]:
    """peft's (lora_A [R'*E, in], lora_B [out, R'*E]) of one expert stack: expert e's rank j sits at row e*R' + j
    of A and at column j*E + e of B (peft's `ParamWrapper.get_delta_weight`). peft may give the stack another
    rank R' >= R and scale (it doubles both for `gate_up_proj` when gate/up Linear layers are targeted too, to fit
    two separate adapters): our pair is zero-padded to R' and B rescaled, so B' A' * s' == B A * s exactly."""
    name = wrapper.parameter_name
    A_ERI, B_EOR = {"gate_up_proj": (adapter.A_gu_ERD, adapter.B_gu_E2FR),
                    "down_proj": (adapter.A_d_ERF, adapter.B_d_EDR)}[name]
    e, r, i = A_ERI.shape
    rank = wrapper.r["default"]
    if rank < r:
        raise ValueError(f"peft gives {name} rank {rank} < the trained rank {r}; set the same rank for every target")
    A_ERI = torch.nn.functional.pad(A_ERI.float(), (0, 0, 0, rank - r))
    B_EOR = torch.nn.functional.pad(B_EOR.float(), (0, rank - r)) * (adapter.scaling / wrapper.scaling["default"])
    return A_ERI.reshape(e * rank, i), B_EOR.permute(1, 2, 0).reshape(B_EOR.shape[1], rank * e)


def _assign(module, A: torch.Tensor, B: torch.Tensor) -> None:
    for holder, value in ((module.lora_A["default"], A), (module.lora_B["default"], B)):
        expected = tuple(holder.weight.shape)
        if tuple(value.shape) != expected:
            raise ValueError(f"peft adapter export: {type(module).__name__} expects {expected}, got "
                             f"{tuple(value.shape)}")
        holder.weight = torch.nn.Parameter(value.detach().float().clone().contiguous())
