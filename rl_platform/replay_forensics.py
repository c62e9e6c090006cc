"""Per-token forensics of a dumped RL update (docs/routing_replay.md, 'Forensics').

Shape legend: B rows, S positions, L MoE layers, K experts per token, E experts, N inspected tokens.

Given an update dumped by `rl_platform.step_dump` (batch, the learner's log-probs and live routes, the
pre-update weights), this module re-scores the batch under chosen settings (float32 / bfloat16 learner,
live / forced routes) while recording every router's probabilities and gates, checks the alignment of the
engine's routes with the token positions, and lists the tokens with the largest |log pi_learner -
log pi_engine| with everything that could explain each one: the engine's routes, the learner's live routes,
the routes the update applied, the learner's router probability and rank of every applied expert, the gates,
and the log-prob under each setting.

Position convention (rl_platform/batching.py): position t holds token t and predicts token t+1; a response
token r_j of a prompt of length P is scored at t = P-1+j; the engine's routes of position t come from the
forward of token t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kernels.fused_logprobs import fused_logprobs
from rl_platform.batching import TrainingBatch
from rl_platform.model import MoETransformer
from rl_platform.rl_metrics import route_mismatch_metrics, train_infer_metrics


@dataclass
class Scored:
    """One scoring pass over a batch."""

    logprobs_BS: Tensor
    """float32 temperature-1 log-prob of token t+1 at position t."""
    routes_BSLK: Tensor
    """int16 experts used (forced where routes were forced, -1 unused)."""
    live_routes_BSLK: Tensor
    """int16 experts the learner's own routers picked."""
    gates_BSLK: Tensor | None = None
    """float32 gate weight of each used expert (with_router only)."""
    probs_BSLE: Tensor | None = None
    """float32 router softmax (with_router only)."""
    selection_bias_LE: Tensor | None = None
    """float32 selection-only bias of every router: top-k is taken over probs + bias (with_router only)."""

    def selection_ranks_BSLE(self) -> Tensor:
        """Rank (0 = first pick) of every expert under the router's own selection score, probs + bias."""
        scores = self.probs_BSLE + self.selection_bias_LE[None, None]
        return scores.argsort(dim=-1, descending=True).argsort(dim=-1)


@torch.no_grad()
def score(model: MoETransformer, batch: TrainingBatch, forced_routes_BSLK: Tensor | None = None, *,
          with_router: bool = False, micro_batch_size: int = 32) -> Scored:
    """Teacher-forced log-probs of the batch (temperature 1, what the engine reports) in micro-batches."""
    parts: list[Scored] = []
    for start in range(0, batch.input_ids_BS.shape[0], micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        micro = batch.rows(rows)
        forced = None if forced_routes_BSLK is None else forced_routes_BSLK[rows]
        with _RouterRecorder(model, enabled=with_router) as recorder:
            out = model(micro.input_ids_BS, attention_mask_BS=micro.attention_mask_BS, forced_routes_BSLK=forced,
                        capture_routes=True)
        b, s, d = out.hidden_BSD.shape
        targets = torch.roll(micro.input_ids_BS, shifts=-1, dims=1).reshape(-1)
        logprobs, _ = fused_logprobs(out.hidden_BSD.reshape(b * s, d).float(), model.lm_head_weight.float(), targets)
        parts.append(Scored(logprobs.view(b, s), out.routes_BSLK, out.live_routes_BSLK, *recorder.tensors(b, s)))
    bias = torch.stack([m.router.selection_bias_E.float() for m in model.moe_layers()]) if with_router else None
    return Scored(*(_cat([getattr(p, name) for p in parts]) for name in
                    ("logprobs_BS", "routes_BSLK", "live_routes_BSLK", "gates_BSLK", "probs_BSLE")), bias)


def _cat(tensors: list[Tensor | None]) -> Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors)


class _RouterRecorder:
    """Forward hooks on every router that keep its gates and probabilities (full-depth forwards only)."""

    def __init__(self, model: MoETransformer, enabled: bool) -> None:
        self.model = model
        self.enabled = enabled
        self.gates: list[Tensor] = []
        self.probs: list[Tensor] = []
        self.handles: list = []

    def __enter__(self) -> _RouterRecorder:
        if self.enabled:
            for moe in self.model.moe_layers():
                self.handles.append(moe.router.register_forward_hook(self._hook))
        return self

    def _hook(self, module, args, result) -> None:
        self.gates.append(result.gates_TK.float())
        self.probs.append(result.probs_TE.float())

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def tensors(self, b: int, s: int) -> tuple[Tensor | None, Tensor | None]:
        if not self.enabled:
            return None, None
        gates = torch.stack([g.view(b, s, -1) for g in self.gates], dim=2)
        probs = torch.stack([p.view(b, s, -1) for p in self.probs], dim=2)
        return gates, probs


def forced_at_layers(routes_BSLK: Tensor, layers: list[int]) -> Tensor:
    """`routes_BSLK` with every layer not in `layers` set to -1 (live routing there)."""
    out = torch.full_like(routes_BSLK, -1)
    out[:, :, layers] = routes_BSLK[:, :, layers]
    return out


