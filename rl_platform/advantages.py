"""Group-relative advantages (GRPO): each completion is compared with the other samples of its prompt.

    A_i = (r_i - mean_group(r)) / (std_group(r) + eps)        normalize_std=True  (GRPO)
    A_i =  r_i - mean_group(r)                                 normalize_std=False (Dr. GRPO)

Failed samples (reward None) take no part: they are excluded from the group statistics and get no
advantage (the learner masks them out of the loss). A group whose rewards are all equal gives zero
advantages (no learning signal), which is counted by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def group_advantages(rewards: Sequence[float | None], *, normalize_std: bool = True,
                     eps: float = 1e-6) -> list[float | None]:
    valid = [r for r in rewards if r is not None]
    if not valid:
        return [None] * len(rewards)
    mean = sum(valid) / len(valid)
    std = math.sqrt(sum((r - mean) ** 2 for r in valid) / len(valid))
    scale = (std + eps) if normalize_std else 1.0
    return [None if r is None else (r - mean) / scale for r in rewards]
