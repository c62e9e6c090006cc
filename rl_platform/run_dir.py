"""One folder per run: resolved config, metrics, logs, checkpoints and the report.

    runs/<recipe>-<YYYYmmdd-HHMMSS>/
      config.json        the resolved config tree (after --set overrides)
      metrics.jsonl      one JSON object per step: {"step": n, "area/name": value, ...}
      rollouts.jsonl     every scored sample (RL): text, reward and its provenance
      logs/              one log file per process role (driver, rollout, learner, ...)
      checkpoints/       resumable state (rl_platform/checkpointing.py); each checkpoint records how long
                         every *.jsonl above was, and a resume cuts them back to that
      report/            PNG figures and summary.md written at the end
      wandb/             the wandb run (offline unless WANDB_MODE says otherwise)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_platform.config import config_to_dict

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class RunConfig:
    """Where and how a run records itself."""

    run_dir: str = ""
    """Run folder; empty means runs/<recipe>-<timestamp>/ under the current directory."""
    seed: int = 0
    """Seed for every RNG of the run (torch, numpy, python, data order, sampling)."""
    use_wandb: bool = True
    """Log metrics to wandb as well as metrics.jsonl; offline unless WANDB_MODE is set."""
    wandb_project: str = "rl-platform"
    """wandb project name."""


class RunDir:
    """Creates the run folder and owns metrics.jsonl and the optional wandb run.

    Example:
        run = RunDir.create(RunConfig(), recipe="pretrain_tiny", config=cfg)
        run.log_metrics(step=1, metrics={"train/loss": 2.3})
        run.close()
    """

    def __init__(self, path: Path, config: Any, wandb_run: Any = None,
                 log_handler: logging.Handler | None = None) -> None:
        self.path = path
        self.config = config
        self._wandb = wandb_run
        self._log_handler = log_handler
        self._jsonl: dict[str, Any] = {}
        self.jsonl("metrics.jsonl")

    @classmethod
    def create(cls, run_config: RunConfig, recipe: str, config: Any) -> RunDir:
        path = Path(run_config.run_dir) if run_config.run_dir else default_run_path(recipe)
        for sub in ("logs", "checkpoints", "report"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        resolved = {"recipe": recipe, "config": config_to_dict(config)}
        (path / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        handler = attach_file_log(path / "logs" / "driver.log")
        wandb_run = _start_wandb(run_config, path, recipe, resolved) if run_config.use_wandb else None
        logger.info("run directory: %s", path)
        return cls(path, config, wandb_run, handler)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def report(self) -> Path:
        return self.path / "report"

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Appends one line to metrics.jsonl (and wandb). Keys must be `area/name`."""
        bad = [k for k in metrics if "/" not in k]
        if bad:
            raise ValueError(f"metric keys must be 'area/name'; got {bad}")
        clean = {k: _json_number(v) for k, v in metrics.items()}
        self.jsonl("metrics.jsonl").write(json.dumps({"step": step, **clean}) + "\n")
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def log_rollouts(self, step: int, rollouts: list[Any]) -> None:
        """Appends every scored sample of a step to rollouts.jsonl: text, reward and its provenance."""
        f = self.jsonl("rollouts.jsonl")
        for r in rollouts:
            reward = r.reward
            f.write(json.dumps({
                "step": step, "prompt_id": r.prompt.prompt_id, "sample": r.completion.sample_index,
                "policy_version": r.completion.policy_version, "completion": r.completion.text,
                "finish_reason": r.completion.finish_reason, "reward": reward.value, "failed": reward.failed,
                "reason": reward.reason, "reward_name": reward.reward_name,
                "reward_version": reward.reward_version, "shadow_reward": reward.shadow_value,
            }) + "\n")
        f.flush()

    def jsonl(self, name: str) -> Any:
        """The run's append-only handle on `name` (a `*.jsonl` file in the run folder), opened once.

        Every step-keyed log of a run goes through here (metrics, rollouts, the sample ledger), so that a
        checkpoint can record how far each file had got (`jsonl_offsets`) and a resume can cut what came
        after it (`truncate_jsonl`): after a crash and `--resume`, no row is counted twice."""
        if not name.endswith(".jsonl") or "/" in name:
            raise ValueError(f"RunDir.jsonl: {name!r} must be a plain '<name>.jsonl' file name")
        if name not in self._jsonl:
            self._jsonl[name] = open(self.path / name, "a", buffering=1)
        return self._jsonl[name]

    def jsonl_offsets(self) -> dict[str, int]:
        """Byte size of every `*.jsonl` in the run folder, after flushing this process's handles."""
        for handle in self._jsonl.values():
            handle.flush()
            os.fsync(handle.fileno())
        return {p.name: p.stat().st_size for p in sorted(self.path.glob("*.jsonl"))}

    def truncate_jsonl(self, offsets: dict[str, int]) -> dict[str, int]:
        """Cuts every `*.jsonl` back to `offsets` (a file the checkpoint did not know: to empty); returns the
        bytes removed per file. Rows past a checkpoint belong to steps that will run again."""
        return truncate_jsonl(self.path, offsets, handles=self._jsonl)

    def close(self) -> None:
        for handle in self._jsonl.values():
            handle.close()
        self._jsonl.clear()
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def truncate_jsonl(path: Path, offsets: dict[str, int], handles: dict[str, Any] | None = None) -> dict[str, int]:
    """`RunDir.truncate_jsonl` for a run folder `path` (usable without opening the run)."""
    removed = {}
    for handle in (handles or {}).values():
        handle.flush()
    for file in sorted(path.glob("*.jsonl")):
        size = file.stat().st_size
        keep = int(offsets.get(file.name, 0))
        if keep > size:
            raise RuntimeError(f"{file} has {size} bytes but the checkpoint recorded {keep}: the file was "
                               "edited or replaced after the checkpoint; restore it or start a new run")
        if keep < size:
            os.truncate(file, keep)
            removed[file.name] = size - keep
            logger.info("resume: cut %s back to %d bytes (%d bytes written after the checkpoint)", file.name, keep,
                        size - keep)
    return removed


def default_run_path(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics.jsonl file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _json_number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _start_wandb(run_config: RunConfig, path: Path, recipe: str, resolved: dict) -> Any:
    # Offline by default: a laptop run needs no account and never blocks on the network.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    return wandb.init(project=run_config.wandb_project, name=path.name, dir=str(path), config=resolved,
                      job_type=recipe, reinit="finish_previous")


def attach_file_log(path: Path) -> logging.Handler:
    """Mirrors this process's log records into `path` (one file per role)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def setup_logging(role: str, level: int = logging.INFO) -> None:
    """One call per process: the driver and every Ray actor. Prefixes records with the role."""
    logging.basicConfig(level=level, format=f"[{role}] %(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
