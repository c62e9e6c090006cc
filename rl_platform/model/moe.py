"""The MoE FFN: one modality-agnostic softmax router, fine-grained routed experts and a shared expert.

Shape legend: T tokens, D model dim, E routed experts, K experts per token, F expert FFN dim.

Routing (what `Ernie4_5_MoeForCausalLM` computes in transformers and in vLLM, so that the learner, the
exported checkpoint and the rollout engine agree):
    router_logits_TE = x_TD.float() @ W_ED.T                       # always float32
    probs_TE         = softmax(router_logits_TE)
    topk_ids_TK      = topk(probs_TE + selection_bias_E, K)        # the bias only SELECTS (aux-loss-free)
    gates_TK         = probs_TE[topk_ids_TK] / sum                  # weights come from the unbiased probs
The division by the sum is skipped when `normalize_gates` is False (OLMoE, Qwen3 without norm_topk_prob:
the chosen probabilities are used as they are, so the routed output's scale follows the router's confidence).
Elastic width masks the router to an expert subset before the softmax (the softmax of a sliced router is the
same thing, which is why an exported sub-model matches). Elastic sparsity keeps the first k_t of the K picks.

Routing replay (R3/R2): `forced_ids_TK` replaces the selection; the gates are still recomputed from the live
router probabilities restricted to the forced experts and renormalised the same way, so the router keeps
receiving gradient. Rows holding any -1 fall back to live routing.

Aux-loss-free balancing: `selection_bias_E` is a buffer updated outside autograd by
`b_i += u * sign(mean_load - load_i)` (`update_selection_bias`), from token counts accumulated in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.moe_experts import moe_experts
from rl_platform.model.config import MoEModelConfig

# HF Ernie4.5 clamps the renormaliser at moe_norm_min=1e-12; vLLM divides plainly. Identical unless all
# chosen probabilities underflow, which the float32 softmax over <= 256 experts cannot produce.
_NORM_MIN = 1e-12


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the shared expert (and the dense shape of one routed expert)."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, ffn_dim, bias=False)
        self.up_proj = nn.Linear(dim, ffn_dim, bias=False)
        self.down_proj = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x_TD: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x_TD)) * self.up_proj(x_TD))


class RoutingResult:
    """What the router decided for a batch of tokens."""

    # no __slots__: DeepSpeed ZeRO-3's module hooks read a module's output through vars()

    def __init__(self, topk_ids_TK: Tensor, gates_TK: Tensor, probs_TE: Tensor, num_forced: int,
                 live_ids_TK: Tensor) -> None:
        self.topk_ids_TK = topk_ids_TK
        """[T, K] int64 experts used; slots beyond a token's k are -1."""
        self.live_ids_TK = live_ids_TK
        """[T, K] int64 experts the live router would have chosen (differs from topk_ids under replay)."""
        self.gates_TK = gates_TK
        """[T, K] float32 gate weights (0 in unused slots)."""
        self.probs_TE = probs_TE
        """[T, E] float32 router softmax (for the aux loss and diagnostics)."""
        self.num_forced = num_forced
        """Tokens whose experts came from forced (replayed) ids."""


class Router(nn.Module):
    """Softmax top-k router with a selection-only bias."""

    def __init__(self, config: MoEModelConfig) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.top_k
        self.normalize = config.normalize_gates
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("selection_bias_E", torch.zeros(config.num_experts), persistent=True)

    def forward(self, x_TD: Tensor, *, expert_mask_TE: Tensor | None = None, top_k_T: Tensor | None = None,
                forced_ids_TK: Tensor | None = None) -> RoutingResult:
        logits_TE = F.linear(x_TD.float(), self.weight.float())
        if expert_mask_TE is not None:
            logits_TE = logits_TE.masked_fill(~expert_mask_TE, float("-inf"))
        probs_TE = torch.softmax(logits_TE, dim=-1)
        k = self.top_k if forced_ids_TK is None else max(self.top_k, forced_ids_TK.shape[1])
        with torch.no_grad():
            score_TE = probs_TE + self.selection_bias_E.float()
            if expert_mask_TE is not None:
                score_TE = score_TE.masked_fill(~expert_mask_TE, float("-inf"))
            live_ids_TK = torch.topk(score_TE, self.top_k, dim=-1).indices
            if k > self.top_k:
                live_ids_TK = F.pad(live_ids_TK, (0, k - self.top_k), value=-1)
            if top_k_T is not None:
                slot_K = torch.arange(k, device=x_TD.device)
                live_ids_TK = live_ids_TK.masked_fill(slot_K[None, :] >= top_k_T[:, None], -1)
            ids_TK, num_forced = live_ids_TK, 0
            if forced_ids_TK is not None:
                forced = forced_ids_TK.to(torch.int64)
                if forced.shape[1] < k:
                    forced = F.pad(forced, (0, k - forced.shape[1]), value=-1)
                # A forced row is used when it names at least one expert; -1 slots inside it are unused slots
                # (a smaller k), a row of all -1 falls back to live routing.
                use_T = (forced >= 0).any(dim=-1)
                ids_TK = torch.where(use_T[:, None], forced, live_ids_TK)
                num_forced = int(use_T.sum())
        valid_TK = ids_TK >= 0
        gates_TK = probs_TE.gather(1, ids_TK.clamp_min(0)) * valid_TK
        if self.normalize:
            gates_TK = gates_TK / gates_TK.sum(dim=-1, keepdim=True).clamp_min(_NORM_MIN)
        return RoutingResult(ids_TK, gates_TK, probs_TE, num_forced, live_ids_TK)


