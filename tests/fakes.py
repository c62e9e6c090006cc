"""Small deterministic in-process implementations of the role protocols, for controller tests."""

from __future__ import annotations

from rl_platform.types import Completion, PolicyWeights, Prompt, RewardResult


class FakeGenerator:
    """Answers every prompt with `num_samples_per_prompt` completions: sample i says '#### i'."""

    def __init__(self) -> None:
        self.version = 0
        self.loaded: list[int] = []
        self.seeds: list[int] = []

    def generate(self, prompts, sampling):
        self.seeds.append(sampling.seed)
        return [[Completion(prompt_id=p.prompt_id, sample_index=i, token_ids=[10 + i, 2], text=f"#### {i}",
                            generator_logprobs=[-0.5, -0.1], routed_experts=None, finish_reason="stop",
                            policy_version=self.version)
                 for i in range(sampling.num_samples_per_prompt)] for p in prompts]

    def load_weights(self, weights: PolicyWeights) -> float:
        self.version = weights.version
        self.loaded.append(weights.version)
        return 0.0


class FakeScorer:
    """Reward 1 for sample index 1, else 0; sample index 3 fails; every sample of a prompt in `flat_prompts`
    scores 0 (a group with no learning signal)."""

    def __init__(self, flat_prompts: frozenset[str] = frozenset()) -> None:
        self.flat_prompts = flat_prompts

    def score(self, prompts, completions):
        out = []
        for c in completions:
            if c.prompt_id in self.flat_prompts:
                out.append(RewardResult(value=0.0, failed=False, reward_name="fake"))
            elif c.sample_index == 3:
                out.append(RewardResult(value=None, failed=True, reason="boom", reward_name="fake"))
            else:
                out.append(RewardResult(value=float(c.sample_index == 1), failed=False, reward_name="fake"))
        return out


class FakeTrainer:
    def __init__(self) -> None:
        self.version = 0
        self.seen: list[tuple[list, list]] = []

    def train_step(self, rollouts, advantages):
        self.seen.append((list(rollouts), list(advantages)))
        return {"loss/policy": 0.0}

    def publish_weights(self) -> PolicyWeights:
        self.version += 1
        return PolicyWeights(version=self.version, tensors={})


def prompts(step: int, n: int) -> list[Prompt]:
    return [Prompt(prompt_id=f"train/{step}.{i}", text="Q: 1+1=?\nA:", token_ids=[1, 5, 6], metadata={"answer": 2})
            for i in range(n)]


def resample_prompts(step: int, start: int, n: int) -> list[Prompt]:
    """The fake source's re-sample stream (DAPO refills): ids train/<step>.r<i>."""
    return [Prompt(prompt_id=f"train/{step}.r{i}", text="Q: 1+1=?\nA:", token_ids=[1, 5, 6], metadata={"answer": 2})
            for i in range(start, start + n)]
