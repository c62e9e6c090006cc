"""`python_code_verifier`: runs a candidate Python solution against assert-style tests in the sandbox.

A sample's `metadata["tests"]` is a list of Python statements (`"assert add(2, 3) == 5"`), each run in
the candidate's namespace; the completion is the code (the last ```python fenced block if there is one).

A candidate that loops, allocates too much, forks, writes outside its directory or opens a socket is a
wrong program, and by default scores 0 with the sandbox's reason attached (`score_violations_as_zero`):
excluding it would hide exactly the behaviour the policy must unlearn. A sample is *failed* when the
reward cannot judge it: no tests, or the harness itself broke.

TODO(rewards): the verdict is read from the child's stdout after a marker line; a candidate that
introspects the harness could forge it. Reading results over a pipe the candidate cannot reach would fix it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rewards.base import REWARDS, Failure, RewardConfig, RewardInput, RewardResult, config_version
from rewards.sandbox import SandboxConfig, run_python
from rl_platform.config import check

_FENCE_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
_MARK = "@@REWARD_VERDICT@@"

_HARNESS = f"""
import json
namespace = {{"__name__": "candidate"}}
exec(compile(open("candidate.py").read(), "candidate.py", "exec"), namespace)
tests = json.loads(open("tests.json").read())
passed = 0
for test in tests:
    try:
        exec(test, dict(namespace))
        passed += 1
    except Exception:
        pass
print({_MARK!r} + json.dumps({{"passed": passed, "total": len(tests)}}))
"""


def extract_code(completion: str) -> str:
    blocks = _FENCE_RE.findall(completion)
    return blocks[-1] if blocks else completion


@REWARDS.register("python_code_verifier")
@dataclass(kw_only=True, slots=True)
class PythonCodeVerifierConfig(RewardConfig):
    """Fraction (or all-or-nothing) of `metadata[tests_key]` asserts a sandboxed candidate passes.

    Example:
        PythonCodeVerifierConfig(sandbox=SandboxConfig(wall_time_s=3.0), partial_credit=True)
    """

    timeout_s: float | None = 300.0
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    tests_key: str = "tests"
    partial_credit: bool = False
    """True: value = passed / total; False: 1.0 only if every test passes."""
    score_violations_as_zero: bool = True
    """A candidate stopped by the sandbox scores 0 (with the reason); False fails the sample instead."""
    max_parallel: int = 2
    """Sandboxes run at once; each is a process, so keep it <= free CPU cores."""

    def __post_init__(self) -> None:
        RewardConfig.__post_init__(self)
        check(self.max_parallel >= 1, "PythonCodeVerifierConfig.max_parallel", self.max_parallel, "must be >= 1",
              "give the number of CPU cores to use")

    def make_scorer(self) -> PythonCodeVerifier:
        return PythonCodeVerifier(self)


class PythonCodeVerifier:
    name = "python_code_verifier"

    def __init__(self, config: PythonCodeVerifierConfig) -> None:
        self.config = config
        self.version = config_version(config)
        self.pass_threshold = 1.0

    def score_one(self, sample: RewardInput) -> float | Failure | RewardResult:
        tests = sample.metadata.get(self.config.tests_key)
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            return Failure(f"no_tests: metadata[{self.config.tests_key!r}] must be a non-empty list of "
                           f"assert statements, got {tests!r:.80}")
        result = run_python(_HARNESS, self.config.sandbox,
                            files={"candidate.py": extract_code(sample.completion), "tests.json": json.dumps(tests)})
        verdicts = [line for line in result.stdout.splitlines() if line.startswith(_MARK)]
        if result.ok and verdicts:
            verdict = json.loads(verdicts[-1][len(_MARK):])
            fraction = verdict["passed"] / verdict["total"]
            return fraction if self.config.partial_credit else float(fraction == 1.0)
        reason = result.reason or "harness: exited 0 without a verdict"
        if not self.config.score_violations_as_zero:
            return Failure(reason)
        return RewardResult(value=0.0, failed=False, reason=reason, reward_name=self.name,
                            reward_version=self.version)

    def score_batch(self, samples: Sequence[RewardInput]) -> list[float | Failure | RewardResult]:
        with ThreadPoolExecutor(max_workers=self.config.max_parallel) as pool:
            return list(pool.map(self.score_one, samples))
