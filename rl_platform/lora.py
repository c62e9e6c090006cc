"""LoRA RL: low-rank adapters on attention, the shared and dense FFNs (peft) and the routed experts (per-expert
pairs, rl_platform/lora_experts.py), as a `ModelAdapter` around the base adapter.

    policy = LoRAPolicy(load_adapter(path), LoRAConfig(enabled=True, rank=16), base_path=path)
    policy(input_ids_BS, forced_routes_BSLK=routes)        # base + adapters (R3 replay is unchanged)
    policy.base_view()(input_ids_BS)                       # the base: adapters off (the KL reference)
    policy.checkpoint_tensors()                            # merged weights W + s * B A (what the engines load)
    policy.export("models/policy")                         # merged HF directory + models/policy-lora (peft)

Everything but the adapters (and the router when `train_router`) is frozen, so the optimizer holds state
for the adapters only and the reference needs no second copy of the weights. Merged weights are exact: the
base tensors are swapped for W + s * B A while they are read, then the very same base tensors are put back (no
add-then-subtract drift). docs/lora_and_elastic_rl.md, 'LoRA RL'.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from rl_platform.config import check
from rl_platform.lora_experts import ExpertLoRA
from rl_platform.model.adapter import ModelAdapter, MoETransformerAdapter
from rl_platform.model.config import SubModel
from rl_platform.model.transformer import ModelOutput

LoRATarget = Literal["attention", "shared_experts", "routed_experts", "dense_mlp"]
ALL_TARGETS: tuple[LoRATarget, ...] = ("attention", "shared_experts", "routed_experts", "dense_mlp")


@dataclass(kw_only=True, slots=True)
class LoRAConfig:
    """Low-rank adapters instead of full-parameter training (off by default)."""

    enabled: bool = False
    """True trains adapters only: --set learner.lora.enabled=true."""
    rank: int = 16
    """Rank R of every adapter (per expert for the routed experts)."""
    alpha: float = 32.0
    """Scale numerator: the update is (alpha / R) * B A (alpha / sqrt(R) with use_rslora)."""
    dropout: float = 0.0
    """Dropout on the adapters' input during the update's forward (never in the no-grad old/reference forwards)."""
    use_rslora: bool = False
    """rsLoRA scaling alpha / sqrt(R) (arXiv:2312.03732), which keeps the update's size stable across ranks."""
    targets: tuple[LoRATarget, ...] = ALL_TARGETS
    """Which weights get adapters: attention (q, k, v, o), shared_experts, routed_experts (gate_up, down per
    expert), dense_mlp (dense layers' FFN, e.g. ERNIE-4.5's first layer). Targets the model lacks are skipped."""
    train_router: bool = False
    """Also train the routers' weights in full (E x D per MoE layer); frozen by default, so RL cannot shift
    which experts a token uses except through the adapters (and R3 replays stay meaningful)."""

    def __post_init__(self) -> None:
        check(self.rank >= 1, "LoRAConfig.rank", self.rank, "must be >= 1", "use 8-64")
        check(self.alpha > 0, "LoRAConfig.alpha", self.alpha, "must be > 0", "use 2 * rank")
        check(0.0 <= self.dropout < 1.0, "LoRAConfig.dropout", self.dropout, "must be in [0, 1)", "use 0.0-0.1")
        check(len(self.targets) > 0 and len(set(self.targets)) == len(self.targets), "LoRAConfig.targets",
              self.targets, f"must name distinct targets among {list(ALL_TARGETS)}", "e.g. attention,routed_experts")

    @property
    def scaling(self) -> float:
        return self.alpha / (self.rank ** 0.5 if self.use_rslora else self.rank)

    def describe(self) -> str:
        """One line for a run's plan: what the learner trains."""
        if not self.enabled:
            return "every weight (full-parameter)"
        router = "router trained" if self.train_router else "router frozen"
        return (f"LoRA adapters only (rank {self.rank}, alpha {self.alpha:g}, dropout {self.dropout:g}) on "
                f"{', '.join(self.targets)}; {router}; KL reference = the base with adapters off; the engines "
                "load merged weights")


