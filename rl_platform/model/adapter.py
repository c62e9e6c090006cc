"""The model-adapter seam: what the learner, routing replay (R3/R2), batching and the train-infer metrics need
from a policy model, and nothing more.

    adapter = load_adapter("ckpt/")                       # any supported HF MoE directory
    out = adapter(input_ids_BS, attention_mask_BS=mask, forced_routes_BSLK=routes, capture_routes=True)
    out.hidden_BSD, out.routes_BSLK, out.live_routes_BSLK   # routes cover the MoE layers only
    adapter.lm_head_weight                                 # hidden @ W.T = logits (the fused log-prob kernel's input)
    adapter.layer_map                                      # which decoder layers are MoE, top-k, experts
    adapter.checkpoint_tensors()                           # checkpoint-named weights for the rollout engines
    adapter.export("out/", tokenizer=tok)                  # a directory of the same architecture

Route tensors are [B, S, L, K] with L = the MoE layers (`layer_map.moe_layers[l]` is the decoder layer of
slot l); dense layers carry none. vLLM's capture returns one row per decoder layer (dense rows are zeros):
`LayerMap.engine_to_moe` selects the MoE rows where the engine's routes enter (the rollout worker).

`module` is the nn.Module DeepSpeed wraps and the optimizer updates; the adapter holds a reference to it, so
the engine's updates are what the adapter computes with. A wrapper (LoRA, elastic sub-model sampling) is
another implementation of `ModelAdapter` around this one. docs/bring_your_own_model.md, 'The adapter'.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from rl_platform.model.config import MoEModelConfig, SubModel
from rl_platform.model.hf_interop import checkpoint_tensors, config_from_dir, export_hf, load_hf, read_hf_config
from rl_platform.model.transformer import ModelOutput, MoETransformer


@dataclass(frozen=True, slots=True)
class LayerMap:
    """Which decoder layers are MoE, and the routing shape of each.

    Example:
        LayerMap(num_layers=4, moe_layers=(1, 2, 3), top_k=8, num_experts=64)   # ERNIE-4.5: dense first layer
    """

    num_layers: int
    """Decoder layers."""
    moe_layers: tuple[int, ...]
    """Decoder-layer ids of the MoE layers, ascending; route slot l is layer moe_layers[l]."""
    top_k: int
    """Experts per token K."""
    num_experts: int
    """Routed experts E per MoE layer."""

    @classmethod
    def of(cls, config: MoEModelConfig) -> LayerMap:
        return cls(num_layers=config.num_layers, moe_layers=config.moe_layer_ids, top_k=config.top_k,
                   num_experts=config.num_experts)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    def engine_to_moe(self, routes_TLK: np.ndarray) -> np.ndarray:
        """An engine's routes [T, layers, K] -> [T, MoE layers, K]: vLLM returns a row per decoder layer (zeros
        for dense ones); a capture that is already per MoE layer passes through."""
        if routes_TLK.ndim != 3 or routes_TLK.shape[1] not in (self.num_layers, self.num_moe_layers):
            raise ValueError(f"engine routes of shape {routes_TLK.shape}: expected [tokens, {self.num_layers} decoder "
                             f"layers or {self.num_moe_layers} MoE layers, {self.top_k}]; the engine serves a "
                             "different model than the learner (reload the engine from the learner's export)")
        if routes_TLK.shape[1] == self.num_moe_layers:
            return routes_TLK
        return routes_TLK[:, list(self.moe_layers)]


class ModelAdapter(Protocol):
    """A policy model behind the seam: forward with captured or forced routes, its layer map, its weights."""

    module: nn.Module
    """What the optimizer updates (DeepSpeed wraps it)."""
    layer_map: LayerMap
    pad_token_id: int
    """Id used to right-pad rows (masked everywhere)."""

    def __call__(self, input_ids_BS: Tensor, *, attention_mask_BS: Tensor | None = None,
                 forced_routes_BSLK: Tensor | None = None, capture_routes: bool = False,
                 submodels: Sequence[SubModel] | None = None) -> ModelOutput:
        """Final hidden states, and the routes used / chosen live per MoE layer when captured or forced.
        submodels: the elastic family member each row runs (None: the full model for every row)."""
        ...

    @property
    def lm_head_weight(self) -> Tensor:
        """[V, D] output projection: logits = hidden @ W.T."""
        ...

    def checkpoint_tensors(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
        """Checkpoint-named weights, as the exported directory stores them and the engines load them."""
        ...

    def export(self, out_dir: str | Path, *, tokenizer=None, dtype: torch.dtype = torch.float32) -> Path:
        """A Hugging Face directory of the source architecture that transformers and vLLM load."""
        ...


class MoETransformerAdapter:
    """Our decoder (any supported HF architecture's switches) as a ModelAdapter.

    Example:
        adapter = MoETransformerAdapter(load_hf("ckpt/"), base_config=json.load(open("ckpt/config.json")))
    """

    def __init__(self, module: MoETransformer, base_config: dict | None = None) -> None:
        self.module = module
        self.layer_map = LayerMap.of(module.config)
        self.pad_token_id = module.config.pad_token_id
        self.base_config = base_config
        """The source directory's config.json: export keeps the fields we do not model."""

    def __call__(self, input_ids_BS: Tensor, *, attention_mask_BS: Tensor | None = None,
                 forced_routes_BSLK: Tensor | None = None, capture_routes: bool = False,
                 submodels: Sequence[SubModel] | None = None) -> ModelOutput:
        return self.module(input_ids_BS, attention_mask_BS=attention_mask_BS, forced_routes_BSLK=forced_routes_BSLK,
                           capture_routes=capture_routes, submodels=submodels)

    @property
    def lm_head_weight(self) -> Tensor:
        return self.module.lm_head_weight

    def checkpoint_tensors(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
        return checkpoint_tensors(self.module, dtype=dtype)

    def export(self, out_dir: str | Path, *, tokenizer=None, dtype: torch.dtype = torch.float32) -> Path:
        return export_hf(self.module, out_dir, tokenizer=tokenizer, dtype=dtype, base_config=self.base_config)


def load_adapter(path: str | Path, dtype: torch.dtype = torch.float32) -> MoETransformerAdapter:
    """The adapter of a supported HF directory; a ValueError listing the supported architectures otherwise."""
    raw, _ = read_hf_config(path)
    return MoETransformerAdapter(load_hf(path, dtype), base_config=raw)


def layer_map_from_dir(path: str | Path) -> LayerMap:
    """The layer map of a directory from its config.json alone (no weights read): for the rollout engines."""
    return LayerMap.of(config_from_dir(path))
