"""Held-out evaluation through the same roles as training: generate, score, pass rate (greedy pass@1 when
sampling is SamplingConfig(num_samples_per_prompt=1, temperature=0))."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from rl_platform.controller import SamplingConfig
from rl_platform.protocols import Generator, RewardScorer
from rl_platform.types import Prompt


def evaluate_pass_rate(generator: Generator, scorer: RewardScorer, prompts: Sequence[Prompt],
                       sampling: SamplingConfig, pass_threshold: float, prefix: str = "eval/", chunk_size: int = 0,
                       on_chunk: Callable[[int], None] | None = None, by: str | None = None) -> dict[str, float]:
    """Pass rate over every sample: greedy pass@1 with one greedy sample per prompt, or pass@1 estimated from k
    samples per prompt at the policy's temperature (mean@k, as DAPO and verl report it).

    `chunk_size` > 0 generates that many prompts per call and reports each finished chunk's prompt count to
    `on_chunk` (progress display). Sampling is seeded per request, so the chunking does not change the samples.
    `by`: a metadata key (e.g. "task") to also report `{prefix}pass_rate/<value>` for each of its values.
    """
    groups = []
    step = chunk_size if chunk_size > 0 else max(1, len(prompts))
    for start in range(0, len(prompts), step):
        part = prompts[start:start + step]
        groups += generator.generate(part, sampling)
        if on_chunk is not None:
            on_chunk(len(part))
    flat_prompts = [p for p, g in zip(prompts, groups, strict=True) for _ in g]
    flat = [c for g in groups for c in g]
    outcomes = scorer.score(flat_prompts, flat)
    values = [o.value for o in outcomes if not o.failed]
    by_value: dict[str, list[float]] = {}
    for prompt, outcome in zip(flat_prompts, outcomes, strict=True):
        if by is not None and by in prompt.metadata and not outcome.failed:
            by_value.setdefault(str(prompt.metadata[by]), []).append(outcome.value)
    per_group = {f"{prefix}pass_rate/{name}": sum(v >= pass_threshold for v in vals) / len(vals)
                 for name, vals in sorted(by_value.items())}
    return {**per_group,
        f"{prefix}pass_rate": sum(v >= pass_threshold for v in values) / max(1, len(values)),
        f"{prefix}reward_mean": statistics.fmean(values) if values else float("nan"),
        f"{prefix}failed_count": float(sum(o.failed for o in outcomes)),
        f"{prefix}response_length_mean": statistics.fmean(len(c.token_ids) for c in flat) if flat else 0.0,
        f"{prefix}num_prompts": float(len(prompts)),
    }
