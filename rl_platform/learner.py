"""The MoE policy learner: a DeepSpeed engine around our model, with routing replay (off | R2 | R3).

One RL step over a batch of rollouts:
    1. old forward (no grad), routes:  off -> live;  R2 -> live, recorded;  R3 -> forced to the rollout's
       -> old logprobs, train-infer mismatch metrics, per-layer route mismatch (live learner vs rollout);
    2. reference forward (no grad) when the loss has a KL term, with the same routes the policy's forward
       uses (R3: the rollout's, R2: the recorded old ones), so identical weights give a KL of exactly 0;
    3. for each mini-batch (one optimizer step each), micro-batches with gradient accumulation:
       forward with replay (R3: rollout routes; R2: the recorded old routes; off: live), policy loss
       (with the engine's log-probs for the train-inference correction), backward; at the boundary: the
       scheduled learning rate, gradient clipping (AdaGC or global), optimizer step.
With one mini-batch and replay off or R3, step 1 is folded into step 3: the update's forward runs on the
old weights with the same routes, so its detached log-probs ARE the old log-probs (ratio exactly 1) and
the live routes it computes alongside the forced ones give the mismatch metrics. That saves one forward
over the batch (measured on the demo: learn phase 4.9 s -> 2.1 s per step together with skipping flat groups).
Failed samples (reward None) are masked out of the loss; they were counted by the controller.
Replay mode semantics and why R3 matters for MoE: docs/routing_replay.md.
LoRA (learner.lora) wraps the policy and makes the reference its base view; elastic RL (learner.elastic) gives
every row of the update a sampled sub-model of the family (docs/lora_and_elastic_rl.md).
The policy is a `ModelAdapter` (rl_platform/model/adapter.py): any supported HF MoE architecture, with routes
over its MoE layers only (docs/bring_your_own_model.md).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from kernels.fused_logprobs import fused_logprobs
from rl_platform.batching import TrainingBatch, build_training_batch
from rl_platform.checkpointing import CheckpointError, CheckpointStore, checkpoint_to_load
from rl_platform.config import ConfigError, check
from rl_platform.distributed import (
    RankGroup,
    ScoringHead,
    check_rank_count,
    full_parameters,
    gather_rows,
    save_across_ranks,
)
from rl_platform.elastic_rl import build_elastic, export_family
from rl_platform.lora import LoRAConfig, reference_policy, wrap_policy
from rl_platform.losses import GRPOLossConfig, LossConfig, PolicyLossInputs
from rl_platform.model.adapter import ModelAdapter, load_adapter
from rl_platform.model.elastic import ElasticConfig
from rl_platform.optim.adagc import AdaGCConfig, GlobalNormClipConfig, deepspeed_gradient_access
from rl_platform.optim.optimizer import OptimConfig, build_deepspeed_engine, lr_at, set_lr
from rl_platform.rl_metrics import route_mismatch_metrics, train_infer_metrics
from rl_platform.step_dump import StepDumpConfig, StepDumper
from rl_platform.types import PolicyWeights, Rollout

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class LearnerConfig:
    """How the policy is trained."""

    routing_replay: Literal["off", "R2", "R3"] = "R3"
    """off: live routing; R2: replay the learner's own old-policy routes; R3: replay the rollout engine's."""
    loss: LossConfig = field(default_factory=GRPOLossConfig)
    """Policy objective: grpo | dr_grpo | gspo | gspo_icepop | misc, each piece swappable
    (learner.loss.ratio / clip / correction / aggregation; docs/rl_algorithms.md, 'RL objectives')."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=2e-4, warmup_steps=0, schedule="constant", weight_decay=0.0, clipping=GlobalNormClipConfig(max_norm=1.0)))
    """Optimizer, schedule and clipping. The RL default clips the global norm at 1.0; with
    --set learner.optim.clipping=adagc set learner.optim.clipping.warmup_steps to ~10 % of the run's optimizer
    steps (AdaGC's 100-step pretraining warm-up is global-norm clipping; a run no longer than it is rejected)."""
    num_minibatches: int = 1
    """Optimizer steps per RL step (the rollout batch is split; >1 makes later mini-batches off-policy)."""
    micro_batch_size: int = 16
    """Sequences per forward/backward (gradient accumulation over the mini-batch)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0, 1 (optimizer state sharded over the learner ranks), 2 (+ gradients) or 3
    (+ parameters, gathered layer by layer in each forward); docs/scale_out.md."""
    zero3_persist_below: int = 100_000
    """Under ZeRO-3, parameters with fewer elements are kept whole on every rank instead of gathered per
    forward (DeepSpeed's stage3_param_persistence_threshold); 0 partitions every parameter."""
    num_ranks: int = 1
    """Learner processes (Ray actors in one placement group) that form one data-parallel DeepSpeed engine;
    each trains a token-balanced share of the batch and the update equals the one-process update
    (docs/scale_out.md). 1: one learner process, as before."""
    bf16: bool = False
    """bfloat16 learner (the rollout engine's dtype is set separately)."""
    temperature: float = 1.0
    """The rollout's sampling temperature: the loss scores tokens under softmax(logits / temperature), the
    distribution they were drawn from (jobs.rl sets it from sampling.temperature). Train-infer metrics always
    compare temperature-1 log-probs, which is what the engine returns."""
    schedule_steps: int = 0
    """Optimizer steps of the whole run (jobs.rl sets it to loop.num_steps * num_minibatches): the span of
    optim.schedule and the length AdaGC's warm-up is checked against. 0: unknown (constant schedule only)."""
    dump: StepDumpConfig = field(default_factory=StepDumpConfig)
    """Opt-in per-update dump of the batch, the learner's view and the weights (jobs.inspect_mismatch)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Train low-rank adapters instead of every weight (--set learner.lora.enabled=true; rl_platform/lora.py)."""
    elastic: ElasticConfig = field(default_factory=lambda: ElasticConfig(enabled=False))
    """Elastic RL: each row of the update trains a sampled sub-model of the family, with pretraining's
    probabilities (--set learner.elastic.enabled=true; rl_platform/elastic_rl.py)."""

    def __post_init__(self) -> None:
        check(self.num_minibatches >= 1, "LearnerConfig.num_minibatches", self.num_minibatches, "must be >= 1",
              "use 1 (on-policy) or a few")
        check(self.micro_batch_size >= 1, "LearnerConfig.micro_batch_size", self.micro_batch_size, "must be >= 1",
              "use 8-32")
        check(self.zero_stage in (0, 1, 2, 3), "LearnerConfig.zero_stage", self.zero_stage, "must be 0, 1, 2 or 3",
              "use 2 (or 3 to shard the parameters too)")
        check(self.num_ranks >= 1, "LearnerConfig.num_ranks", self.num_ranks, "must be >= 1",
              "use 1, or the number of learner processes to shard the update over")
        self._check_scale_out()
        check(self.temperature > 0, "LearnerConfig.temperature", self.temperature, "must be > 0",
              "use the rollout's sampling temperature")
        check(self.schedule_steps >= 0, "LearnerConfig.schedule_steps", self.schedule_steps, "must be >= 0",
              "use loop.num_steps * num_minibatches")
        clip = self.optim.clipping
        if self.schedule_steps and isinstance(clip, AdaGCConfig):
            check(clip.warmup_steps < self.schedule_steps, "learner.optim.clipping.warmup_steps", clip.warmup_steps,
                  f"covers all {self.schedule_steps} optimizer steps of this run, so AdaGC would be global-norm "
                  "clipping all along", f"set it to ~10 % of the run: {max(1, self.schedule_steps // 10)}")

    def _check_scale_out(self) -> None:
        """Combinations the multi-rank (or ZeRO-3) learner does not support yet (docs/scale_out.md, 'Not yet')."""
        unsupported = {"learner.lora.enabled": self.lora.enabled, "learner.elastic.enabled": self.elastic.enabled,
                       "learner.dump.enabled": self.dump.enabled}
        for key, on in unsupported.items():
            check(not (on and (self.num_ranks > 1 or self.zero_stage == 3)), key, on,
                  f"is not supported with learner.num_ranks={self.num_ranks} / learner.zero_stage="
                  f"{self.zero_stage} yet", "use learner.num_ranks=1 and learner.zero_stage<=2 with it")

    def check_schedule(self) -> None:
        """A decaying schedule needs the run's length."""
        if self.optim.schedule != "constant" and not self.schedule_steps:
            raise ConfigError(f"LearnerConfig.optim.schedule={self.optim.schedule!r} needs the run's length, but "
                              "LearnerConfig.schedule_steps=0; set schedule_steps (jobs.rl does: loop.num_steps * "
                              "num_minibatches) or use schedule='constant'.")


