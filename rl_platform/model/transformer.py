"""The elastic MoE decoder: one definition for pretraining, the RL learner and the HF/vLLM interchange.

Shape legend: B rows, S positions, T = B*S tokens, D model dim, H query heads, G kv heads, Dh head dim,
L MoE layers (route slots: `config.moe_layer_ids[l]` is the decoder layer of slot l; dense layers have none),
K experts per token, E experts, V vocab.

Elastic forward: every row may run its own `SubModel` (layers kept, experts kept, top-k) inside one batched
forward and one backward. Depth: a layer runs only on the rows that keep it (the others pass through).
Width: the router of those rows is masked to their expert subset. Sparsity: they keep their first k picks.

Routing capture/replay: `capture_routes=True` returns the experts chosen at every (row, position, MoE layer)
as `routes_BSLK` (-1 for a skipped layer or an unused slot); `forced_routes_BSLK` of the same shape makes every
MoE layer use those experts (see moe.py for the gate semantics); -1 rows fall back to live routing.

Numerics follow transformers' (and vLLM's) Ernie4.5-MoE, Qwen3-MoE and OLMoE, picked by config switches:
RMSNorm in float32, RoPE computed in float32 (interleaved pairs or NeoX halves), optional q/k RMSNorm, float32
router, gates renormalised or not; dense layers run one SwiGLU. Why switches and not one module per
architecture: docs/bring_your_own_model.md, 'Design'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.norm_rope import rms_norm, rope
from rl_platform.model.config import MoEModelConfig, SubModel
from rl_platform.model.moe import MoEFeedForward, SwiGLU


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)  # float32 inside; one fused kernel each way on CUDA


def rope_cos_sin(position_ids_BS: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin [B, S, Dh/2] of the pair rotation angles, in float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids_BS.device).float() / head_dim))
    angles = position_ids_BS.float()[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x_BHSD: Tensor, cos_BSP: Tensor, sin_BSP: Tensor, style: str = "interleaved") -> Tensor:
    """Rotates pair i of every head by the position's angle i. interleaved: the pair is (x[2i], x[2i+1]) (HF
    Ernie4.5, vLLM is_neox_style=False); neox: (x[i], x[i + Dh/2]) (HF rotate_half, vLLM is_neox_style=True).
    Computed in float32 (one fused kernel each way on CUDA)."""
    return rope(x_BHSD, cos_BSP, sin_BSP, style)


class Attention(nn.Module):
    def __init__(self, config: MoEModelConfig) -> None:
        super().__init__()
        self.config = config
        d, dh = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(d, config.num_heads * dh, bias=False)
        self.k_proj = nn.Linear(d, config.num_kv_heads * dh, bias=False)
        self.v_proj = nn.Linear(d, config.num_kv_heads * dh, bias=False)
        self.o_proj = nn.Linear(config.num_heads * dh, d, bias=False)
        # q/k RMSNorm before RoPE: over each head (Qwen3) or over all heads' projection at once (OLMoE)
        norm_width = {"head": (dh, dh), "full": (config.num_heads * dh, config.num_kv_heads * dh)}
        if config.qk_norm in norm_width:
            q_width, k_width = norm_width[config.qk_norm]
            self.q_norm = RMSNorm(q_width, config.rms_norm_eps)
            self.k_norm = RMSNorm(k_width, config.rms_norm_eps)

    def _heads(self, proj: nn.Linear, norm_name: str, x_BSD: Tensor) -> Tensor:
        """[B, heads, S, Dh] of one projection, q/k-normed as configured."""
        b, s, _ = x_BSD.shape
        y = proj(x_BSD)
        if self.config.qk_norm == "full":
            y = getattr(self, norm_name)(y)
        y = y.view(b, s, -1, self.config.head_dim)
        if self.config.qk_norm == "head":
            y = getattr(self, norm_name)(y)
        return y.transpose(1, 2)

    def forward(self, x_BSD: Tensor, cos: Tensor, sin: Tensor, mask_B1SS: Tensor | None) -> Tensor:
        b, s, _ = x_BSD.shape
        dh, style = self.config.head_dim, self.config.rope_style
        q = apply_rope(self._heads(self.q_proj, "q_norm", x_BSD), cos, sin, style)
        k = apply_rope(self._heads(self.k_proj, "k_norm", x_BSD), cos, sin, style)
        v = self.v_proj(x_BSD).view(b, s, -1, dh).transpose(1, 2)
        if self.config.attention_backend == "rrattention" and mask_B1SS is None:
            from kernels.rrattention.op import rr_attention

            out, _, sparsity = rr_attention(q, k, v, block_size=self.config.rr_block_size,
                                            stride=self.config.rr_stride, tau=self.config.rr_tau)
            # kept for evaluation (share of causal blocks skipped in this layer's last prefill); a tensor, so the
            # forward never waits on the device for it
            self.last_block_sparsity = sparsity.detach()
        elif mask_B1SS is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_B1SS, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class DecoderLayer(nn.Module):
    def __init__(self, config: MoEModelConfig, is_moe: bool = True) -> None:
        super().__init__()
        self.is_moe = is_moe
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoEFeedForward(config) if is_moe else SwiGLU(config.hidden_size, config.dense_ffn_dim)


@dataclass
class ModelOutput:
    hidden_BSD: Tensor
    """[B, S, D] final-norm hidden states (the LM head input)."""
    routes_BSLK: Tensor | None
    """[B, S, L, K] int16 experts used per layer (-1: layer skipped or slot unused); None unless captured."""
    live_routes_BSLK: Tensor | None
    """[B, S, L, K] int16 experts the live routers chose (before replay); None unless captured."""
    aux_loss: Tensor | None
    """Sum over layers of the weighted balance loss; None when aux_loss_coef is 0."""
    num_forced_tokens: int
    """Token-layer routings that used forced ids (routing replay)."""
    mtp_hidden_BSD: Tensor | None = None
    """[B, S, D] hidden of the MTP block (predicts token t+2); None without an MTP head."""


class MoETransformer(nn.Module):
    """The elastic ultra-sparse MoE language model.

    Example:
        model = MoETransformer(MoEModelConfig())
        out = model(input_ids_BS, capture_routes=True)
        logits_BSV = model.logits(out.hidden_BSD)
    """

    def __init__(self, config: MoEModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        dense = set(config.dense_layers)
        self.layers = nn.ModuleList(DecoderLayer(config, is_moe=i not in dense) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size,
                                                                         bias=False)
        self.mtp = MTPBlock(config) if config.num_mtp_heads else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        norm_params = {id(m.weight) for m in self.modules() if isinstance(m, RMSNorm)}
        for param in self.parameters():
            if id(param) in norm_params:
                param.fill_(1.0)
            else:
                param.normal_(0.0, self.config.initializer_range)

    def to_dtype(self, dtype: torch.dtype) -> MoETransformer:
        """Casts every parameter to `dtype` except the routers, which stay float32 (as in HF and vLLM: a
        bfloat16 router would flip near-tied top-k choices for no speed gain)."""
        self.to(dtype)
        for moe in self.moe_layers():
            moe.router.float()
        return self

    @property
    def lm_head_weight(self) -> Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.lm_head_weight)

    def moe_layers(self) -> list[MoEFeedForward]:
        """The MoE FFNs in route-slot order (dense layers excluded)."""
        return [layer.mlp for layer in self.layers if layer.is_moe]

    def forward(self, input_ids_BS: Tensor, *, position_ids_BS: Tensor | None = None,
                attention_mask_BS: Tensor | None = None, doc_ids_BS: Tensor | None = None,
                submodels: Sequence[SubModel] | None = None, forced_routes_BSLK: Tensor | None = None,
                capture_routes: bool = False) -> ModelOutput:
        """attention_mask_BS: 1 for real tokens (right padding); doc_ids_BS: packed documents attend only
        within themselves. submodels: one per row (None = the full model for every row)."""
        cfg = self.config
        b, s = input_ids_BS.shape
        device = input_ids_BS.device
        if position_ids_BS is None:
            position_ids_BS = torch.arange(s, device=device).expand(b, s)
        cos, sin = rope_cos_sin(position_ids_BS, cfg.head_dim, cfg.rope_theta)
        mask_B1SS = _attention_mask(b, s, device, attention_mask_BS, doc_ids_BS)
        plan = _ElasticPlan.build(cfg, submodels, b, s, device)
        h_BSD = self.embed_tokens(input_ids_BS)
        width = max(cfg.top_k, plan.max_k)
        routes_BSLK = (torch.full((b, s, len(cfg.moe_layer_ids), width), -1, dtype=torch.int16, device=device)
                       if capture_routes else None)
        live_BSLK = routes_BSLK.clone() if capture_routes and forced_routes_BSLK is not None else None
        aux_losses, num_forced = [], 0
        slots = {layer_id: slot for slot, layer_id in enumerate(cfg.moe_layer_ids)}
        for index, layer in enumerate(self.layers):
            rows = plan.rows_for_layer(index)
            if rows is not None and rows.numel() == 0:
                continue
            def sub(t: Tensor, rows: Tensor | None = rows) -> Tensor:
                return t if rows is None else t.index_select(0, rows)

            x = sub(h_BSD)
            attn_in = layer.input_layernorm(x)
            x = x + layer.self_attn(attn_in, sub(cos), sub(sin), None if mask_B1SS is None else sub(mask_B1SS))
            rb, rs, d = x.shape
            if not layer.is_moe:
                x = x + layer.mlp(layer.post_attention_layernorm(x))
                h_BSD = x if rows is None else h_BSD.index_copy(0, rows, x)
                continue
            slot = slots[index]
            forced = None
            if forced_routes_BSLK is not None:
                forced = sub(forced_routes_BSLK[:, :, slot]).reshape(rb * rs, -1)
            moe_out, routing = layer.mlp(
                layer.post_attention_layernorm(x).reshape(rb * rs, d),
                expert_mask_TE=None if plan.expert_mask_BE is None else sub(plan.expert_mask_BE).repeat_interleave(
                    rs, dim=0),
                top_k_T=None if plan.top_k_B is None else sub(plan.top_k_B).repeat_interleave(rs),
                forced_ids_TK=forced, aux_loss_coef=cfg.aux_loss_coef if self.training else 0.0)
            x = x + moe_out.view(rb, rs, d)
            num_forced += routing.num_forced
            if layer.mlp.aux_loss is not None:
                aux_losses.append(layer.mlp.aux_loss)
            for store, chosen in ((routes_BSLK, routing.topk_ids_TK), (live_BSLK, routing.live_ids_TK)):
                if store is not None:
                    _store_routes(store, chosen.view(rb, rs, -1)[..., :width], rows, slot)
            h_BSD = x if rows is None else h_BSD.index_copy(0, rows, x)
        hidden = self.norm(h_BSD)
        mtp_hidden = self.mtp(hidden, self.embed_tokens, input_ids_BS, cos, sin, mask_B1SS) if self.mtp else None
        return ModelOutput(hidden_BSD=hidden, routes_BSLK=routes_BSLK,
                           live_routes_BSLK=live_BSLK if live_BSLK is not None else routes_BSLK,
                           aux_loss=torch.stack(aux_losses).sum() if aux_losses else None,
                           num_forced_tokens=num_forced, mtp_hidden_BSD=mtp_hidden)

    @torch.no_grad()
    def update_selection_bias(self, speed: float) -> Tensor:
        """Aux-loss-free balancing step for every layer; returns the loads [L, E] it used."""
        return torch.stack([moe.update_selection_bias(speed) for moe in self.moe_layers()])


class MTPBlock(nn.Module):
    """Multi-token prediction (DeepSeek-V3 style): combines h_t with the embedding of token t+1 and runs
    one extra dense-attention layer whose output, through the shared LM head, predicts token t+2."""

    def __init__(self, config: MoEModelConfig) -> None:
        super().__init__()
        self.norm_hidden = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.norm_embed = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.layer = DecoderLayer(config)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_BSD: Tensor, embed: nn.Embedding, input_ids_BS: Tensor, cos: Tensor, sin: Tensor,
                mask_B1SS: Tensor | None) -> Tensor:
        next_ids = F.pad(input_ids_BS[:, 1:], (0, 1), value=0)
        x = self.proj(torch.cat([self.norm_hidden(hidden_BSD), self.norm_embed(embed(next_ids))], dim=-1))
        x = x + self.layer.self_attn(self.layer.input_layernorm(x), cos, sin, mask_B1SS)
        b, s, d = x.shape
        moe_out, _ = self.layer.mlp(self.layer.post_attention_layernorm(x).reshape(b * s, d))
        return self.norm(x + moe_out.view(b, s, d))


def _store_routes(store_BSLK: Tensor, ids_BSK: Tensor, rows: Tensor | None, slot: int) -> None:
    """Writes one MoE layer's expert ids into route slot `slot` of the rows that ran it."""
    ids = ids_BSK.to(torch.int16)
    target = store_BSLK if rows is None else store_BSLK.index_select(0, rows)
    target[:, :, slot, : ids.shape[-1]] = ids
    if rows is not None:
        store_BSLK.index_copy_(0, rows, target)