class MoEFeedForward(nn.Module):
    """Routed experts + shared expert; records per-expert token counts for the bias update."""

    def __init__(self, config: MoEModelConfig) -> None:
        super().__init__()
        e, f, d = config.num_experts, config.expert_ffn_dim, config.hidden_size
        self.num_experts = e
        self.router = Router(config)
        self.w_gate_EFD = nn.Parameter(torch.empty(e, f, d))
        self.w_up_EFD = nn.Parameter(torch.empty(e, f, d))
        self.w_down_EDF = nn.Parameter(torch.empty(e, d, f))
        self.shared = SwiGLU(d, f * config.num_shared_experts) if config.num_shared_experts else None
        self.register_buffer("load_counts_E", torch.zeros(e), persistent=False)
        self.aux_loss: Tensor | None = None
        self.expert_adapter: nn.Module | None = None
        """Computes the routed experts instead of `routed_experts` when set: (x_TD, ids_TK, gates_TK, moe) -> y_TD.
        LoRA on the expert stacks (rl_platform/lora_experts.py) attaches here, so the base weights keep their names."""

    def forward(self, x_TD: Tensor, *, expert_mask_TE: Tensor | None = None, top_k_T: Tensor | None = None,
                forced_ids_TK: Tensor | None = None, aux_loss_coef: float = 0.0) -> tuple[Tensor, RoutingResult]:
        routing = self.router(x_TD, expert_mask_TE=expert_mask_TE, top_k_T=top_k_T, forced_ids_TK=forced_ids_TK)
        if self.expert_adapter is not None:
            y_TD = self.expert_adapter(x_TD, routing.topk_ids_TK, routing.gates_TK, self)
        else:
            y_TD = routed_experts(x_TD, routing.topk_ids_TK, routing.gates_TK, self.w_gate_EFD, self.w_up_EFD,
                                  self.w_down_EDF)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)
        if self.training:
            with torch.no_grad():
                self.load_counts_E += expert_counts(routing.topk_ids_TK, self.num_experts)
        self.aux_loss = switch_balance_loss(routing, self.num_experts) * aux_loss_coef if aux_loss_coef else None
        return y_TD, routing

    @torch.no_grad()
    def update_selection_bias(self, speed: float) -> Tensor:
        """b_i += u * sign(mean_load - load_i) from the counts since the last call; returns the loads."""
        load_E = self.load_counts_E.clone()
        if load_E.sum() > 0:
            self.router.selection_bias_E += speed * torch.sign(load_E.mean() - load_E)
        self.load_counts_E.zero_()
        return load_E


def expert_counts(ids_TK: Tensor, num_experts: int) -> Tensor:
    """float32 [E] slots routed to each expert (-1 slots ignored). index_add instead of bincount / boolean
    indexing: both size their output from the data, a host sync per MoE layer on a GPU."""
    ids_N = ids_TK.reshape(-1)
    counts_E = torch.zeros(num_experts, dtype=torch.float32, device=ids_TK.device)
    return counts_E.index_add_(0, ids_N.clamp_min(0), (ids_N >= 0).float())


def switch_balance_loss(routing: RoutingResult, num_experts: int) -> Tensor:
    """E * sum_i f_i * P_i (Switch Transformer): f = share of routed slots, P = mean router prob."""
    ids = routing.topk_ids_TK
    valid = ids >= 0
    f_E = expert_counts(ids, num_experts) / valid.sum().clamp_min(1)
    p_E = routing.probs_TE.nan_to_num(0.0).mean(dim=0)
    return num_experts * (f_E.detach() * p_E).sum()


def routed_experts(x_TD: Tensor, ids_TK: Tensor, gates_TK: Tensor, w_gate_EFD: Tensor, w_up_EFD: Tensor,
                   w_down_EDF: Tensor) -> Tensor:
    """The routed-expert FFN through the shared op (Triton grouped matmul on CUDA, its reference on CPU).

    Unused slots (-1, a token whose sub-model has a smaller k) carry gate 0: they are pointed at expert 0,
    whose contribution the zero gate removes, so the op sees ids in [0, E) as it requires.
    """
    return moe_experts(x_TD, ids_TK.clamp_min(0), gates_TK.to(x_TD.dtype), w_gate_EFD, w_up_EFD, w_down_EDF)