def response_logprobs(model: ModelAdapter, batch: TrainingBatch, forced_routes=None, capture: bool = False,
                      temperature: float = 1.0):
    """(logprobs_BS, entropy_BS, output): target-aligned log-probability of the next token at every position,
    under softmax(logits / temperature)."""
    out = model(batch.input_ids_BS, attention_mask_BS=batch.attention_mask_BS, forced_routes_BSLK=forced_routes,
                capture_routes=capture, submodels=batch.submodels_B)
    logprobs, entropy = _scored(model, out, batch, temperature)
    return logprobs, entropy, out


def _scored(model: ModelAdapter, out, batch: TrainingBatch, temperature: float):
    b, s, d = out.hidden_BSD.shape
    targets = torch.roll(batch.input_ids_BS, shifts=-1, dims=1)
    head = getattr(getattr(model, "module", None), "scoring_head", None)  # ZeRO-3 only
    if head is not None:
        logprobs, entropy = head(out.hidden_BSD.reshape(b * s, d), targets.reshape(-1), temperature)
        return logprobs.view(b, s), entropy.view(b, s)
    logprobs, entropy = fused_logprobs(out.hidden_BSD.reshape(b * s, d), model.lm_head_weight, targets.reshape(-1),
                                       temperature)
    return logprobs.view(b, s), entropy.view(b, s)


