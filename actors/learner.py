"""Learner worker: the DeepSpeed MoE learner (rl_platform.learner) inside its own Ray actor process."""

from __future__ import annotations

from collections.abc import Sequence

from actors.cpu_share import CpuShare
from rl_platform.learner import Learner, LearnerConfig
from rl_platform.run_dir import setup_logging
from rl_platform.types import PolicyWeights, Rollout


class LearnerWorker:
    """Implements rl_platform.protocols.PolicyTrainer."""

    def __init__(self, config: LearnerConfig, model_path: str, seed: int, cpu: CpuShare | None = None) -> None:
        setup_logging("learner")
        (cpu or CpuShare(threads=2)).apply()
        self.learner = Learner(config, model_path, seed=seed)
        from rl_platform.model.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(model_path)

    def train_step(self, rollouts: Sequence[Rollout], advantages: Sequence[float | None]) -> dict[str, float]:
        return self.learner.train_on_rollouts(list(rollouts), list(advantages))

    def publish_weights(self) -> PolicyWeights:
        return self.learner.publish_weights()

    def save_checkpoint(self, path: str, client_state: dict) -> None:
        self.learner.save_checkpoint(path, client_state)

    def load_checkpoint(self, path: str) -> dict:
        return self.learner.load_checkpoint(path)

    def export(self, path: str) -> str:
        return self.learner.export(path, tokenizer=self.tokenizer)

    def export_family(self, out_dir: str, full_dir: str) -> dict[str, str]:
        return self.learner.export_family(out_dir, full_dir, tokenizer=self.tokenizer)

    def trainable_parameters(self) -> dict:
        """name -> CPU copy of every trainable parameter (for tests that check what changed); under ZeRO-3 every
        rank must call it (the parameters are gathered)."""
        from rl_platform.distributed import full_parameters

        with full_parameters(self.learner.model, self.learner.config.zero_stage):
            return {n: p.detach().clone() for n, p in self.learner.model.named_parameters() if p.requires_grad}

    def frozen_parameters(self) -> dict:
        """name -> CPU copy of every frozen parameter (LoRA's base), under the base model's names."""
        return {n.replace(".base_layer", ""): p.detach().clone()
                for n, p in self.learner.model.named_parameters() if not p.requires_grad}

    def teacher_forced_logprobs(self, token_ids: list[int]) -> list[float]:
        from rl_platform.parity import teacher_forced_logprobs

        return teacher_forced_logprobs(self.learner.model, token_ids)
