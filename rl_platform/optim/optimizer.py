"""Optimizer settings, learning-rate schedules and the DeepSpeed engine shared by pretraining and the learner.

DeepSpeed runs on CPU here with the gloo backend and the `cpu` accelerator, through the same
`deepspeed.initialize` call a GPU run makes; only the accelerator differs. Gradient clipping is done by our
clipper (AdaGC or global), not by DeepSpeed's `gradient_clipping`, so that both modes are available and
identical on every backend.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Literal

import torch

from rl_platform.config import check
from rl_platform.optim.adagc import AdaGCConfig, ClippingConfig

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class OptimConfig:
    """AdamW, schedule and clipping."""

    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final LR as a fraction of the peak (cosine floor, or the end of WSD's decay)."""
    weight_decay: float = 0.01
    """Decoupled weight decay (not applied to norms, biases or the router bias buffer)."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """warmup + cosine decay; warmup-stable-decay (ERNIE 5.0's pretraining schedule); or warmup + constant."""
    warmup_steps: int = 20
    """Linear warm-up steps from 0 to lr."""
    wsd_decay_fraction: float = 0.2
    """Fraction of the run spent in WSD's final decay."""
    clipping: ClippingConfig = field(default_factory=AdaGCConfig)
    """Gradient clipping variant: adagc | global | none."""

    def __post_init__(self) -> None:
        check(self.lr > 0, "OptimConfig.lr", self.lr, "must be > 0", "use e.g. 3e-3 for tiny models")
        check(0.0 <= self.min_lr_ratio <= 1.0, "OptimConfig.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]",
              "use 0.1")
        check(0.0 < self.beta2 < 1.0, "OptimConfig.beta2", self.beta2, "must be in (0, 1)", "use 0.95-0.999")
        check(self.warmup_steps >= 0, "OptimConfig.warmup_steps", self.warmup_steps, "must be >= 0", "use 20")


def lr_at(config: OptimConfig, step: int, total_steps: int) -> float:
    """Learning rate for 0-based `step` of `total_steps`."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    floor = config.lr * config.min_lr_ratio
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "wsd":
        decay_start = int(total_steps * (1.0 - config.wsd_decay_fraction))
        if step < decay_start:
            return config.lr
        frac = (step - decay_start) / max(1, total_steps - decay_start)
        return config.lr + (floor - config.lr) * frac
    frac = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * min(1.0, frac)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# A torch C++-extension build holds `<build dir>/lock` for the ~1 min it compiles; a build killed mid-way leaves
# the file behind and every later build waits on it forever (torch's FileBaton has no owner check). No build
# on any machine this runs on takes this long, so an older lock is a dead one.
STALE_EXTENSION_LOCK_S = 900


def clear_stale_extension_locks(root: str | None = None, *, now: float | None = None) -> list[str]:
    """Delete the build locks under the torch-extension cache that are older than STALE_EXTENSION_LOCK_S.

    DeepSpeed JIT-compiles its CPU communication op there on first use; without this a single interrupted
    compile turns every later DeepSpeed start on the machine into a silent hang."""
    import glob
    import time

    if root is None:
        from torch.utils.cpp_extension import get_default_build_root

        root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    now = time.time() if now is None else now
    removed = []
    for lock in glob.glob(os.path.join(root, "*", "*", "lock")) + glob.glob(os.path.join(root, "*", "lock")):
        try:
            age_s = now - os.path.getmtime(lock)
            if age_s > STALE_EXTENSION_LOCK_S:
                os.remove(lock)
                removed.append(lock)
                logger.warning("removed a torch-extension build lock left by a killed build %.0f s ago: %s",
                               age_s, lock)
        except FileNotFoundError:
            continue  # another process cleared or finished it
    return removed


def init_single_process_distributed() -> None:
    """torch.distributed world of one (gloo) for DeepSpeed when no launcher set one up."""
    import deepspeed

    clear_stale_extension_locks()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() == 1:
            # initialised by someone else in this process (an in-process vLLM engine does): DeepSpeed still
            # reads the launcher's variables
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
                os.environ.setdefault(key, value)
        return
    if os.environ.get("WORLD_SIZE", "1") == "1":
        # A world of one needs no agreed port: always take a free one, because an inherited MASTER_PORT
        # (a Ray worker forked from a driver that trained earlier) may still be bound by that process.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def build_deepspeed_engine(model: torch.nn.Module, config: OptimConfig, *, zero_stage: int, bf16: bool,
                           micro_batch_size: int, grad_accum_steps: int, zero3_persist_below: int = 100_000):
    """deepspeed.initialize around `model` with torch AdamW (no JIT-compiled optimizer op needed).
    zero3_persist_below: under ZeRO-3, parameters with fewer elements stay whole on every rank."""
    import deepspeed

    init_single_process_distributed()
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), eps=config.eps)
    ds_config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "zero_optimization": {"stage": zero_stage, **({"stage3_param_persistence_threshold": zero3_persist_below}
                                                      if zero_stage == 3 else {})},
        "bf16": {"enabled": bf16},
        "gradient_clipping": 0.0,  # our clipper (AdaGC or global) runs between backward and step
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine, optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
