"""Opt-in dump of every RL update's training batch, the learner's view of it and its pre-update weights, so
that a step's train-inference mismatch can be taken apart afterwards (docs/routing_replay.md, 'Forensics').

Layout of `<run dir>/batches/` (v = the policy version the rollouts were sampled with, which is also the
number of updates the learner had made before this one):

    update_<v>.npz      input_ids_BS, attention_BS, mask_BS, prompt_lengths_B, generator_lp_BS, learner_lp_BS
                        (the temperature-1 log-probs the learner compared with the engine's, under its replay
                        mode), advantages_B, rollout_routes_BSLK, learner_live_routes_BSLK and, for R2,
                        replay_routes_BSLK (the recorded routes the update replayed). Routes are uint8 with 255
                        for "none" (int16 with -1 above 255 experts).
    update_<v>.json     version, replay mode, temperature, the update's metrics, the base model path
    weights_<v>/        the weights the rollouts were sampled with, as an exported HF directory (+ tokenizer)

One update of the 4-layer tiny model dumps ~0.3 MB of batch and 14 MB of weights; `weights_every` thins the
weights out for long runs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rl_platform.batching import TrainingBatch
from rl_platform.config import check

_NONE_U8 = 255
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass(kw_only=True, slots=True)
class StepDumpConfig:
    """Per-update dumps for `python -m jobs.inspect_mismatch` (off by default)."""

    enabled: bool = False
    """Write every update's batch and the learner's view of it under `dir`."""
    weights_every: int = 1
    """Also write the pre-update weights every N-th update (0: never). The decomposition and the per-token
    gate forensics need them; the batch alone gives the logged view (routes, log-probs)."""
    dir: str = ""
    """Where to write; empty: <run dir>/batches (jobs.rl fills it in)."""

    def __post_init__(self) -> None:
        check(self.weights_every >= 0, "StepDumpConfig.weights_every", self.weights_every, "must be >= 0",
              "use 1 (every update), N (every N-th) or 0 (never)")


def encode_routes(routes_BSLK: Tensor | None, num_experts: int) -> np.ndarray | None:
    """int16 routes with -1 for none -> the compact on-disk form (uint8 with 255 for none up to 255 experts)."""
    if routes_BSLK is None:
        return None
    routes = routes_BSLK.to(torch.int16).numpy()
    if num_experts < _NONE_U8:
        return np.where(routes < 0, _NONE_U8, routes).astype(np.uint8)
    return routes


def decode_routes(routes: np.ndarray | None) -> Tensor | None:
    """The inverse of encode_routes: int16 with -1 for none."""
    if routes is None:
        return None
    out = routes.astype(np.int16)
    if routes.dtype == np.uint8:
        out[routes == _NONE_U8] = -1
    return torch.from_numpy(out)


class StepDumper:
    """Writes the dumps; called by the learner around each update.

    Example:
        dumper = StepDumper(StepDumpConfig(enabled=True, dir="runs/x/batches"), model_path="models/base")
        dumper.save_weights(version, model)             # before the update
        dumper.save_batch(version, batch, ...)          # after it, with what the learner observed
    """

    def __init__(self, config: StepDumpConfig, model_path: str) -> None:
        check(bool(config.dir), "StepDumpConfig.dir", config.dir, "must name a folder when enabled",
              "set learner.dump.dir or run through jobs.rl, which uses <run dir>/batches")
        self.config = config
        self.model_path = Path(model_path)
        self.root = Path(config.dir)
        self.root.mkdir(parents=True, exist_ok=True)

    def save_weights(self, version: int, policy) -> Path | None:
        """`policy`: the learner's ModelAdapter; its export is a directory the learner and vLLM both load."""
        every = self.config.weights_every
        if not every or version % every:
            return None
        out = policy.export(self.root / f"weights_{version:04d}")
        for name in _TOKENIZER_FILES:
            if (self.model_path / name).exists():
                shutil.copy(self.model_path / name, out / name)
        return out

    def save_batch(self, version: int, batch: TrainingBatch, *, learner_lp_BS: Tensor, live_routes_BSLK: Tensor | None,
                   replay_routes_BSLK: Tensor | None, num_experts: int, mode: str, temperature: float,
                   metrics: dict[str, float]) -> Path:
        lengths = batch.prompt_lengths_B
        arrays: dict[str, np.ndarray | None] = {
            "input_ids_BS": batch.input_ids_BS.to(torch.int32).numpy(),
            "attention_BS": batch.attention_mask_BS.to(torch.uint8).numpy(),
            "mask_BS": (batch.mask_BS > 0).to(torch.uint8).numpy(),
            "prompt_lengths_B": None if lengths is None else lengths.to(torch.int32).numpy(),
            "generator_lp_BS": batch.generator_logprobs_BS.float().numpy(),
            "learner_lp_BS": learner_lp_BS.detach().float().numpy(),
            "advantages_B": batch.advantages_B.float().numpy(),
            "rollout_routes_BSLK": encode_routes(batch.rollout_routes_BSLK, num_experts),
            "learner_live_routes_BSLK": encode_routes(live_routes_BSLK, num_experts),
            "replay_routes_BSLK": encode_routes(replay_routes_BSLK, num_experts) if mode == "R2" else None,
        }
        path = self.root / f"update_{version:04d}.npz"
        np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
        meta = {"version": version, "routing_replay": mode, "temperature": temperature, "num_experts": num_experts,
                "model_path": str(self.model_path), "metrics": metrics}
        (self.root / f"update_{version:04d}.json").write_text(json.dumps(meta, indent=1) + "\n")
        return path


