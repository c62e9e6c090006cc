"""The sandbox really contains escapes: each is attempted, stopped, reported with a reason, and cleaned up."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

from rewards.code_verifier import PythonCodeVerifierConfig
from rewards.sandbox import SandboxConfig, namespaces_available, run_python

from .conftest import sample

FAST = SandboxConfig(wall_time_s=3.0, cpu_time_s=1, memory_mb=256, max_processes=8)


def _sandbox_processes() -> list[int]:
    """Live (non-zombie) pids owned by a sandbox uid (the module picks them in [200000, 260000) as root)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid = os.stat(f"/proc/{entry}").st_uid
                with open(f"/proc/{entry}/stat") as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                continue
            if 200_000 <= uid < 260_000 and state not in ("Z", "X"):
                pids.append(int(entry))
    return pids


def _parent_is_healthy() -> None:
    assert subprocess.run(["true"]).returncode == 0  # we can still fork and exec
    assert bytearray(64 << 20)  # and allocate


def test_clean_program_runs_and_returns_stdout():
    result = run_python("print(sum(range(10)))", FAST)
    assert result.ok and result.reason is None and result.stdout == "45\n"


def test_infinite_loop_is_stopped_by_cpu_limit():
    # a generous wall clock, so that on a loaded machine the CPU limit (not the wall clock) stops it
    result = run_python("while True:\n    pass", SandboxConfig(wall_time_s=15.0, cpu_time_s=1))
    assert not result.ok and result.reason.startswith("cpu_limit:")
    _parent_is_healthy()


def test_sleeping_forever_is_stopped_by_wall_clock():
    result = run_python("import time\ntime.sleep(60)", SandboxConfig(wall_time_s=1.0))
    assert not result.ok and result.reason.startswith("timeout:") and result.wall_s < 5


def test_large_allocation_fails_inside_the_child():
    result = run_python("x = bytearray(4 * 1024**3)\nprint('allocated')", FAST)
    assert not result.ok and result.reason.startswith("memory_limit:")
    assert "allocated" not in result.stdout
    _parent_is_healthy()


def test_fork_bomb_is_contained_and_leaves_no_process_behind():
    bomb = "import os\nwhile True:\n    os.fork()"
    result = run_python(bomb, SandboxConfig(wall_time_s=2.0, cpu_time_s=1, max_processes=8))
    assert not result.ok and result.reason is not None
    assert _sandbox_processes() == []
    _parent_is_healthy()


def test_fork_limit_refuses_new_processes():
    probe = ("import os, sys\nchildren = 0\nfor _ in range(64):\n    try:\n        pid = os.fork()\n"
             "    except OSError:\n        print('refused after', children); sys.exit(3)\n"
             "    if pid == 0:\n        import time; time.sleep(5); os._exit(0)\n    children += 1\nprint('no limit')")
    if os.geteuid() != 0:
        pytest.skip("RLIMIT_NPROC counts all of this user's processes when not root; the count is not testable")
    result = run_python(probe, SandboxConfig(wall_time_s=3.0, max_processes=8))
    assert "refused after" in result.stdout and "no limit" not in result.stdout
    assert result.reason.startswith("exit: code 3")
    assert _sandbox_processes() == []  # the sleeping children were killed too


def test_write_outside_the_working_directory_is_blocked(tmp_path):
    tmp_path.chmod(0o777)  # world-writable, so only the guard (not file permissions) can stop it
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('pwned')", FAST)
    assert not result.ok and result.reason.startswith("violation:") and "write outside" in result.reason
    assert not target.exists()
    inside = run_python("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())", FAST)
    assert inside.ok and inside.stdout == "ok\n"


def test_rename_and_delete_outside_are_blocked(tmp_path):
    tmp_path.chmod(0o777)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)
    result = run_python(f"import os\nos.remove({str(victim)!r})", FAST)
    assert result.reason.startswith("violation:") and victim.read_text() == "keep me"


@pytest.fixture
def listening_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[object] = []

    def accept():
        server.settimeout(5)
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()


def test_network_connection_to_localhost_fails(listening_port):
    port, accepted = listening_port
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
    result = run_python(code, FAST)
    assert not result.ok and "connected" not in result.stdout
    assert result.reason.startswith("violation:") and "network" in result.reason
    assert accepted == []


@pytest.mark.skipif(not namespaces_available(), reason="needs root and unshare for a network namespace")
def test_network_namespace_holds_without_the_audit_hook(listening_port):
    port, accepted = listening_port
    code = f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\nprint('connected')"
    result = run_python(code, SandboxConfig(wall_time_s=3.0, audit_guard=False))
    assert not result.ok and "connected" not in result.stdout
    assert accepted == []


def test_starting_programs_is_blocked():
    result = run_python("import subprocess\nsubprocess.run(['echo', 'hi'])", FAST)
    assert result.reason.startswith("violation:") and "starting programs" in result.reason


def test_code_verifier_scores_correct_wrong_and_escaping_candidates():
    tests = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]
    config = PythonCodeVerifierConfig(sandbox=FAST)
    scorer = config.build()
    results = scorer.score([
        sample("```python\ndef add(a, b):\n    return a + b\n```", tests=tests),
        sample("def add(a, b):\n    return a - b", tests=tests),
        sample("while True:\n    pass", tests=tests),  # cpu_limit, or timeout on a loaded machine
        sample("import socket\nsocket.create_connection(('127.0.0.1', 1))", tests=tests),
        sample("def add(a, b): return a + b"),  # no tests: the reward cannot judge -> failed
    ])
    assert [r.value for r in results[:4]] == [1.0, 0.0, 0.0, 0.0]
    assert results[2].reason.startswith(("cpu_limit:", "timeout:")) and results[3].reason.startswith("violation:")
    assert results[4].failed and results[4].reason.startswith("no_tests:")
    partial = PythonCodeVerifierConfig(sandbox=FAST, partial_credit=True).build()
    assert partial.score([sample("def add(a, b):\n    return a + b if a > 0 else 9", tests=tests)])[0].value == 0.5
    strict = PythonCodeVerifierConfig(sandbox=FAST, score_violations_as_zero=False).build()
    violation = strict.score([sample("x = bytearray(4 * 1024**3)", tests=tests)])[0]
    assert violation.failed and violation.reason.startswith("memory_limit:")
