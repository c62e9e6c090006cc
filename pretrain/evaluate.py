"""Validation loss of the sub-model family and routing diagnostics (ERNIE 5.0 Figs 8-10, Tables 9-11).

Routing diagnostics, on held-out packed batches run through the full model:
- activation frequency: share of each domain's routed (token, slot) pairs that went to each expert, per layer;
- normalised routing entropy per layer: NE = -sum_i p_i log p_i / log E, p_i = share of routed slots to
  expert i (1 = perfectly balanced), overall and per domain;
- IoU of the top-25% most activated experts between every pair of domains, per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pretrain.balance import normalized_entropy
from pretrain.data.pipeline import DOMAIN_IDS, IGNORE_INDEX, Packer
from rl_platform.model import MoETransformer, SubModel


@torch.no_grad()
def validation_loss(model: MoETransformer, packer: Packer, submodel: SubModel | None, num_batches: int,
                    batch_size: int) -> dict[str, float]:
    """Token-mean CE overall and per domain; batches are the same for every sub-model."""
    model.eval()
    loss_sum: dict[str, float] = {}
    count: dict[str, int] = {}
    names = {i: n for n, i in DOMAIN_IDS.items()}
    for i in range(num_batches):
        batch = packer.batch(i, batch_size)
        subs = None if submodel is None else [submodel] * batch_size
        out = model(batch.input_ids_BS, position_ids_BS=batch.position_ids_BS, doc_ids_BS=batch.doc_ids_BS,
                    submodels=subs)
        logits = model.logits(out.hidden_BSD).float()
        per_token = F.cross_entropy(logits.view(-1, logits.shape[-1]), batch.labels_BS.view(-1),
                                    ignore_index=IGNORE_INDEX, reduction="none")
        valid = batch.labels_BS.view(-1) != IGNORE_INDEX
        domains = batch.domain_ids_BS.view(-1)
        for key, mask in [("all", valid)] + [(names[d], valid & (domains == d)) for d in domains.unique().tolist()
                                             if d >= 0]:
            loss_sum[key] = loss_sum.get(key, 0.0) + float(per_token[mask].sum())
            count[key] = count.get(key, 0) + int(mask.sum())
    return {k: loss_sum[k] / count[k] for k in loss_sum if count[k] > 0}


@dataclass
class RoutingDiagnostics:
    domains: list[str]
    frequency_LDE: torch.Tensor
    """[L, num_domains, E] share of each domain's routed slots per expert."""
    entropy_L: torch.Tensor
    """[L] normalised routing entropy over all domains."""
    entropy_LD: torch.Tensor
    """[L, num_domains] normalised routing entropy per domain."""
    iou_LDD: torch.Tensor
    """[L, num_domains, num_domains] IoU of the top-25% experts."""
    counts_LE: torch.Tensor
    """[L, E] routed slots per expert over all domains (pretrain.balance.layer_balance reads it)."""


@torch.no_grad()
def routing_diagnostics(model: MoETransformer, packer: Packer, num_batches: int, batch_size: int) -> RoutingDiagnostics:
    model.eval()
    cfg = model.config
    num_moe = len(cfg.moe_layer_ids)  # routes cover the MoE layers only
    names = {i: n for n, i in DOMAIN_IDS.items()}
    counts = {}
    for i in range(num_batches):
        batch = packer.batch(i, batch_size)
        out = model(batch.input_ids_BS, position_ids_BS=batch.position_ids_BS, doc_ids_BS=batch.doc_ids_BS,
                    capture_routes=True)
        routes = out.routes_BSLK.long()  # [B, S, L, K]
        for d in batch.domain_ids_BS.unique().tolist():
            if d < 0:
                continue
            sel = routes[batch.domain_ids_BS == d]  # [N, L, K]
            per_layer = torch.stack([torch.bincount(sel[:, layer][sel[:, layer] >= 0], minlength=cfg.num_experts)
                                     for layer in range(num_moe)]).float()
            counts[names[d]] = counts.get(names[d], 0) + per_layer
    domains = sorted(counts)
    freq = torch.stack([counts[d] / counts[d].sum(-1, keepdim=True).clamp_min(1) for d in domains], dim=1)
    total = sum(counts.values())
    overall = total / total.sum(-1, keepdim=True).clamp_min(1)
    entropy_L = torch.tensor([normalized_entropy(overall[layer]) for layer in range(num_moe)])
    entropy_LD = torch.tensor([[normalized_entropy(freq[layer, d]) for d in range(len(domains))]
                               for layer in range(num_moe)])
    top = max(1, round(0.25 * cfg.num_experts))
    iou = torch.zeros(num_moe, len(domains), len(domains))
    for layer in range(num_moe):
        sets = [set(freq[layer, d].topk(top).indices.tolist()) for d in range(len(domains))]
        for a in range(len(domains)):
            for b in range(len(domains)):
                iou[layer, a, b] = len(sets[a] & sets[b]) / len(sets[a] | sets[b])
    return RoutingDiagnostics(domains, freq, entropy_L, entropy_LD, iou, total)
