"""The pretraining job's config tree (what `jobs/recipes/pretrain.py` returns)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.data.pipeline import PretrainDataConfig
from pretrain.elastic import ElasticConfig
from pretrain.simreg import SimRegConfig
from rl_platform.checkpointing import CheckpointConfig
from rl_platform.config import check
from rl_platform.model.config import MoEModelConfig
from rl_platform.optim.optimizer import OptimConfig
from rl_platform.run_dir import RunConfig


@dataclass(kw_only=True, slots=True)
class PretrainLoopConfig:
    """Steps, batch shape, engine settings and the auxiliary objectives' weights."""

    num_steps: int = 600
    """Optimizer steps."""
    micro_batch_size: int = 8
    """Packed rows per forward."""
    grad_accum_steps: int = 2
    """Micro-batches per optimizer step (global batch = micro_batch_size * grad_accum_steps rows)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (1 or 2; 0 disables ZeRO)."""
    bf16: bool = False
    """bfloat16 mixed precision (DeepSpeed bf16); float32 keeps CPU runs exact and is as fast at this size."""
    bias_update_speed: float = 1e-3
    """u in b_i += u * sign(mean_load - load_i) (docs/ultrasparse.md, 'Balance'). ERNIE 5.0 uses 1e-4 over
    ~10^5 steps; a tiny run has ~10^3 steps, so 1e-3 lets the bias move by a comparable amount relative to
    the router's softmax scale (each expert's probability is ~1/E, so many experts want a smaller u)."""
    bias_update_speed_final: float | None = None
    """u from `bias_speed_switch_fraction` of the run on (ERNIE 5.0: 1e-4 in the main stage, then 1e-5,
    which "suppresses iteration-level oscillations"); None keeps bias_update_speed for the whole run."""
    bias_speed_switch_fraction: float = 0.8
    """Share of num_steps after which bias_update_speed_final applies."""
    mtp_loss_weight: float = 0.3
    """Weight of the multi-token-prediction loss (ERNIE 5.0: 0.3 at 8K); used when model.num_mtp_heads=1."""
    log_every: int = 10
    """Steps between metric lines."""
    checkpoint_every: int = 200
    """Steps between resumable checkpoints (0: only at the end)."""
    max_minutes: float = 0.0
    """Safety cap in minutes of training: a run that needs longer checkpoints and fails (SafetyCapExceeded)
    instead of exporting a model trained for fewer steps than num_steps; 0 = no cap. It never changes the
    trained model, so it is not part of the base-model cache key."""

    def __post_init__(self) -> None:
        check(self.num_steps >= 1, "PretrainLoopConfig.num_steps", self.num_steps, "must be >= 1", "use e.g. 600")
        check(self.zero_stage in (0, 1, 2), "PretrainLoopConfig.zero_stage", self.zero_stage, "must be 0, 1 or 2",
              "use 2 (stage 3 is not wired for the elastic forward yet)")
        check(self.bias_update_speed >= 0 and (self.bias_update_speed_final or 0.0) >= 0,
              "PretrainLoopConfig.bias_update_speed", (self.bias_update_speed, self.bias_update_speed_final),
              "and bias_update_speed_final must be >= 0", "use e.g. 1e-4 then 1e-5 (0 freezes the bias)")
        check(0.0 <= self.bias_speed_switch_fraction <= 1.0, "PretrainLoopConfig.bias_speed_switch_fraction",
              self.bias_speed_switch_fraction, "must be in [0, 1]", "use e.g. 0.8")
        check(self.micro_batch_size >= 1 and self.grad_accum_steps >= 1, "PretrainLoopConfig.micro_batch_size",
              (self.micro_batch_size, self.grad_accum_steps), "and grad_accum_steps must be >= 1", "use 8 and 2")


def bias_speed_at(loop: PretrainLoopConfig, step: int) -> float:
    """The aux-loss-free bias speed u at optimizer step `step` (0-based): a two-phase step schedule."""
    if loop.bias_update_speed_final is None or step < loop.bias_speed_switch_fraction * loop.num_steps:
        return loop.bias_update_speed
    return loop.bias_update_speed_final


@dataclass(kw_only=True, slots=True)
class PretrainEvalConfig:
    """End-of-run evaluation and export."""

    num_val_batches: int = 8
    """Validation batches (of micro_batch_size rows) per evaluated sub-model."""
    export_family: bool = True
    """Export the full model and the named sub-models as HF directories under run_dir/models/."""
    diagnostics_batches: int = 4
    """Validation batches used for the routing diagnostics."""


@dataclass(kw_only=True, slots=True)
class PretrainJobConfig:
    """Everything `python -m jobs.pretrain` needs."""

    model: MoEModelConfig = field(default_factory=MoEModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    simreg: SimRegConfig = field(default_factory=SimRegConfig)
    loop: PretrainLoopConfig = field(default_factory=PretrainLoopConfig)
    eval: PretrainEvalConfig = field(default_factory=PretrainEvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """How many checkpoints are kept and how a resume verifies them (docs/fault_tolerance.md)."""
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        """Rules across sections, checked once after every override (so their order never matters) by the CLI,
        `--dry-run` and `run_pretraining`."""
        check(self.model.max_position_embeddings >= self.data.seq_len, "model.max_position_embeddings",
              self.model.max_position_embeddings, f"must be >= data.seq_len={self.data.seq_len}",
              "raise model.max_position_embeddings")
        check(self.model.vocab_size >= self.data.tokenizer_vocab_size, "model.vocab_size", self.model.vocab_size,
              f"must be >= data.tokenizer_vocab_size={self.data.tokenizer_vocab_size} (the model embeds every "
              "token the tokenizer can produce)", f"set model.vocab_size={self.data.tokenizer_vocab_size} or lower "
              "data.tokenizer_vocab_size")
