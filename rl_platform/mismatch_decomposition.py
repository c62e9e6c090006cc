"""How much of a step's train-inference mismatch is arithmetic precision and how much is routing, per layer
(docs/routing_replay.md, 'Decomposition').

The same dumped rollouts (tokens, the engine's log-probs and routes, the pre-update weights) are re-scored
under a grid of settings, each compared with the engine's sampling-time log-probs:

    learner fp32, live routes            what a replay-off update sees
    learner fp32, engine routes          what an R3 update sees: routing identical, only arithmetic differs
    learner fp32, engine routes at layer l only (live elsewhere), for every l
    learner bf16 (routers fp32), live / engine routes
    learner fp32 / bf16 with bf16 logits, engine routes (a bf16 engine rounds its logits to bf16 before the
    softmax: how much of the mismatch is that rounding alone)
    engine fp32 prefill, engine <rollout dtype> prefill (optional, needs vLLM)

and summarised as
    routing_share  = 1 - KL(fp32, engine routes) / KL(fp32, live)      the part replay removes
    precision_kl   = KL(fp32, engine routes)                           what remains with identical routes
    layer l share  = (KL(fp32, live) - KL(fp32, engine routes at l)) / (KL(fp32, live) - KL(fp32, engine routes))
plus the KL of the tokens whose prefix holds no route flip (pure precision) vs the tokens after a flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rl_platform.batching import TrainingBatch
from rl_platform.model import MoETransformer
from rl_platform.replay_forensics import Scored, forced_at_layers, kl_terms_BS, mismatch_summary, score
from rl_platform.rl_metrics import route_mismatch_metrics


@dataclass(frozen=True)
class Setting:
    """One way of scoring the rollouts with the learner."""

    name: str
    dtype: torch.dtype = torch.float32
    engine_routes: bool = False
    """Force the engine's routes (R3) instead of routing live."""
    layers: tuple[int, ...] | None = None
    """Force only at these layers (None: all)."""
    bf16_logits: bool = False
    """Round the logits to bf16 before the softmax, as a bf16 vLLM engine does."""


def default_settings(num_layers: int, per_layer: bool = True) -> list[Setting]:
    settings = [Setting("fp32/live"), Setting("fp32/engine_routes", engine_routes=True),
                Setting("fp32/engine_routes/bf16_logits", engine_routes=True, bf16_logits=True),
                Setting("bf16/live", dtype=torch.bfloat16),
                Setting("bf16/engine_routes", dtype=torch.bfloat16, engine_routes=True),
                Setting("bf16/engine_routes/bf16_logits", dtype=torch.bfloat16, engine_routes=True, bf16_logits=True)]
    if per_layer:
        settings += [Setting(f"fp32/engine_routes@layer{i}", engine_routes=True, layers=(i,))
                     for i in range(num_layers)]
    return settings


def core_settings() -> list[Setting]:
    """The three settings a multi-step study needs: live vs replayed routes in fp32, and a bf16 learner."""
    return [Setting("fp32/live"), Setting("fp32/engine_routes", engine_routes=True),
            Setting("bf16/engine_routes", dtype=torch.bfloat16, engine_routes=True)]


class LearnerScorer:
    """The dumped weights in float32 and bfloat16, scored under settings."""

    def __init__(self, model_fp32: MoETransformer) -> None:
        self.models = {torch.float32: model_fp32.eval()}
        self._fp32 = model_fp32

    def model(self, dtype: torch.dtype) -> MoETransformer:
        if dtype not in self.models:
            import copy

            self.models[dtype] = copy.deepcopy(self._fp32).to_dtype(dtype).eval()
        return self.models[dtype]

    def run(self, setting: Setting, batch: TrainingBatch, with_router: bool = False) -> Scored:
        forced = None
        if setting.engine_routes:
            forced = batch.rollout_routes_BSLK
            if setting.layers is not None:
                forced = forced_at_layers(forced, list(setting.layers))
        model = self.model(setting.dtype)
        scored = score(model, batch, forced, with_router=with_router)
        if setting.bf16_logits:
            scored.logprobs_BS = _bf16_logit_logprobs(model, batch, forced)
        return scored