def linear_targets(module: nn.Module, targets: Sequence[str]) -> list[str]:
    """Full names of the nn.Linear modules of `module` that the target groups select."""
    names = []
    for name, sub in module.named_modules():
        if not isinstance(sub, nn.Linear) or name.startswith("mtp."):
            continue
        leaf = name.rsplit(".", 1)[-1]
        group = ("attention" if ".self_attn." in name and leaf in ("q_proj", "k_proj", "v_proj", "o_proj")
                 else "shared_experts" if ".mlp.shared." in name
                 else "dense_mlp" if leaf in ("gate_proj", "up_proj", "down_proj") else None)
        if group in targets:
            names.append(name)
    return names


class LoRAPolicy:
    """A base `ModelAdapter` with adapters injected into its module in place (implements ModelAdapter).

    Example:
        policy = LoRAPolicy(load_adapter("models/full"), LoRAConfig(enabled=True, rank=8), base_path="models/full")
    """

    def __init__(self, base: MoETransformerAdapter, config: LoRAConfig, *, base_path: str | Path) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        self.base = base
        self.config = config
        self.base_path = Path(base_path)
        self.module = base.module
        self.layer_map = base.layer_map
        self.pad_token_id = base.pad_token_id
        self.module.requires_grad_(False)
        targets = linear_targets(self.module, config.targets)
        if targets:
            peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                     use_rslora=config.use_rslora, target_modules=targets, bias="none")
            inject_adapter_in_model(peft_config, self.module)
        cfg = self.module.config
        if "routed_experts" in config.targets:
            for moe in self.module.moe_layers():
                moe.expert_adapter = ExpertLoRA(num_experts=cfg.num_experts, dim=cfg.hidden_size,
                                                ffn_dim=cfg.expert_ffn_dim, rank=config.rank, alpha=config.alpha,
                                                dropout=config.dropout, use_rslora=config.use_rslora)
        self._routers_at_start: dict[nn.Parameter, Tensor] = {}
        if config.train_router:
            for moe in self.module.moe_layers():
                moe.router.weight.requires_grad_(True)
                self._routers_at_start[moe.router.weight] = moe.router.weight.detach().clone()
        if not any(p.requires_grad for p in self.module.parameters()):
            raise ValueError(f"LoRAConfig.targets={config.targets!r} selects no weight of this model "
                             f"({cfg.hf_architecture}); add attention or routed_experts")
        self._dropouts = [m for m in self.module.modules() if isinstance(m, nn.Dropout)]

    def __call__(self, input_ids_BS: Tensor, *, attention_mask_BS: Tensor | None = None,
                 forced_routes_BSLK: Tensor | None = None, capture_routes: bool = False,
                 submodels: Sequence[SubModel] | None = None) -> ModelOutput:
        # the learner keeps the module in eval mode; adapter dropout acts only where gradients are taken
        for dropout in self._dropouts:
            dropout.train(torch.is_grad_enabled())
        return self.base(input_ids_BS, attention_mask_BS=attention_mask_BS, forced_routes_BSLK=forced_routes_BSLK,
                         capture_routes=capture_routes, submodels=submodels)

    @property
    def lm_head_weight(self) -> Tensor:
        return self.base.lm_head_weight

    def peft_layers(self) -> list[tuple[str, nn.Module]]:
        from peft.tuners.lora import LoraLayer

        return [(name, m) for name, m in self.module.named_modules() if isinstance(m, LoraLayer)]

    def expert_adapters(self) -> list[tuple[int, ExpertLoRA]]:
        """(route slot, adapter) of every MoE layer with routed-expert adapters."""
        return [(slot, moe.expert_adapter) for slot, moe in enumerate(self.module.moe_layers())
                if moe.expert_adapter is not None]

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The trainable tensors: adapters (and the routers with train_router)."""
        return {name: p for name, p in self.module.named_parameters() if p.requires_grad}

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The base model: adapters off and the routers at their starting weights, restored afterwards."""
        layers = [m for _, m in self.peft_layers()]
        experts = [a for _, a in self.expert_adapters()]
        with _swapped(self._routers_at_start.items()):
            for layer in layers:
                layer.enable_adapters(False)
            for adapter in experts:
                adapter.enabled = False
            try:
                yield
            finally:
                for layer in layers:
                    layer.enable_adapters(True)
                for adapter in experts:
                    adapter.enabled = True

    @contextmanager
    def merged_weights(self) -> Iterator[None]:
        """The module computes (and reads out) the merged model: every adapted weight is W + s * B A, adapters
        off. The original base tensors are put back afterwards, bit for bit."""
        merged: list[tuple[nn.Parameter, Tensor]] = []
        with torch.no_grad():
            for _, layer in self.peft_layers():
                weight = layer.get_base_layer().weight
                merged.append((weight, weight + layer.get_delta_weight("default").to(weight.dtype)))
            for moe in self.module.moe_layers():
                if moe.expert_adapter is not None:
                    for weight, delta in zip((moe.w_gate_EFD, moe.w_up_EFD, moe.w_down_EDF),
                                             moe.expert_adapter.delta_stacks(), strict=True):
                        merged.append((weight, weight + delta.to(weight.dtype)))
        with _swapped(merged), self._adapters_off():
            yield

    @contextmanager
    def _adapters_off(self) -> Iterator[None]:
        """Adapters off, routers as they are now (inside merged_weights the routers are the trained ones)."""
        saved, self._routers_at_start = self._routers_at_start, {}
        try:
            with self.adapters_disabled():
                yield
        finally:
            self._routers_at_start = saved

    def checkpoint_tensors(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
        with self.merged_weights():
            tensors = list(self.base.checkpoint_tensors(dtype))  # views of the merged tensors outlive the swap
        yield from tensors

    def export(self, out_dir: str | Path, *, tokenizer=None, dtype: torch.dtype = torch.float32) -> Path:
        """The merged model as a Hugging Face directory at `out_dir`, and the adapter in peft format beside it
        (`<out_dir>-lora`, for the base model this run started from)."""
        from rl_platform.lora_export import export_peft_adapter

        with self.merged_weights():
            out = self.base.export(out_dir, tokenizer=tokenizer, dtype=dtype)
        export_peft_adapter(self, Path(str(out) + "-lora"))
        return out

    def base_view(self) -> ModelAdapter:
        """The base model (adapters off) behind the same seam: the KL reference, no copy of the weights."""
        return _BaseView(self)


class _BaseView:
    """`policy` with its adapters disabled for every call (implements ModelAdapter's forward side)."""

    def __init__(self, policy: LoRAPolicy) -> None:
        self.policy = policy
        self.module = policy.module
        self.layer_map = policy.layer_map
        self.pad_token_id = policy.pad_token_id

    def __call__(self, input_ids_BS: Tensor, **kwargs) -> ModelOutput:
        with self.policy.adapters_disabled():
            return self.policy(input_ids_BS, **kwargs)

    @property
    def lm_head_weight(self) -> Tensor:
        return self.policy.lm_head_weight


@contextmanager
def _swapped(pairs) -> Iterator[None]:
    """Points each parameter at another tensor (same shape and dtype) and back to its own storage afterwards."""
    pairs = list(pairs)
    originals = [(param, param.data) for param, _ in pairs]
    try:
        for param, tensor in pairs:
            param.data = tensor
        yield
    finally:
        for param, data in reversed(originals):
            param.data = data


def wrap_policy(base: MoETransformerAdapter, config: LoRAConfig, base_path: str | Path) -> ModelAdapter:
    """The policy the learner trains: `base` itself, or LoRA around it."""
    return LoRAPolicy(base, config, base_path=base_path) if config.enabled else base


def reference_policy(policy: ModelAdapter) -> ModelAdapter:
    """The frozen KL reference: LoRA's base view (no second copy of the weights), else a frozen deep copy."""
    if isinstance(policy, LoRAPolicy):
        return policy.base_view()
    reference = copy.deepcopy(policy)
    reference.module.requires_grad_(False)
    return reference
