"""The elastic pretraining loop: DeepSpeed engine, sub-model sampling per row, AdaGC, SimReg, MTP,
aux-loss-free bias updates, resumable checkpoints.

One optimizer step:
    for each micro-batch:  rows = packer.batch(...); submodels = one sample per row
                           loss = CE (+ mtp_w * MTP) (+ aux) (+ lambda * SimReg);  engine.backward(loss)
    at the accumulation boundary: clipper.clip(full grads)  ->  engine.step()  ->  bias update  ->  LR
Everything random is a function of (seed, step, micro, row), so a resumed run sees the same batches and
the same sub-models as one that never stopped; the checkpoint holds model, optimizer, clipper state,
step and torch RNG.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pretrain.balance import step_balance_metrics
from pretrain.config import PretrainJobConfig, bias_speed_at
from pretrain.data.pipeline import IGNORE_INDEX, PackedBatch, Packer
from pretrain.elastic import sample_submodel
from pretrain.simreg import simreg_loss
from rl_platform.checkpointing import CheckpointError, CheckpointStore
from rl_platform.config import ConfigError
from rl_platform.model import MoETransformer, SubModel
from rl_platform.optim.adagc import deepspeed_gradient_access
from rl_platform.optim.optimizer import build_deepspeed_engine, lr_at, set_lr
from rl_platform.progress import Progress, format_duration

logger = logging.getLogger(__name__)


class SafetyCapExceeded(ConfigError):
    """Pretraining needed longer than `loop.max_minutes`: it stops with a checkpoint instead of exporting a model
    trained for fewer steps than its config says (the step budget, not the clock, defines the model)."""


@dataclass
class StepLosses:
    total: torch.Tensor
    ce: float
    mtp: float
    aux: float
    simreg: float
    num_tokens: int


def compute_losses(model: MoETransformer, batch: PackedBatch, submodels: list[SubModel] | None,
                   config: PretrainJobConfig) -> StepLosses:
    out = model(batch.input_ids_BS, position_ids_BS=batch.position_ids_BS, doc_ids_BS=batch.doc_ids_BS,
                submodels=submodels)
    logits = model.logits(out.hidden_BSD).float()
    ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), batch.labels_BS.view(-1), ignore_index=IGNORE_INDEX)
    total = ce
    mtp = aux = sim = 0.0
    if out.mtp_hidden_BSD is not None:
        # token t+2 as target of position t: shift the labels (targets of t+1) once more, within documents
        labels2 = torch.full_like(batch.labels_BS, IGNORE_INDEX)
        same_doc = batch.doc_ids_BS[:, 1:] == batch.doc_ids_BS[:, :-1]
        labels2[:, :-1] = torch.where(same_doc, batch.labels_BS[:, 1:], IGNORE_INDEX)
        mtp_logits = model.logits(out.mtp_hidden_BSD).float()
        mtp_loss = F.cross_entropy(mtp_logits.view(-1, mtp_logits.shape[-1]), labels2.view(-1),
                                   ignore_index=IGNORE_INDEX)
        total = total + config.loop.mtp_loss_weight * mtp_loss
        mtp = mtp_loss.item()
    if out.aux_loss is not None:
        total = total + out.aux_loss
        aux = out.aux_loss.item()
    if config.simreg.weight > 0:
        sim_loss = simreg_loss(out.hidden_BSD, batch.labels_BS, batch.doc_ids_BS, config.simreg)
        total = total + config.simreg.weight * sim_loss
        sim = sim_loss.item()
    num_tokens = int((batch.labels_BS != IGNORE_INDEX).sum())
    return StepLosses(total=total, ce=ce.item(), mtp=mtp, aux=aux, simreg=sim, num_tokens=num_tokens)


def sample_row_submodels(config: PretrainJobConfig, step: int, micro: int, rows: int) -> list[SubModel]:
    rng = random.Random(f"{config.run.seed}:elastic:{step}:{micro}")
    return [sample_submodel(rng, config.model, config.elastic) for _ in range(rows)]


class PretrainTrainer:
    """Owns the engine, the clipper and the data; `train()` runs (or resumes) the loop."""

    def __init__(self, config: PretrainJobConfig, tokenizer, run_dir, log_metrics, run_files=None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.log_metrics = log_metrics
        self.run_files = run_files
        """The RunDir (or None): checkpoints record its *.jsonl lengths, a resume cuts them back."""
        self.stopped_by: str | None = None
        """Set when a stop signal ended training early (GracefulStop.reason)."""
        torch.manual_seed(config.run.seed)
        self.model = MoETransformer(config.model)
        loop = config.loop
        self.engine, self.optimizer = build_deepspeed_engine(
            self.model, config.optim, zero_stage=loop.zero_stage, bf16=loop.bf16,
            micro_batch_size=loop.micro_batch_size, grad_accum_steps=loop.grad_accum_steps)
        self.clipper = config.optim.clipping.build([n for n, _ in self.model.named_parameters()])
        self.grad_access = deepspeed_gradient_access(self.engine.module.named_parameters())
        self.packer = Packer(config.data, tokenizer, config.run.seed, "train")
        self.step = 0

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints" / "pretrain"

    def save_checkpoint(self) -> None:
        state = {"step": self.step, "clipper": self.clipper.state_dict(), "torch_rng": torch.get_rng_state()}
        meta = {"step": self.step, "run_files": self.run_files.jsonl_offsets() if self.run_files else {}}
        store = CheckpointStore(self.checkpoint_dir, self.config.checkpoint)
        store.save(self.step, lambda staging, tag: self.engine.save_checkpoint(
            str(staging), tag=tag, client_state=state, save_latest=False), meta=meta)
        store.prune()
        logger.info("checkpoint saved at step %d", self.step)

    def try_resume(self) -> bool:
        """Loads the newest valid checkpoint (a broken newer one is named in the log and skipped); False if none."""
        info = CheckpointStore(self.checkpoint_dir, self.config.checkpoint).newest_valid()
        if info is None:
            return False
        loaded, state = self.engine.load_checkpoint(str(info.path.parent), tag=info.tag)
        if loaded is None:
            raise CheckpointError(f"DeepSpeed found no loadable checkpoint in {info.path}")
        self.step = int(state["step"])
        self.clipper.load_state_dict(state["clipper"])
        torch.set_rng_state(state["torch_rng"])
        if self.run_files is not None:
            self.run_files.truncate_jsonl(info.meta.get("run_files", {}))
        logger.info("resumed pretraining at step %d from %s", self.step, info.path)
        return True

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        loop = cfg.loop
        set_lr(self.optimizer, lr_at(cfg.optim, self.step, loop.num_steps))
        self.engine.module.train()
        sums = Counter()
        shapes = Counter()
        stats = None
        for micro in range(loop.grad_accum_steps):
            batch = self.packer.batch(self.step * loop.grad_accum_steps + micro, loop.micro_batch_size)
            submodels = sample_row_submodels(cfg, self.step, micro, loop.micro_batch_size)
            losses = compute_losses(self.engine.module, batch, submodels, cfg)
            self.engine.backward(losses.total)
            if self.engine.is_gradient_accumulation_boundary():
                stats = self.clipper.clip(self.grad_access)
            self.engine.step()
            for key in ("ce", "mtp", "aux", "simreg"):
                sums[key] += getattr(losses, key) / loop.grad_accum_steps
            sums["tokens"] += losses.num_tokens
            for sm in submodels:
                shapes["depth"] += len(sm.layers) / len(submodels) / loop.grad_accum_steps
                shapes["width"] += len(sm.experts) / len(submodels) / loop.grad_accum_steps
                shapes["top_k"] += sm.top_k / len(submodels) / loop.grad_accum_steps
                shapes["full"] += sm.is_full(cfg.model) / len(submodels) / loop.grad_accum_steps
        speed = bias_speed_at(loop, self.step)
        loads_LE = self.engine.module.update_selection_bias(speed)
        bias_LE = torch.stack([moe.router.selection_bias_E for moe in self.engine.module.moe_layers()])
        self.step += 1
        return {
            "train/loss": sums["ce"], "train/mtp_loss": sums["mtp"], "train/aux_loss": sums["aux"],
            "train/simreg_loss": sums["simreg"], "train/grad_norm": stats.grad_norm,
            "train/clipped_tensors": stats.num_clipped, "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/tokens": sums["tokens"], "elastic/depth_mean": shapes["depth"],
            "elastic/experts_mean": shapes["width"], "elastic/top_k_mean": shapes["top_k"],
            "elastic/full_model_frac": shapes["full"],
        } | step_balance_metrics(loads_LE, bias_LE, speed)

    def train(self, resume: bool = False, resume_hint: str = "", stop=None) -> list[dict[str, float]]:
        """Runs the whole step budget (continuing from the checkpoint when `resume`); raises SafetyCapExceeded,
        after checkpointing, if that takes longer than loop.max_minutes. `stop` (a GracefulStop) ends it after
        the current step."""
        loop = self.config.loop
        if resume:
            self.try_resume()
        history = []
        start = time.perf_counter()
        tokens = 0
        with Progress(total=loop.num_steps, initial=self.step, desc="pretrain", unit="step") as progress:
            while self.step < loop.num_steps:
                metrics = self.train_step()
                tokens += metrics["train/tokens"]
                elapsed = time.perf_counter() - start
                metrics["perf/tokens_per_s"] = tokens / max(elapsed, 1e-9)
                history.append(metrics)
                progress.update(loss=f"{metrics['train/loss']:.3f}", tok_s=f"{metrics['perf/tokens_per_s']:.0f}")
                if self.step % loop.log_every == 0 or self.step == loop.num_steps:
                    self.log_metrics(self.step, metrics)
                if loop.checkpoint_every and self.step % loop.checkpoint_every == 0:
                    self.save_checkpoint()
                if loop.max_minutes and self.step < loop.num_steps and elapsed > 60 * loop.max_minutes:
                    self.save_checkpoint()
                    raise SafetyCapExceeded(self._cap_message(progress, resume_hint))
                if stop is not None and stop.requested:
                    self.stopped_by = stop.reason
                    logger.warning("stopping at step %d: %s", self.step, stop.reason)
                    if self.step % loop.log_every:
                        self.log_metrics(self.step, metrics)  # the last step's metrics are not lost
                    break
        self.save_checkpoint()
        return history

    def _cap_message(self, progress: Progress, resume_hint: str) -> str:
        loop = self.config.loop
        need = format_duration(progress.seconds_per_unit * (loop.num_steps - progress.initial))
        hint = resume_hint or f"--run-dir {self.run_dir}"
        return (f"loop.max_minutes={loop.max_minutes:g} (the pretraining safety cap) was reached at step {self.step} "
                f"of {loop.num_steps}: {progress.seconds_per_unit:.2f} s/step here, ~{need} for the whole budget. "
                f"Nothing was exported (a model trained for fewer steps than its config says would be "
                f"misleading); the checkpoint at step {self.step} is in {self.checkpoint_dir}. Free the machine, "
                f"or finish the run with: python -m jobs.pretrain {hint} --resume --set loop.max_minutes=0")