def kl_terms_BS(learner_lp_BS: Tensor, generator_lp_BS: Tensor) -> Tensor:
    """Per-token k3 term r - 1 - log r, r = pi_learner / pi_engine (its mean is train/kl_train_infer)."""
    log_r = (learner_lp_BS - generator_lp_BS).double()
    return (log_r.exp() - 1.0 - log_r).float()


# ---------------------------------------------------------------------------------------------------------------
# Alignment checks
# ---------------------------------------------------------------------------------------------------------------

def alignment_report(batch: TrainingBatch, live_routes_BSLK: Tensor) -> dict[str, float]:
    """Are the engine's routes where the batch says they are?

    - `routes_expected_positions_frac`: rows whose routes cover exactly positions 0..P+R-2 (-1 elsewhere);
    - `route_match_shift{-1,0,+1}`: agreement (expert sets) of the engine's routes at t with the learner's live
      routes at t+shift: a misalignment shows as a shifted agreement above the aligned one;
    - `route_mismatch_prompt` / `_response`: learner-live vs engine disagreement at prompt / response positions;
    - `prompt_routes_equal_in_group_frac`: among rows sharing a prompt (one group's samples), the share of
      prompt-position (token, layer) routes equal to the group's first row: the engine prefilled the same
      prompt, from its prefix cache or afresh, and must report the same experts.
    """
    routes = batch.rollout_routes_BSLK
    if routes is None or batch.prompt_lengths_B is None:
        return {}
    b, s = batch.input_ids_BS.shape
    lengths = batch.attention_mask_BS.sum(dim=1)
    pos_S = torch.arange(s)
    expected_BS = pos_S[None, :] <= (lengths[:, None] - 2)
    present_BS = (routes >= 0).all(dim=-1).all(dim=-1)
    out = {"routes_expected_positions_frac": float((present_BS == expected_BS).all(dim=1).float().mean())}
    for shift in (-1, 0, 1):
        a = routes[:, max(0, -shift): s - max(0, shift)]
        live = live_routes_BSLK[:, max(0, shift): s - max(0, -shift)]
        valid = expected_BS[:, max(0, -shift): s - max(0, shift)] & (live[..., 0, 0] >= 0)
        out[f"route_match_shift{shift:+d}"] = 1.0 - route_mismatch_metrics(live, a, valid, prefix="x").get("x", 1.0)
    prompt_BS = pos_S[None, :] < batch.prompt_lengths_B[:, None]
    for name, region in (("prompt", prompt_BS & expected_BS), ("response", ~prompt_BS & expected_BS)):
        m = route_mismatch_metrics(live_routes_BSLK, routes, region, prefix="x")
        if m:
            out[f"route_mismatch_{name}"] = m["x"]
    out.update(_group_prompt_consistency(batch))
    return out


def _group_prompt_consistency(batch: TrainingBatch) -> dict[str, float]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for row in range(batch.input_ids_BS.shape[0]):
        p = int(batch.prompt_lengths_B[row])
        groups.setdefault(tuple(batch.input_ids_BS[row, :p].tolist()), []).append(row)
    equal = total = 0
    for prompt, rows in groups.items():
        p = len(prompt)
        first = batch.rollout_routes_BSLK[rows[0], :p].long().sort(dim=-1).values
        for row in rows[1:]:
            other = batch.rollout_routes_BSLK[row, :p].long().sort(dim=-1).values
            same = (first == other).all(dim=-1)
            equal += int(same.sum())
            total += same.numel()
    return {"prompt_routes_equal_in_group_frac": equal / total} if total else {}


# ---------------------------------------------------------------------------------------------------------------
# Worst tokens
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class TokenForensics:
    """Everything about one scored token (row, position t predicting token t+1)."""

    row: int
    position: int
    response_index: int
    token_id: int
    generator_lp: float
    learner_lp: float
    """The log-prob the learner logged for it during the update."""
    logprob_by_setting: dict[str, float]
    """Re-scored log-prob under each setting (e.g. fp32/live, fp32/replayed, bf16/live, bf16/replayed)."""
    layers: list[dict] = field(default_factory=list)
    """Per MoE layer: engine routes, learner live routes, applied routes, the learner's router probability and
    rank of each applied expert, gates of the applied experts, live experts' probability mass."""
    prefix_route_mismatches: int = 0
    """(position, layer) pairs before and at this position where the learner's live routes differ from the
    engine's: a flip earlier in the sequence changes this token's hidden state through attention."""

    @property
    def abs_dlogp(self) -> float:
        return abs(self.learner_lp - self.generator_lp)