@torch.no_grad()
def _bf16_logit_logprobs(model: MoETransformer, batch: TrainingBatch, forced: Tensor | None) -> Tensor:
    out = model(batch.input_ids_BS, attention_mask_BS=batch.attention_mask_BS, forced_routes_BSLK=forced)
    # the model's own logits (bf16 for a bf16 model, as the engine's lm_head computes them), rounded to bf16
    logits = model.logits(out.hidden_BSD).to(torch.bfloat16).float()
    targets = torch.roll(batch.input_ids_BS, shifts=-1, dims=1)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]


def compare(logprobs_BS: Tensor, routes_BSLK: Tensor | None, batch: TrainingBatch) -> dict[str, float]:
    """Mismatch of one setting against the engine's sampling-time log-probs (and routes, when given)."""
    out = {k.split("/")[-1]: v for k, v in mismatch_summary(logprobs_BS, batch).items()}
    if routes_BSLK is not None and batch.rollout_routes_BSLK is not None:
        valid = batch.rollout_routes_BSLK[..., 0, 0] >= 0
        out["route_mismatch"] = route_mismatch_metrics(routes_BSLK, batch.rollout_routes_BSLK, valid,
                                                       prefix="x").get("x", float("nan"))
    return out


def flip_split(live: Scored, batch: TrainingBatch) -> dict[str, float]:
    """KL (learner fp32, live routes) of the tokens whose sequence so far has no route flip vs the tokens that
    follow at least one flip, and each group's share of the tokens: a flip anywhere earlier changes the hidden
    state of every later token through attention."""
    engine = batch.rollout_routes_BSLK
    differs = (live.live_routes_BSLK.long().sort(-1).values != engine.long().sort(-1).values).any(-1).any(-1)
    differs = differs & (engine[..., 0, 0] >= 0)
    after_flip = differs.cumsum(dim=1) > 0
    terms = kl_terms_BS(live.logprobs_BS, batch.generator_logprobs_BS)
    mask = batch.mask_BS.bool()
    out = {}
    for name, region in (("no_flip", mask & ~after_flip), ("after_flip", mask & after_flip)):
        out[f"{name}_token_frac"] = float(region.sum() / mask.sum().clamp_min(1))
        out[f"{name}_kl"] = float(terms[region].mean()) if region.any() else float("nan")
        out[f"{name}_kl_mass"] = float(terms[region].sum() / terms[mask].sum().clamp_min(1e-30))
    return out


def decompose(scorer: LearnerScorer, batch: TrainingBatch, settings: list[Setting],
              engine_scores: dict[str, tuple[Tensor, Tensor]] | None = None) -> dict:
    """Every setting's mismatch, the engine prefills' (name -> (logprobs_BS, routes_BSLK)), and the summary."""
    rows: dict[str, dict[str, float]] = {}
    live = None
    for setting in settings:
        scored = scorer.run(setting, batch)
        rows[setting.name] = compare(scored.logprobs_BS, scored.routes_BSLK, batch)
        if setting.name == "fp32/live":
            live = scored
    for name, (logprobs, routes) in (engine_scores or {}).items():
        rows[name] = compare(logprobs, routes, batch)
        if live is not None:
            gap = (logprobs - live.logprobs_BS).abs()[batch.mask_BS.bool()]
            rows[name]["abs_dlogp_vs_learner_fp32_live_max"] = float(gap.max())
    return {"settings": rows, "summary": summarize(rows), "flip_split": flip_split(live, batch) if live else {}}


def summarize(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    kl = {name: row["kl_train_infer"] for name, row in rows.items() if "kl_train_infer" in row}
    out: dict[str, float] = {}
    if "fp32/live" in kl and "fp32/engine_routes" in kl:
        total, replayed = kl["fp32/live"], kl["fp32/engine_routes"]
        out.update(kl_live=total, kl_engine_routes=replayed, precision_kl=replayed,
                   routing_kl=total - replayed, routing_share=1.0 - replayed / total if total > 0 else float("nan"))
        for name, value in kl.items():
            if "@layer" in name:
                layer = name.split("@layer")[1]
                out[f"layer{layer}_routing_kl"] = total - value
                out[f"layer{layer}_routing_share"] = ((total - value) / (total - replayed) if total != replayed
                                                      else float("nan"))
    for name in ("fp32/engine_routes/bf16_logits", "bf16/live", "bf16/engine_routes",
                 "bf16/engine_routes/bf16_logits"):
        if name in kl:
            out[f"kl_{name.replace('/', '_')}"] = kl[name]
    return out
