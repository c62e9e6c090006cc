"""A learned reward: a Hugging Face sequence classifier (1 logit) loaded from a local directory.

The model scores `prompt + completion` (the text it was trained on in rewards/train_rm.py), batched and
right-padded; HF sequence classifiers read the logit at the last non-pad token. The version is a hash of
every file in the directory (weights, config, tokenizer): swapping checkpoints changes the version logged
with every sample, which is the provenance that "which RM scored this run?" needs.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rewards.base import REWARDS, RewardConfig, RewardInput, config_version
from rl_platform.config import ConfigError, check

# Files beside the model that do not change its scores (training reports); hashing them would give one
# checkpoint two versions.
_NOT_MODEL_FILES = frozenset({"train_metrics.json", "README.md"})


def directory_digest(path: Path) -> str:
    """sha256 over the names and bytes of the model's files (top level of `path`, sorted, so order-stable)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.name not in _NOT_MODEL_FILES):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@REWARDS.register("reward_model")
@dataclass(kw_only=True, slots=True)
class RewardModelConfig(RewardConfig):
    """Scores with an AutoModelForSequenceClassification + tokenizer saved in `path`.

    Example:
        RewardModelConfig(path=Path("runs/rm/model"), batch_size=64)
    """

    path: Path = Path("models/reward_model")
    """A directory written by `save_pretrained` (model and tokenizer), e.g. by train_reward_model."""
    batch_size: int = 32
    """Samples per forward pass; bounds activation memory, not the scorer's input size."""
    max_length: int = 512
    """Tokens kept per sample; longer inputs are truncated from the right (the answer end!), so size it."""
    device: str = "cpu"
    num_threads: int | None = None
    """torch intra-op threads, set at build. Process-global, so set it only where the process is a reward
    worker (e.g. `rewards.serve --set num_threads=1`): on a shared 2-core box, 2 threads ran 40x slower
    than 1 (8.3 s vs 0.22 s for 500 samples) because of spinning OpenMP workers. None leaves torch alone."""

    def __post_init__(self) -> None:
        RewardConfig.__post_init__(self)
        check(self.batch_size > 0, "RewardModelConfig.batch_size", self.batch_size, "must be > 0", "give e.g. 32")
        check(self.max_length > 0, "RewardModelConfig.max_length", self.max_length, "must be > 0", "give e.g. 512")
        check(self.num_threads is None or self.num_threads > 0, "RewardModelConfig.num_threads", self.num_threads,
              "must be > 0 or None", "give a thread count, or None to keep torch's default")

    def make_scorer(self) -> RewardModelScorer:
        if not (self.path / "config.json").is_file():
            raise ConfigError(f"RewardModelConfig.path={str(self.path)!r} has no config.json; point it at a "
                              "directory saved by save_pretrained (e.g. the output of train_reward_model)")
        return RewardModelScorer(self)


class RewardModelScorer:
    pass_threshold = None

    def __init__(self, config: RewardModelConfig) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.config = config
        self.name = "reward_model"
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        # The same weights copied elsewhere or run on another device are the same reward: same version.
        self.version = config_version(config, directory_digest(config.path), exclude=("path", "device", "num_threads"))
        self.tokenizer = AutoTokenizer.from_pretrained(str(config.path))
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(str(config.path))
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(config.device).eval()
        self._torch = torch
        # torch modules are not re-entrant across threads on CPU in a useful way; the server may call
        # score() from several worker threads, so forward passes are serialised.
        self._lock = threading.Lock()

    def texts(self, samples: Sequence[RewardInput]) -> list[str]:
        eos = self.tokenizer.eos_token or ""
        return [s.prompt + s.completion + eos for s in samples]

    def score_batch(self, samples: Sequence[RewardInput]) -> list[float]:
        texts = self.texts(samples)
        values: list[float] = []
        with self._lock, self._torch.inference_mode():
            for start in range(0, len(texts), self.config.batch_size):
                batch = self.tokenizer(texts[start:start + self.config.batch_size], padding=True, truncation=True,
                                       max_length=self.config.max_length, return_tensors="pt",
                                       add_special_tokens=False).to(self.config.device)
                logits = self.model(**batch).logits.float()
                values.extend(logits[:, 0].tolist())
        return values