def _engine_view_logprobs(model: ModelAdapter, out, batch: TrainingBatch, logprobs_BS, temperature: float):
    """Temperature-1 log-probs (what the engine reports), reusing the forward's hidden states."""
    if temperature == 1.0:
        return logprobs_BS.detach()
    with torch.no_grad():
        return _scored(model, out, batch, 1.0)[0]


def folds_old_forward(config: LearnerConfig) -> bool:
    """True when the update's own forward can stand in for the old-policy forward (see the module doc)."""
    return config.num_minibatches == 1 and config.routing_replay != "R2"


class _Observed:
    """The learner's view before the update (old log-probs, live routes), gathered over the whole batch or
    micro-batch by micro-batch, and turned into the train-infer and route-mismatch metrics."""

    def __init__(self, batch: TrainingBatch, moe_layers: tuple[int, ...]) -> None:
        self.batch = batch
        self.moe_layers = moe_layers
        """Decoder layer of each route slot (names the per-layer mismatch metrics)."""
        self.logprobs_BS = torch.zeros_like(batch.generator_logprobs_BS)
        routes = batch.rollout_routes_BSLK
        self.live_BSLK = None if routes is None else torch.full_like(routes, -1)

    def record(self, rows, logprobs_BS, out) -> None:
        s = logprobs_BS.shape[1]  # a trimmed micro-batch covers the first s positions
        self.logprobs_BS[rows, :s] = logprobs_BS
        if self.live_BSLK is not None:
            self.live_BSLK[rows, :s] = out.live_routes_BSLK[..., : self.live_BSLK.shape[-1]].to(self.live_BSLK.dtype)

    def metrics(self, ranks: RankGroup) -> dict[str, float]:
        """Over the rows of every rank (gathered), so they equal the one-process metrics of the whole batch."""
        b = self.batch
        learner_lp, gen_lp, mask, attention, live, routes = gather_rows(ranks, [
            self.logprobs_BS, b.generator_logprobs_BS, b.mask_BS, b.attention_mask_BS, self.live_BSLK,
            b.rollout_routes_BSLK])
        out = train_infer_metrics(learner_lp, gen_lp, mask)
        if live is not None:
            valid = attention.bool() & (routes[..., 0, 0] >= 0)
            out.update(route_mismatch_metrics(live, routes, valid, prefix="moe/route_mismatch",
                                              layer_ids=self.moe_layers))
        return out