@dataclass
class StepDump:
    """One dumped update, loaded back (tensors in the learner's layout)."""

    version: int
    meta: dict[str, Any]
    batch: TrainingBatch
    learner_lp_BS: Tensor
    live_routes_BSLK: Tensor | None
    replay_routes_BSLK: Tensor | None
    weights_dir: Path | None
    """The pre-update weights (an HF directory), or None when they were not dumped for this update."""

    @property
    def mode(self) -> str:
        return self.meta["routing_replay"]

    def applied_routes_BSLK(self) -> Tensor | None:
        """The routes the update forced: R3 the rollout's, R2 the recorded ones, off none."""
        return {"R3": self.batch.rollout_routes_BSLK, "R2": self.replay_routes_BSLK}.get(self.mode)


def dumped_versions(root: str | Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in Path(root).glob("update_*.npz"))


def load_step_dump(root: str | Path, version: int) -> StepDump:
    root = Path(root)
    path = root / f"update_{version:04d}.npz"
    if not path.exists():
        raise FileNotFoundError(f"load_step_dump: no dump for policy version {version} in {root} (have "
                                f"{dumped_versions(root)}); run with --set learner.dump.enabled=true")
    data = np.load(path)
    get = data.get if hasattr(data, "get") else (lambda k: data[k] if k in data.files else None)
    mask = torch.from_numpy(data["mask_BS"].astype(np.float32))
    lengths = get("prompt_lengths_B")
    batch = TrainingBatch(
        input_ids_BS=torch.from_numpy(data["input_ids_BS"].astype(np.int64)),
        attention_mask_BS=torch.from_numpy(data["attention_BS"].astype(np.int64)), mask_BS=mask,
        generator_logprobs_BS=torch.from_numpy(data["generator_lp_BS"]),
        advantages_B=torch.from_numpy(data["advantages_B"]),
        rollout_routes_BSLK=decode_routes(get("rollout_routes_BSLK")), num_tokens=int(mask.sum()),
        prompt_lengths_B=None if lengths is None else torch.from_numpy(lengths.astype(np.int64)))
    weights = root / f"weights_{version:04d}"
    return StepDump(version=version, meta=json.loads((root / f"update_{version:04d}.json").read_text()), batch=batch,
                    learner_lp_BS=torch.from_numpy(data["learner_lp_BS"]),
                    live_routes_BSLK=decode_routes(get("learner_live_routes_BSLK")),
                    replay_routes_BSLK=decode_routes(get("replay_routes_BSLK")),
                    weights_dir=weights if (weights / "model.safetensors").exists() else None)


def version_of_step(run_dir: str | Path, step: int) -> int:
    """The policy version whose rollouts step `step` of metrics.jsonl trained on (its `policy/version` - 1)."""
    from rl_platform.run_dir import read_metrics

    path = Path(run_dir) / "metrics.jsonl"
    rows = [r for r in read_metrics(path) if r.get("step") == step and "policy/version" in r]
    if not rows:
        raise ValueError(f"step {step}: {path} has no training row for it (steps are 1-based, as logged)")
    if rows[-1].get("train/skipped"):
        raise ValueError(f"step {step} of {run_dir} made no update (every group was flat); pick another step")
    return int(rows[-1]["policy/version"]) - 1