def worst_tokens(batch: TrainingBatch, learner_lp_BS: Tensor, live_routes_BSLK: Tensor | None,
                 applied_routes_BSLK: Tensor | None, router_pass: Scored, by_setting: dict[str, Tensor],
                 top: int = 10) -> list[TokenForensics]:
    """The `top` scored tokens with the largest |learner - engine| log-prob difference, explained.

    `router_pass` is a with_router scoring under the applied routes (the update's own forward)."""
    diff_BS = (learner_lp_BS - batch.generator_logprobs_BS).abs() * batch.mask_BS
    order = diff_BS.flatten().argsort(descending=True)[:top]
    s = diff_BS.shape[1]
    engine_routes = batch.rollout_routes_BSLK
    flips_BS = None
    if engine_routes is not None and live_routes_BSLK is not None:
        differs = (live_routes_BSLK.long().sort(-1).values != engine_routes.long().sort(-1).values).any(-1)
        flips_BS = (differs & (engine_routes[..., 0] >= 0) & (live_routes_BSLK[..., 0] >= 0)).sum(-1).cumsum(-1)
    out = []
    for flat in order.tolist():
        row, t = divmod(flat, s)
        if not batch.mask_BS[row, t]:
            break
        p = int(batch.prompt_lengths_B[row]) if batch.prompt_lengths_B is not None else -1
        token = TokenForensics(
            row=row, position=t, response_index=t - (p - 1) if p > 0 else -1,
            token_id=int(batch.input_ids_BS[row, t + 1]), generator_lp=float(batch.generator_logprobs_BS[row, t]),
            learner_lp=float(learner_lp_BS[row, t]),
            logprob_by_setting={name: float(lp[row, t]) for name, lp in by_setting.items()},
            prefix_route_mismatches=0 if flips_BS is None else int(flips_BS[row, t]))
        token.layers = _layer_detail(row, t, engine_routes, live_routes_BSLK, applied_routes_BSLK, router_pass)
        out.append(token)
    return out


def _layer_detail(row: int, t: int, engine: Tensor | None, live: Tensor | None, applied: Tensor | None,
                  router_pass: Scored) -> list[dict]:
    probs_LE, gates_LK, used_LK = router_pass.probs_BSLE[row, t], router_pass.gates_BSLK[row, t], \
        router_pass.routes_BSLK[row, t]
    ranks_LE = router_pass.selection_ranks_BSLE()[row, t]
    layers = []
    for layer in range(probs_LE.shape[0]):
        probs, ranks = probs_LE[layer], ranks_LE[layer]
        used = [int(e) for e in used_LK[layer] if e >= 0]
        live_ids = [] if live is None else [int(e) for e in live[row, t, layer] if e >= 0]
        layers.append({
            "layer": layer,
            "engine": None if engine is None else [int(e) for e in engine[row, t, layer]],
            "learner_live": live_ids,
            "applied": None if applied is None or applied[row, t, layer, 0] < 0 else used,
            "applied_prob": [round(float(probs[e]), 5) for e in used],
            "applied_rank": [int(ranks[e]) for e in used],
            "gates": [round(float(g), 5) for g in gates_LK[layer][: len(used)]],
            "used_prob_mass": round(float(probs[used].sum()), 5),
            "live_prob_mass": round(float(probs[live_ids].sum()), 5) if live_ids else None,
        })
    return layers


def rare_forced_expert_stats(router_pass: Scored, applied_routes_BSLK: Tensor | None, mask_BS: Tensor,
                             top_k: int) -> dict[str, float]:
    """How often the update forced an expert that the learner's own router ranks far outside its top-k.

    Ranks are by the router's selection score (probs + selection bias). `forced_outside_topk_frac`: share of
    forced (token, layer) routings with at least one expert ranked >= k (a route flip); `forced_rank_ge_2k_frac`:
    ranked >= 2k (the 'almost never picks' case); `forced_min_prob_p01`: 1st percentile of the smallest learner
    probability among a routing's forced experts.
    """
    if applied_routes_BSLK is None or router_pass.probs_BSLE is None:
        return {}
    valid = (applied_routes_BSLK[..., 0] >= 0) & (mask_BS[..., None] > 0)
    ranks = router_pass.selection_ranks_BSLE()
    ids = applied_routes_BSLK.long().clamp_min(0)
    rank_BSLK = ranks.gather(-1, ids)
    prob_BSLK = router_pass.probs_BSLE.gather(-1, ids)
    worst_rank = rank_BSLK.max(dim=-1).values[valid]
    min_prob = prob_BSLK.min(dim=-1).values[valid]
    if worst_rank.numel() == 0:
        return {}
    return {"forced_outside_topk_frac": float((worst_rank >= top_k).float().mean()),
            "forced_rank_ge_2k_frac": float((worst_rank >= 2 * top_k).float().mean()),
            "forced_min_prob_p01": float(min_prob.quantile(0.01))}


def mismatch_summary(learner_lp_BS: Tensor, batch: TrainingBatch) -> dict[str, float]:
    """train_infer_metrics plus where the KL mass sits: the share of the step's KL carried by its top 1 % tokens."""
    out = train_infer_metrics(learner_lp_BS, batch.generator_logprobs_BS, batch.mask_BS)
    terms = kl_terms_BS(learner_lp_BS, batch.generator_logprobs_BS)[batch.mask_BS.bool()]
    if terms.numel():
        top = max(1, math.ceil(0.01 * terms.numel()))
        out["kl_share_top1pct_tokens"] = float(terms.topk(top).values.sum() / terms.sum().clamp_min(1e-30))
    return out
