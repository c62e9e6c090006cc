"""`python_code_verifier`: runs a candidate Python solution against tests in the sandbox; the verdict is
reached in this process, never in the candidate's.

A test is a call and the value it must return. Written as `assert <call> == <literal>` (or `assert <call>`,
`assert not <call>`), or as `{"call": "add(2, 3)", "expected": 5}`. Only the calls go into the sandbox. The
harness there runs the candidate, evaluates each call with the builtins it saved before the candidate ran,
checks that the result is a plain value (exact types int, float, complex, str, bytes, bool, None, and
list / tuple / dict / set of them), serialises it itself with the built-in `repr`, and writes one record per
test to a channel file that only this process reads. Here the records are parsed with `ast.literal_eval`
and compared with the expected values by this process's `==`. So the candidate's `__eq__`, a forged print,
patched builtins or a tampered channel can only change the *values* reported, and matching values it never
saw is solving the task. A test that is not of these forms is refused (the sample fails, with the reason).

Where the tests come from: `metadata[tests_key]` of the sample, or, with `tests_file` set (how
`rewards.serve` must run it), only the file: a JSONL of `{"task_id": ..., "tests": [...]}` looked up by
`metadata[task_id_key]`; tests sent with the sample are then refused, so a client cannot choose what runs.

A candidate that loops, allocates too much, forks, writes outside its directory or opens a socket is a
wrong program and scores 0 with the sandbox's reason (`score_violations_as_zero`); a sample is *failed*
when the reward cannot judge it: no tests, a test it cannot check, or a broken sandbox (docs/fault_tolerance.md).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from rewards.base import REWARDS, Failure, RewardConfig, RewardInput, RewardResult, config_version
from rewards.sandbox import SandboxConfig, SandboxUnavailable, isolation_status, run_python
from rl_platform.config import ConfigError, check

_FENCE_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)

_HARNESS = r"""
import builtins, os
_saved_builtins = dict(builtins.__dict__)
_fd = int(os.environ["SANDBOX_CHANNEL_FD"])
_write, _repr, _type, _len, _eval = os.write, repr, type, len, eval
_calls = _eval(open("calls.txt").read(), {"__builtins__": {}})
_plain_scalars = (int, float, complex, str, bytes, bool, type(None))

