"""Train-infer mismatch and MoE routing-disagreement metrics (R3 paper; docs/routing_replay.md).

- `train/kl_train_infer`: k3 estimate of KL(pi_infer || pi_train) on the sampled tokens,
  mean_t [ r_t - 1 - log r_t ],  r_t = pi_train(y_t) / pi_infer(y_t);
- `train/logprob_abs_diff_mean|max`: |log pi_train - log pi_infer| over scored tokens;
- `moe/extreme_token_frac_tau2`: F(tau=2), the share of tokens with max(r, 1/r) > 2;
- `train/kl_train_infer_tokens`: how many tokens the three above average over (only the rows the step trains
  on: a step with few informative groups has a noisy estimate, docs/routing_replay.md, 'Study');
- `moe/route_mismatch_layer{l}`: share of (token, layer l) whose expert SET differs between two routings
  (order within top-k is irrelevant), l the decoder layer (dense layers have no routes and no metric);
  `moe/route_mismatch` over all MoE layers;
  `moe/route_mismatch_tokens_any_layer`: share of tokens with at least one differing layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor


def train_infer_metrics(learner_lp_BS: Tensor, generator_lp_BS: Tensor, mask_BS: Tensor,
                        tau: float = 2.0) -> dict[str, float]:
    mask = mask_BS.bool()
    if not mask.any():
        return {}
    log_r = (learner_lp_BS - generator_lp_BS)[mask].double()
    ratio = log_r.exp()
    return {
        "train/kl_train_infer": float((ratio - 1.0 - log_r).mean()),
        "train/logprob_abs_diff_mean": float(log_r.abs().mean()),
        "train/logprob_abs_diff_max": float(log_r.abs().max()),
        "moe/extreme_token_frac_tau2": float((log_r.abs() > math.log(tau)).double().mean()),
        "train/kl_train_infer_tokens": float(log_r.numel()),
    }


def route_mismatch_metrics(routes_a_BSLK: Tensor, routes_b_BSLK: Tensor, valid_BS: Tensor,
                           prefix: str = "moe/route_mismatch",
                           layer_ids: Sequence[int] | None = None) -> dict[str, float]:
    """Compares two routings as expert sets per (token, MoE layer) at the valid positions; `layer_ids[l]` is the
    decoder layer of route slot l (the model's LayerMap.moe_layers; default: slot l is layer l)."""
    k = min(routes_a_BSLK.shape[-1], routes_b_BSLK.shape[-1])
    a = routes_a_BSLK[valid_BS][..., :k].long().sort(dim=-1).values
    b = routes_b_BSLK[valid_BS][..., :k].long().sort(dim=-1).values
    if a.numel() == 0:
        return {}
    differs_TL = (a != b).any(dim=-1).double()
    out = {prefix: float(differs_TL.mean())}
    if prefix == "moe/route_mismatch":
        out["moe/route_mismatch_tokens_any_layer"] = float(differs_TL.max(dim=-1).values.mean())
        names = list(layer_ids) if layer_ids is not None else list(range(differs_TL.shape[1]))
        for slot, layer in enumerate(names):
            out[f"{prefix}_layer{layer}"] = float(differs_TL[:, slot].mean())
    return out
