"""The RL job's side of fault tolerance: save and resume checkpoints with the run's logs, stop on a signal,
and turn a learner failure into a clear stop (or, with `loop.auto_resume`, a restart from the checkpoint).

    checkpoints = RLCheckpoints(run_dir, config.checkpoint)
    start = checkpoints.resume(trainer) if resume else 0     # newest valid checkpoint; logs cut back to it
    ...
    checkpoints.save(trainer, step)                           # atomic; records every *.jsonl's length

Everything a resume needs is in the checkpoint: the learner (weights, optimizer, clipper, RNG, version),
the loop step (prompts and sampling seeds are functions of it) and the byte length of every `*.jsonl` of
the run folder when it was taken. Fault table and commands: docs/fault_tolerance.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rl_platform.checkpointing import CheckpointConfig, CheckpointInfo, CheckpointStore
from rl_platform.run_dir import RunDir
from rl_platform.shutdown import resume_command
from rl_platform.types import Rollout

logger = logging.getLogger(__name__)

ROLE = "rl"


class LearnerFailed(RuntimeError):
    """The learner actor died or raised; carries the step it failed at and the cause."""

    def __init__(self, step: int | None, cause: BaseException) -> None:
        super().__init__(f"the learner failed{'' if step is None else f' during step {step + 1}'}: "
                         f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause) else ''}")
        self.step = step
        self.cause = cause


class GuardedTrainer:
    """A PolicyTrainer whose every failure becomes LearnerFailed, so the job can tell a learner fault (restart
    from the checkpoint) from a bug elsewhere (a traceback)."""

    def __init__(self, trainer: Any) -> None:
        self.inner = trainer
        self.step: int | None = None
        """The loop step in progress (set by the job), for the failure message."""

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.inner, method)(*args)
        except Exception as exc:  # noqa: BLE001 - any learner error stops or restarts the run, with its cause
            raise LearnerFailed(self.step, exc) from exc

    def train_step(self, rollouts: Sequence[Rollout], advantages: Sequence[float | None]) -> dict[str, float]:
        return self._call("train_step", rollouts, advantages)

    def publish_weights(self) -> Any:
        return self._call("publish_weights")

    def save_checkpoint(self, path: str, client_state: dict) -> Any:
        return self._call("save_checkpoint", path, client_state)

    def load_checkpoint(self, path: str) -> dict:
        return self._call("load_checkpoint", path)

    def export(self, path: str) -> str:
        return self._call("export", path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RLCheckpoints:
    """The RL run's checkpoint folder (`run_dir/checkpoints/rl`) tied to its logs."""

    def __init__(self, run_dir: RunDir, config: CheckpointConfig) -> None:
        self.run_dir = run_dir
        self.store = CheckpointStore(run_dir.checkpoints / ROLE, config)
        self.resumed_state: dict[str, Any] = {}
        """The client state of the checkpoint `resume` loaded (empty before)."""

    def newest(self) -> CheckpointInfo | None:
        return self.store.newest_valid()

    def save(self, trainer: Any, step: int, extra: dict[str, Any] | None = None) -> CheckpointInfo:
        """Checkpoints the state after loop step `step` (1-based count of finished steps) and prunes old ones;
        `extra` joins the client state (the rollout scheduler's dataset cursor and pending groups)."""
        meta = {**(extra or {}), "step": step, "run_files": self.run_dir.jsonl_offsets()}
        trainer.save_checkpoint(str(self.store.root), meta)
        self.store.prune()
        info = self.store.newest_valid()
        assert info is not None and info.step == step, f"checkpoint of step {step} did not verify after saving"
        return info

    def resume(self, trainer: Any) -> int:
        """Loads the newest valid checkpoint into `trainer`, cuts the run's logs back to it; returns its step.
        The checkpoint's whole client state is kept in `resumed_state`."""
        info = self.store.require_newest_valid()
        state = trainer.load_checkpoint(str(info.path))
        self.resumed_state = dict(state)
        removed = self.run_dir.truncate_jsonl(info.meta.get("run_files", {}))
        logger.info("loaded checkpoint %s (step %d)%s", info.path, int(state["step"]),
                    f" (dropped rows written after it from {sorted(removed)})" if removed else "")
        return int(state["step"])


def learner_failure_message(failure: LearnerFailed, checkpoints: RLCheckpoints, run_dir: RunDir) -> str:
    """What the user reads when the learner fails: what, the last checkpoint, and the command that resumes."""
    newest = checkpoints.newest()
    where = (f"the last checkpoint is {newest.path} (after step {newest.step})" if newest is not None
             else "there is no checkpoint yet, so a resume would start from step 0")
    return (f"error: jobs.rl: {failure}; {where}. Continue with:\n  {resume_command('jobs.rl', run_dir.path)}\n"
            "or set --set loop.auto_resume=N to restart from the checkpoint inside the job (up to N times)")