def _attention_mask(b: int, s: int, device: torch.device, attention_mask_BS: Tensor | None,
                    doc_ids_BS: Tensor | None) -> Tensor | None:
    """Boolean [B, 1, S, S] (True = attend) or None for plain causal attention."""
    if attention_mask_BS is None and doc_ids_BS is None:
        return None
    allowed = torch.ones(s, s, dtype=torch.bool, device=device).tril()[None].expand(b, s, s)
    if doc_ids_BS is not None:
        allowed = allowed & (doc_ids_BS[:, :, None] == doc_ids_BS[:, None, :])
    if attention_mask_BS is not None:
        valid = attention_mask_BS.bool()
        allowed = allowed & valid[:, None, :]
        # Padded query rows would attend to nothing (NaN in SDPA); let them see themselves. Their outputs
        # are ignored by every loss.
        allowed = allowed | torch.eye(s, dtype=torch.bool, device=device)[None]
    return allowed[:, None]


class _ElasticPlan:
    """Per-row sub-model bookkeeping for one forward."""

    def __init__(self, keep_LB: Tensor | None, expert_mask_BE: Tensor | None, top_k_B: Tensor | None,
                 max_k: int) -> None:
        self.keep_LB = keep_LB
        self.expert_mask_BE = expert_mask_BE
        self.top_k_B = top_k_B
        self.max_k = max_k

    @classmethod
    def build(cls, config: MoEModelConfig, submodels: Sequence[SubModel] | None, b: int, s: int,
              device: torch.device) -> _ElasticPlan:
        if submodels is None or all(sm.is_full(config) for sm in submodels):
            return cls(None, None, None, config.top_k)
        if len(submodels) != b:
            raise ValueError(f"MoETransformer.forward: got {len(submodels)} submodels for {b} rows; pass one per row.")
        keep = torch.zeros(config.num_layers, b, dtype=torch.bool)
        experts = torch.zeros(b, config.num_experts, dtype=torch.bool)
        top_k = torch.empty(b, dtype=torch.long)
        for row, sm in enumerate(submodels):
            sm.validate(config)
            keep[list(sm.layers), row] = True
            experts[row, list(sm.experts)] = True
            top_k[row] = sm.top_k
        all_experts = bool(experts.all())
        all_k = bool((top_k == config.top_k).all())
        return cls(keep.to(device), None if all_experts else experts.to(device),
                   None if all_k else top_k.to(device), int(top_k.max()))

    def rows_for_layer(self, index: int) -> Tensor | None:
        """Row indices that run layer `index`, or None when every row does."""
        if self.keep_LB is None or bool(self.keep_LB[index].all()):
            return None
        return self.keep_LB[index].nonzero().squeeze(1)