class Learner:
    """Owns the policy (and reference) model, the DeepSpeed engine and the clipper.

    Example:
        learner = Learner(LearnerConfig(routing_replay="R3"), "runs/x/models/full")
        metrics = learner.train_step(batch)
        weights = learner.publish_weights()
    """

    def __init__(self, config: LearnerConfig, model_path: str, seed: int = 0) -> None:
        torch.manual_seed(seed)
        config.check_schedule()
        self.config = config
        self.policy = wrap_policy(load_adapter(model_path), config.lora, model_path)
        model = self.policy.module.eval()
        self.reference = reference_policy(self.policy) if config.loss.kl_coef > 0 else None
        if config.zero_stage == 3:  # before initialize: DeepSpeed hooks the modules it finds then
            model.scoring_head = ScoringHead(self.policy)
        self.engine, self.optimizer = build_deepspeed_engine(
            model, config.optim, zero_stage=config.zero_stage, bf16=config.bf16,
            micro_batch_size=config.micro_batch_size, grad_accum_steps=1,
            zero3_persist_below=config.zero3_persist_below)
        if config.zero_stage == 3:
            model.scoring_head.attach()
        self.ranks = RankGroup.current()
        check(self.ranks.world == config.num_ranks, "learner.num_ranks", config.num_ranks,
              f"but this process is one of {self.ranks.world} in its torch.distributed group",
              "start the learner through jobs.rl (which starts one process per rank) or set num_ranks to match")
        # the adapter computes with, and publishes, the very module DeepSpeed updates
        assert self.engine.module is self.policy.module
        self.clipper = config.optim.clipping.build([n for n, p in model.named_parameters() if p.requires_grad])
        self.elastic = build_elastic(config.elastic, model.config, seed)
        self.grad_access = deepspeed_gradient_access(self.engine.module.named_parameters())
        self.version = 0
        self.step = 0
        self._published_step = 0
        self.dumper = StepDumper(config.dump, model_path) if config.dump.enabled else None

    @property
    def model(self) -> torch.nn.Module:
        """The trained module (the one DeepSpeed updates; `policy` computes with it)."""
        return self.engine.module

    def train_on_rollouts(self, rollouts: list[Rollout], advantages: list[float | None]) -> dict[str, float]:
        layers = self.policy.layer_map
        batch = build_training_batch(rollouts, advantages, self.policy.pad_token_id, layers.num_moe_layers,
                                     layers.top_k)
        return self.train_step(batch)

    def train_step(self, batch: TrainingBatch) -> dict[str, float]:
        cfg = self.config
        if self.elastic is not None and batch.submodels_B is None:
            batch = self.elastic.assign(batch, self.step)
        if cfg.routing_replay == "R3" and batch.rollout_routes_BSLK is None:
            raise ValueError("LearnerConfig.routing_replay='R3' needs rollout routes, but the rollouts have none; "
                             "enable routed-expert capture in the rollout engine or use routing_replay='off'/'R2'")
        fused_old = folds_old_forward(cfg)
        observed = _Observed(batch, self.policy.layer_map.moe_layers)
        if self.dumper is not None:
            self.dumper.save_weights(self.step, self.policy)  # the weights the rollouts were sampled with
        old_lp, recorded_routes = None, None
        with torch.no_grad():
            if not fused_old:
                old_lp, _, old_out = response_logprobs(
                    self.policy, batch,
                    forced_routes=batch.rollout_routes_BSLK if cfg.routing_replay == "R3" else None, capture=True,
                    temperature=cfg.temperature)
                observed.record(slice(None), _engine_view_logprobs(self.policy, old_out, batch, old_lp,
                                                                   cfg.temperature), old_out)
                recorded_routes = old_out.routes_BSLK
            replay_routes = {"off": None, "R2": recorded_routes, "R3": batch.rollout_routes_BSLK}[cfg.routing_replay]
            # the reference is scored with the experts the update uses, so that its KL term compares weights
            # and not two routings (docs/routing_replay.md)
            ref_lp = (response_logprobs(self.reference, batch, forced_routes=replay_routes,
                                        temperature=cfg.temperature)[0] if self.reference is not None else None)
        order = torch.arange(batch.input_ids_BS.shape[0])
        sums: dict[str, float] = {}
        used_mismatch = []
        minis = list(torch.chunk(order, cfg.num_minibatches))
        minis += [order[:0]] * (self.ranks.max_int(len(minis)) - len(minis))  # every rank steps as often
        for index, mini in enumerate(minis):
            set_lr(self.optimizer, lr_at(cfg.optim, self.step * cfg.num_minibatches + index,
                                         max(1, cfg.schedule_steps)))
            step_metrics, mismatch = self._optimizer_step(batch, mini, old_lp, ref_lp, replay_routes, observed,
                                                          record=fused_old)
            used_mismatch.append(mismatch)
            for k, v in step_metrics.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.num_minibatches
        metrics = observed.metrics(self.ranks)
        metrics.update(sums)
        if self.elastic is not None:
            metrics.update(self.elastic.metrics(batch, observed.logprobs_BS))
        if batch.rollout_routes_BSLK is not None:
            metrics["moe/route_mismatch_during_update"] = float(sum(used_mismatch) / len(used_mismatch))
        if not self.ranks.is_lead:
            metrics = {}  # rank 0 reports for the group
        if self.dumper is not None:
            self.dumper.save_batch(self.step, batch, learner_lp_BS=observed.logprobs_BS,
                                   live_routes_BSLK=observed.live_BSLK, replay_routes_BSLK=recorded_routes,
                                   num_experts=self.policy.layer_map.num_experts, mode=cfg.routing_replay,
                                   temperature=cfg.temperature, metrics=metrics)
        self.step += 1
        return metrics

    def _optimizer_step(self, batch, rows, old_lp, ref_lp, replay_routes, observed: _Observed,
                        record: bool) -> tuple[dict[str, float], float]:
        """One optimizer step over `rows`. old_lp None: on-policy, the forward's own detached log-probs are the
        old ones and `observed` records them (record=True); else `observed` already holds them. With several
        ranks the normalisers are the global counts and every rank runs the same number of micro-batches
        (rl_platform/distributed.py)."""
        cfg, ranks = self.config, self.ranks
        mini = batch.rows(rows)
        num_tokens, num_seqs = ranks.sum([mini.num_tokens, int((mini.mask_BS.sum(-1) > 0).sum())])
        num_tokens, num_seqs = max(1, int(num_tokens)), int(num_seqs)
        totals = {"loss/policy": 0.0, "loss/clip_frac": 0.0, "loss/kl_to_ref": 0.0, "loss/ratio_mean": 0.0,
                  "policy/entropy": 0.0}
        mismatch_num = mismatch_den = 0.0
        self.engine.module.train(False)  # no dropout; keeps MoE load counting (a pretraining concern) off
        stats = None
        # micro-batches of similar lengths, each cut to its longest row: the loss is normalised by the step's
        # token count, so grouping changes nothing but the padding computed (docs/async_rl.md, "Faster step")
        rows = rows[torch.argsort(batch.attention_mask_BS[rows].sum(-1), stable=True)]
        num_micro = ranks.max_int(-(-len(rows) // cfg.micro_batch_size))
        for m in range(num_micro):
            idx = rows[m * cfg.micro_batch_size:(m + 1) * cfg.micro_batch_size]
            filler = len(idx) == 0  # this rank ran out of rows before the others: a masked row keeps it in step
            micro = batch.rows(idx if not filler else torch.arange(1)).trimmed()
            if filler:
                micro = dataclasses.replace(micro, mask_BS=torch.zeros_like(micro.mask_BS), num_tokens=0)
                idx = torch.arange(1)
            s = micro.input_ids_BS.shape[1]
            forced = None if replay_routes is None else replay_routes[idx, :s]
            if cfg.zero_stage == 3:  # what engine.forward does (we call the module): accumulate, not overwrite
                self.engine.optimizer.clear_backward_seen_flag()
            logprobs, entropy, out = response_logprobs(self.policy, micro, forced_routes=forced,
                                                       capture=micro.rollout_routes_BSLK is not None,
                                                       temperature=cfg.temperature)
            if record and not filler:
                observed.record(idx, _engine_view_logprobs(self.policy, out, micro, logprobs,
                                                           cfg.temperature), out)
            result = cfg.loss.loss(PolicyLossInputs(
                logprobs_BS=logprobs, old_logprobs_BS=logprobs.detach() if old_lp is None else old_lp[idx, :s],
                advantages_B=micro.advantages_B, mask_BS=micro.mask_BS,
                generator_logprobs_BS=micro.generator_logprobs_BS, old_logprobs_t1_BS=observed.logprobs_BS[idx, :s],
                ref_logprobs_BS=None if ref_lp is None else ref_lp[idx, :s],
                num_global_tokens=num_tokens, num_global_seqs=num_seqs))
            # The loss is already divided by the mini-batch's token count, so no GAS rescaling; the boundary
            # (gradient reduction, clipping, optimizer step) is the last micro-batch of the mini-batch.
            # DeepSpeed averages gradients over ranks; times the world size, that average is the global sum.
            is_last = m == num_micro - 1
            self.engine.set_gradient_accumulation_boundary(is_last)
            self.engine.backward(result.loss * ranks.world, scale_wrt_gas=False)
            if is_last:
                stats = self.clipper.clip(self.grad_access)
            self.engine.step()
            share = micro.num_tokens / num_tokens  # 0 for a filler, which still adds its keys (same on every rank)
            totals["loss/policy"] += 0.0 if filler else float(result.loss.detach())
            totals["loss/clip_frac"] += result.clip_frac * share
            totals["loss/kl_to_ref"] += result.kl_to_ref * share
            totals["loss/ratio_mean"] += result.ratio_mean * share
            totals["policy/entropy"] += float((entropy.detach() * micro.mask_BS).sum()) / num_tokens
            for key, value in result.metrics.items():
                totals[key] = totals.get(key, 0.0) + value * share
            if micro.rollout_routes_BSLK is not None and not filler:
                valid = micro.attention_mask_BS.bool() & (micro.rollout_routes_BSLK[..., 0, 0] >= 0)
                m_ = route_mismatch_metrics(out.routes_BSLK, micro.rollout_routes_BSLK, valid, prefix="x")
                weight = float(valid.sum())
                mismatch_num += m_["x"] * weight
                mismatch_den += weight
        totals["x/mismatch_num"], totals["x/mismatch_den"] = mismatch_num, mismatch_den
        totals = ranks.sum_metrics(totals, sorted(totals))  # each rank's part of a global sum
        mismatch = totals.pop("x/mismatch_num") / max(totals.pop("x/mismatch_den"), 1.0)
        totals["train/grad_norm"] = stats.grad_norm
        totals["train/clipped_tensors"] = float(stats.num_clipped)
        totals["train/lr"] = self.optimizer.param_groups[0]["lr"]
        return totals, mismatch

    def publish_weights(self) -> PolicyWeights | None:
        """The current weights; the version counts distinct weights, so publishing again without an update in
        between (as a resumed run does to load its engines) republishes the same version. Every rank must
        call it (ZeRO-3 gathers the parameters); rank 0 returns the weights, the others None."""
        if self.step != self._published_step:
            self.version += 1
            self._published_step = self.step
        if not self.ranks.is_lead and self.config.zero_stage < 3:
            return None
        with full_parameters(self.model, self.config.zero_stage):
            if not self.ranks.is_lead:
                return None
            return PolicyWeights.pack(self.version, self.policy.checkpoint_tensors())  # copies: safe to train on

    def save_checkpoint(self, path: str, client_state: dict) -> str:
        """Commits an atomic checkpoint under `path`, tagged by `client_state["step"]` (the loop's step, which
        advances even when the learner's does not); returns the checkpoint's directory."""
        state = {**client_state, "learner_step": self.step, "version": self.version,
                 "clipper": self.clipper.state_dict(), "torch_rng": torch.get_rng_state(),
                 "trainable": sorted(self._trainable())}
        step = int(client_state.get("step", self.step))
        # frozen weights (LoRA's base) come from the base model at start-up: only trained tensors are saved
        info = save_across_ranks(
            self.ranks, lambda write: CheckpointStore(path).save(step, write, meta=client_state),
            lambda staging, tag: self.engine.save_checkpoint(str(staging), tag=tag, client_state=state,
                                                             save_latest=False,
                                                             exclude_frozen_parameters=self._has_frozen()),
            {"num_ranks": self.ranks.world, "zero_stage": self.config.zero_stage})
        return str(self.ranks.broadcast(None if info is None else str(info.path)))

    def load_checkpoint(self, path: str) -> dict:
        """Loads a checkpoint directory, or the newest valid checkpoint of a checkpoints/<role> folder."""
        target = checkpoint_to_load(path)
        check_rank_count(target, self.ranks.world, self.config.zero_stage)
        loaded, state = self.engine.load_checkpoint(str(target.parent), tag=target.name,
                                                    load_module_strict=not self._has_frozen())
        if loaded is None:
            raise CheckpointError(f"DeepSpeed found no loadable checkpoint in {target}")
        saved = set(state.get("trainable", self._trainable()))
        if saved != self._trainable():
            raise CheckpointError(f"{target} holds the trained tensors {sorted(saved ^ self._trainable())[:4]}... "
                                  "differently from this learner; resume with the run's own learner settings "
                                  "(learner.lora.*)")
        self.step = int(state["learner_step"])
        self.version = int(state["version"])
        self._published_step = self.step  # the checkpoint is taken after the step's weights were published
        self.clipper.load_state_dict(state["clipper"])
        torch.set_rng_state(state["torch_rng"])
        return state

    def _trainable(self) -> set[str]:
        return {n for n, p in self.engine.module.named_parameters() if p.requires_grad}

    def _has_frozen(self) -> bool:
        return any(not p.requires_grad for p in self.engine.module.parameters())

    def export(self, path: str, tokenizer=None) -> str:
        """Rank 0 writes the directory; under ZeRO-3 every rank must call it (the parameters are gathered)."""
        written = None
        with full_parameters(self.model, self.config.zero_stage):
            if self.ranks.is_lead:
                written = str(self.policy.export(path, tokenizer=tokenizer))
        return self.ranks.broadcast(written)

    def export_family(self, out_dir: str, full_dir: str, tokenizer=None) -> dict[str, str]:
        """Every family member of the trained policy as a Hugging Face directory under `out_dir` (elastic RL);
        the full model is the one `export` wrote to `full_dir`."""
        return export_family(self.policy, out_dir, full_dir=full_dir, tokenizer=tokenizer)