def _plain(value, depth=0):
    kind = _type(value)
    if depth > 20:
        raise TypeError("nested deeper than 20")
    if kind in _plain_scalars:
        return
    if kind in (list, tuple, set, frozenset):
        for item in value:
            _plain(item, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            _plain(key, depth + 1)
            _plain(item, depth + 1)
        return
    raise TypeError(f"{kind.__name__} is not a plain value")

namespace = {"__name__": "candidate"}
exec(compile(open("candidate.py").read(), "candidate.py", "exec"), namespace)  # its errors end the run
_write(_fd, b"loaded\n")
for _i, _call in enumerate(_calls):
    try:
        _value = _eval(_call, {**namespace, "__builtins__": _saved_builtins})
        _plain(_value)
        _record = f"{_i} ok {_repr(_value)}\n"
    except BaseException as exc:
        _record = f"{_i} error {_type(exc).__name__}\n"
    _write(_fd, _record.encode())
"""


def extract_code(completion: str) -> str:
    blocks = _FENCE_RE.findall(completion)
    return blocks[-1] if blocks else completion


@dataclass(frozen=True, slots=True)
class CallTest:
    """One test: a call expression run in the sandbox and the value it must return (compared here)."""

    call: str
    expected: Any


def parse_test(test: Any) -> CallTest:
    """`assert f(x) == 3` / `assert f(x)` / `assert not f(x)` / {"call", "expected"} -> CallTest, or ValueError."""
    if isinstance(test, dict):
        if set(test) != {"call", "expected"} or not isinstance(test["call"], str):
            raise ValueError(f"a test object needs exactly 'call' (str) and 'expected'; got keys {sorted(test)}")
        ast.parse(test["call"], mode="eval")
        return CallTest(call=test["call"], expected=test["expected"])
    if not isinstance(test, str):
        raise ValueError(f"a test must be a string or an object, got {type(test).__name__}")
    try:
        node = ast.parse(test.strip())
    except SyntaxError as exc:
        raise ValueError(f"test {test!r:.80} is not valid Python ({exc.msg})") from None
    if len(node.body) != 1 or not isinstance(node.body[0], ast.Assert):
        raise ValueError(f"test {test!r:.80} is not one assert statement")
    expr = node.body[0].test
    if isinstance(expr, ast.Compare) and len(expr.ops) == 1 and isinstance(expr.ops[0], ast.Eq):
        try:
            expected = ast.literal_eval(expr.comparators[0])
        except ValueError:
            raise ValueError(f"test {test!r:.80}: the right of == must be a literal value, so that it is "
                             "compared outside the candidate's process") from None
        return CallTest(call=ast.unparse(expr.left), expected=expected)
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        return CallTest(call=ast.unparse(expr.operand), expected=False)
    if isinstance(expr, (ast.Call, ast.Name, ast.Attribute, ast.Subscript)):
        return CallTest(call=ast.unparse(expr), expected=True)
    raise ValueError(f"test {test!r:.80} is not of the form `assert <call> == <literal>`, `assert <call>` or "
                     "`assert not <call>`; rewrite it as one of those (or as {\"call\": ..., \"expected\": ...})")


def judge(channel: str, tests: list[CallTest]) -> tuple[int, str | None]:
    """(tests passed, problem) from the harness's records; any deviation from the protocol passes none."""
    lines = channel.splitlines()
    if not lines or lines[0] != "loaded":
        return 0, f"candidate: did not load ({lines[0] if lines else 'no output'})"
    if len(lines) != len(tests) + 1:
        return 0, f"harness: {len(lines) - 1} records for {len(tests)} tests (the channel was tampered with)"
    passed = 0
    for i, (line, test) in enumerate(zip(lines[1:], tests, strict=True)):
        index, _, rest = line.partition(" ")
        status, _, payload = rest.partition(" ")
        if index != str(i) or status not in ("ok", "error"):
            return 0, f"harness: record {i} is malformed (the channel was tampered with)"
        if status == "ok":
            try:
                value = ast.literal_eval(payload)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return 0, f"harness: record {i} does not parse as a value (the channel was tampered with)"
            passed += (type(value) is type(test.expected) and value == test.expected) or _same_number(value, test)
    return passed, None


def _same_number(value: Any, test: CallTest) -> bool:
    # 3 == 3.0 in an assert; keep that for numbers only (not for True == 1 or a str subclass)
    numbers = (int, float, complex)
    return (type(value) in numbers and type(test.expected) in numbers and value == test.expected
            and type(value) is not type(test.expected))


@REWARDS.register("python_code_verifier")
@dataclass(kw_only=True, slots=True)
class PythonCodeVerifierConfig(RewardConfig):
    """Fraction (or all-or-nothing) of a task's tests a sandboxed candidate passes.

    Example:
        PythonCodeVerifierConfig(sandbox=SandboxConfig(wall_time_s=3.0), partial_credit=True)
        PythonCodeVerifierConfig(tests_file="tasks/code.jsonl")   # tests from the server's file only
    """

    executes_untrusted_code: ClassVar[bool] = True
    timeout_s: float | None = 300.0
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    tests_key: str = "tests"
    """Metadata key holding a sample's tests (when tests_file is empty)."""
    tests_file: str = ""
    """A JSONL of {"task_id", "tests"}; when set, tests come only from here, by metadata[task_id_key]."""
    task_id_key: str = "task_id"
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
        check(not self.tests_file or Path(self.tests_file).is_file(), "PythonCodeVerifierConfig.tests_file",
              self.tests_file, "is not a file", "give the path of a JSONL of {\"task_id\": ..., \"tests\": [...]}")

    def make_scorer(self) -> PythonCodeVerifier:
        available, why = isolation_status()
        if self.sandbox.require_isolation and not available:
            raise ConfigError(f"PythonCodeVerifierConfig.sandbox.require_isolation=True but this machine cannot "
                              f"isolate untrusted code: {why}; enable unprivileged user namespaces, or set "
                              "reward.sandbox.require_isolation=false on a machine you trust.")
        return PythonCodeVerifier(self)


def load_task_tests(path: str) -> dict[str, list[CallTest]]:
    """task_id -> parsed tests, from a JSONL file; ConfigError naming the line on any problem."""
    tasks: dict[str, list[CallTest]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            tasks[str(row["task_id"])] = [parse_test(t) for t in row["tests"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}:{number}: {type(exc).__name__}: {exc}; each line must be "
                              '{"task_id": "...", "tests": ["assert f(1) == 2", ...]}') from None
    return tasks


class PythonCodeVerifier:
    name = "python_code_verifier"

    def __init__(self, config: PythonCodeVerifierConfig) -> None:
        self.config = config
        self.version = config_version(config, *([Path(config.tests_file).read_text()] if config.tests_file else []))
        self.pass_threshold = 1.0
        self._generation = 0
        """Bumped by cancel(): samples of an older batch not yet started are failed instead of run."""

    @cached_property
    def task_tests(self) -> dict[str, list[CallTest]]:
        return load_task_tests(self.config.tests_file) if self.config.tests_file else {}

    def tests_for(self, sample: RewardInput) -> list[CallTest] | Failure:
        cfg = self.config
        if cfg.tests_file:
            if cfg.tests_key in sample.metadata:
                return Failure(f"client_tests: metadata[{cfg.tests_key!r}] is refused: this verifier runs only "
                               f"the tests of {cfg.tests_file}; send metadata[{cfg.task_id_key!r}] instead")
            task = sample.metadata.get(cfg.task_id_key)
            if str(task) not in self.task_tests:
                return Failure(f"unknown_task: metadata[{cfg.task_id_key!r}]={task!r:.80} is not in {cfg.tests_file}")
            return self.task_tests[str(task)]
        tests = sample.metadata.get(cfg.tests_key)
        if not isinstance(tests, list) or not tests:
            return Failure(f"no_tests: metadata[{cfg.tests_key!r}] must be a non-empty list of tests, "
                           f"got {tests!r:.80}")
        try:
            return [parse_test(t) for t in tests]
        except ValueError as exc:
            return Failure(f"bad_test: {exc}")

    def cancel(self) -> None:
        """Called by the guard when a batch times out: its samples still queued are not run."""
        self._generation += 1

    def score_one(self, sample: RewardInput, generation: int | None = None) -> float | Failure | RewardResult:
        if generation is not None and generation != self._generation:
            return Failure("cancelled: the batch ran out of time before this sample started")
        tests = self.tests_for(sample)
        if isinstance(tests, Failure):
            return tests
        try:
            result = run_python(_HARNESS, self.config.sandbox,
                                files={"candidate.py": extract_code(sample.completion),
                                       "calls.txt": repr([t.call for t in tests])})
        except SandboxUnavailable as exc:
            return Failure(f"sandbox_unavailable: {exc}")
        if result.reason is not None and result.reason.startswith("setup:"):
            return Failure(f"sandbox_{result.reason}")  # the sandbox broke: nothing is known about the code
        passed, problem = judge(result.channel, tests)
        if result.ok and problem is None:
            fraction = passed / len(tests)
            return fraction if self.config.partial_credit else float(fraction == 1.0)
        reason = result.reason or problem or "harness: no verdict"
        if not self.config.score_violations_as_zero:
            return Failure(reason)
        return RewardResult(value=0.0, failed=False, reason=reason, reward_name=self.name,
                            reward_version=self.version)

    def score_batch(self, samples: Sequence[RewardInput]) -> list[float | Failure | RewardResult]:
        generation = self._generation
        with ThreadPoolExecutor(max_workers=self.config.max_parallel) as pool:
            return list(pool.map(lambda sample: self.score_one(sample, generation), samples))
