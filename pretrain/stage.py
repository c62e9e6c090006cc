"""The pretraining stage end to end: tokenizer -> elastic training -> evaluation -> family export -> report.

The exported family lives in `run_dir/models/<name>/` (HF Ernie4.5-MoE directories with the tokenizer);
`run_dir/models/family.json` lists them with their shapes and validation losses.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pretrain.balance import layer_balance
from pretrain.config import PretrainJobConfig
from pretrain.data.pipeline import Packer, build_tokenizer
from pretrain.elastic import named_family
from pretrain.evaluate import routing_diagnostics, validation_loss
from pretrain.report import (
    balance_markdown,
    diagnostics_markdown,
    family_markdown,
    plot_balance,
    plot_diagnostics,
    plot_loss,
    write_pretrain_html,
)
from pretrain.trainer import PretrainTrainer
from rl_platform.config import config_to_dict
from rl_platform.model.hf_interop import export_hf
from rl_platform.model.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    model_dirs: dict[str, Path]
    """Exported HF directories by sub-model name ("full", "depth-75", ...)."""
    family_losses: dict[str, dict[str, float]]
    train_minutes: float
    stopped_by: str | None = None
    """Why training ended before num_steps (a stop signal); then nothing was evaluated or exported, and the
    same command with --resume continues from the checkpoint written at the stop."""


def run_pretraining(config: PretrainJobConfig, run_dir: Path, log_metrics, resume: bool = False,
                    resume_hint: str = "", stop=None, run_files=None) -> PretrainResult:
    """Trains (continuing from run_dir's checkpoint when `resume`), evaluates, exports and reports. `stop`: a
    GracefulStop ending training after the current step; `run_files`: the RunDir whose *.jsonl a checkpoint
    records and a resume cuts back (docs/fault_tolerance.md)."""
    config.validate()
    tokenizer_dir = run_dir / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").exists():
        tokenizer = load_tokenizer(tokenizer_dir)  # resuming: the ids must not change
    else:
        tokenizer = build_tokenizer(config.data, config.run.seed)
        tokenizer.save_pretrained(str(tokenizer_dir))
    if len(tokenizer) > config.model.vocab_size:
        raise ValueError(f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer "
                         f"({len(tokenizer)} tokens); set --set model.vocab_size={len(tokenizer)}")
    trainer = PretrainTrainer(config, tokenizer, run_dir, log_metrics, run_files=run_files)
    start = time.perf_counter()
    history = trainer.train(resume=resume, resume_hint=resume_hint, stop=stop)
    train_minutes = (time.perf_counter() - start) / 60
    if trainer.stopped_by is not None:
        return PretrainResult(model_dirs={}, family_losses={}, train_minutes=train_minutes,
                              stopped_by=trainer.stopped_by)
    model = trainer.engine.module

    val = Packer(config.data, tokenizer, config.run.seed, "validation")
    family = named_family(config.model)
    losses = {name: validation_loss(model, val, sm, config.eval.num_val_batches, config.loop.micro_batch_size)
              for name, sm in family.items()}
    log_metrics(trainer.step, {f"val/loss_{name}": v["all"] for name, v in losses.items()})
    diag = routing_diagnostics(model, val, config.eval.diagnostics_batches, config.loop.micro_batch_size)

    model_dirs = {}
    if config.eval.export_family:
        for name, sm in family.items():
            model_dirs[name] = export_hf(model, run_dir / "models" / name, tokenizer=tokenizer,
                                         submodel=None if name == "full" else sm)
        listing = {name: {"path": str(path), "shape": family[name].describe(config.model),
                          "val_loss": losses[name]["all"]} for name, path in model_dirs.items()}
        (run_dir / "models" / "family.json").write_text(json.dumps(listing, indent=2) + "\n")

    report = run_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    if history:
        plot_loss(history, report / "pretrain_loss.png")
        plot_balance(history, report / "expert_balance.png")
    balance = layer_balance(diag.counts_LE)
    plot_diagnostics(diag, report)
    describe = {name: sm.describe(config.model) for name, sm in family.items()}
    cfg = config.model
    summary = [
        "# Pretraining report", "",
        f"- model: {cfg.num_params() / 1e6:.2f} M params, {cfg.num_params(active=True) / 1e6:.2f} M active per token "
        f"({cfg.num_experts} experts, top-{cfg.top_k}, {cfg.num_shared_experts} shared; expert activation ratio "
        f"{cfg.activation_ratio():.1%}, routed {cfg.top_k / cfg.num_experts:.1%})",
        f"- aux-loss-free bias speed {config.loop.bias_update_speed:g}"
        + (f", {config.loop.bias_update_speed_final:g} from {config.loop.bias_speed_switch_fraction:.0%} of the steps"
           if config.loop.bias_update_speed_final is not None else ""),
        f"- steps: {trainer.step} in {train_minutes:.1f} min; "
        f"elastic sampling {'on' if config.elastic.enabled else 'off'}",
        "", "## Validation loss of the family", "", family_markdown(losses, describe), "",
        "## Expert-load balance (full model, held-out batches)", "", balance_markdown(balance), "",
        "## Routing diagnostics (full model, held-out batches)", "", diagnostics_markdown(diag), "",
        "![loss](pretrain_loss.png) ![balance](expert_balance.png) ![frequency](expert_frequency.png) "
        "![iou](expert_iou.png) ![entropy](routing_entropy.png)", "",
    ]
    (report / "pretrain.md").write_text("\n".join(summary))
    saved = run_dir / "config.json"  # the resolved config with its recipe name, as the run directory recorded it
    write_pretrain_html(report, run_dir.name, json.loads(saved.read_text()) if saved.exists()
                        else {"config": config_to_dict(config)})
    (report / "pretrain_metrics.json").write_text(json.dumps(
        {"family_val_loss": losses, "routing_entropy": diag.entropy_L.tolist(), "domains": diag.domains,
         "iou": diag.iou_LDD.tolist(), "train_minutes": train_minutes, "steps": trainer.step,
         "balance": asdict(balance) | balance.summary(), "activation_ratio": cfg.activation_ratio()}, indent=2))
    return PretrainResult(model_dirs=model_dirs, family_losses=losses, train_minutes=train_minutes)
