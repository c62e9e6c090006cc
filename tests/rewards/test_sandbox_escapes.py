"""Each hole the sandbox and the code verifier used to have, attempted for real, and shown closed.

dir_fd writes, the guard's state reached through gc / frames / function patching, reads of host files and
other processes' environments, memory spread over many processes, and forged verdicts (a printed marker,
an `__eq__` that is always True, patched builtins, a tampered result channel)."""

from __future__ import annotations

import os

import pytest

from rewards.code_verifier import PythonCodeVerifierConfig, judge, parse_test
from rewards.sandbox import SandboxConfig, SandboxUnavailable, isolation_status, run_python

from .conftest import sample

FAST = SandboxConfig(wall_time_s=5.0, cpu_time_s=2, memory_mb=256, max_processes=16)
TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]


@pytest.fixture(scope="module", autouse=True)
def _isolation_required():
    available, why = isolation_status()
    # CI runs as root on Linux with util-linux: isolation must work there; elsewhere say why it cannot.
    assert available, f"namespaces unavailable here, so these escapes cannot be shown closed: {why}"


@pytest.fixture
def host_dir(tmp_path):
    tmp_path.chmod(0o777)  # world-writable and -readable: only isolation can keep the sandbox out
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    secret.chmod(0o666)
    return tmp_path


@pytest.mark.parametrize("audit_guard", [True, False])
def test_dir_fd_write_cannot_reach_the_host(host_dir, audit_guard):
    code = (f"import os\nfd = os.open({str(host_dir)!r}, os.O_RDONLY)\n"
            "w = os.open('escaped.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd)\nos.write(w, b'pwned')\nprint('wrote')")
    result = run_python(code, SandboxConfig(wall_time_s=5.0, audit_guard=audit_guard))
    assert not result.ok and "wrote" not in result.stdout
    assert not (host_dir / "escaped.txt").exists()
    root = run_python("import os\nfd = os.open('/', os.O_RDONLY)\nos.open('x', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
                      SandboxConfig(wall_time_s=5.0, audit_guard=audit_guard))
    assert not root.ok and ("Read-only file system" in root.stderr or "sandbox:" in root.stderr)


def test_host_files_and_other_processes_are_not_readable(host_dir):
    code = (f"import os\nfor path in [{str(host_dir / 'secret.txt')!r}, '/root/.bashrc', '/etc/shadow', "
            f"{os.getcwd()!r} + '/pyproject.toml']:\n"
            "    try:\n        print(path, 'READ', open(path).read()[:20])\n"
            "    except OSError as exc:\n        print(path, 'blocked', type(exc).__name__)\n"
            "print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
            "try:\n    print('env1', open('/proc/1/environ').read().replace(chr(0), ' '))\n"
            "except OSError as exc:\n    print('env1 blocked', type(exc).__name__)")
    result = run_python(code, FAST)
    assert result.ok, result.stderr
    assert "READ" not in result.stdout and "host secret" not in result.stdout
    pids = eval(result.stdout.split("pids ", 1)[1].splitlines()[0])
    assert pids == [1, 2]  # the sandbox's reaper and the program: no host process is visible
    assert "PYTHONPATH" not in result.stdout and "WANDB" not in result.stdout


def test_capabilities_are_dropped_and_mounts_cannot_be_undone():
    code = ("print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
            "import os\nos.chdir('/work')\nprint(sorted(os.listdir('/')))")
    result = run_python(code, SandboxConfig(wall_time_s=5.0, audit_guard=False))
    assert result.ok, result.stderr
    assert result.stdout.splitlines()[0] == "0000000000000000"
    assert "root" not in result.stdout.splitlines()[1] and "work" in result.stdout.splitlines()[1]


@pytest.mark.parametrize("attack", [
    "import gc\nguard = [o for o in gc.get_objects() if callable(o) and getattr(o, '__name__', '') == 'hook']",
    "import sys\nsys.settrace(lambda *a: None)",
    "def f(): pass\nf.__code__ = (lambda: 0).__code__",
    "import ctypes\nctypes.pythonapi",
])
def test_the_guard_state_is_out_of_reach(attack):
    result = run_python(attack + "\nimport socket\nsocket.create_connection(('127.0.0.1', 1))\nprint('escaped')",
                        FAST)
    assert not result.ok and "escaped" not in result.stdout
    assert result.reason.startswith("violation:"), result.reason


def test_memory_is_limited_across_the_process_tree():
    # 6 children x 100 MB resident: each stays under RLIMIT_AS (256 MB), together over total_memory_mb
    code = ("import os, time\nfor _ in range(6):\n    if os.fork() == 0:\n"
            "        block = bytearray(100 * 2**20)\n        time.sleep(20)\n        os._exit(0)\ntime.sleep(20)")
    result = run_python(code, SandboxConfig(wall_time_s=15.0, memory_mb=256, total_memory_mb=300,
                                            max_processes=16, audit_guard=False))
    assert not result.ok and result.reason.startswith("memory_limit: the sandbox's processes together")
    assert result.wall_s < 12


@pytest.mark.parametrize(("name", "candidate"), [
    ("printed verdict", "print('@@REWARD_VERDICT@@' + '{\"passed\": 3, \"total\": 3}')\ndef add(a, b): return 0"),
    ("__eq__ always true", "class Yes:\n    def __eq__(self, other): return True\n"
                           "    __hash__ = object.__hash__\ndef add(a, b): return Yes()"),
    ("int subclass", "class Evil(int):\n    def __eq__(self, other): return True\n"
                     "    __hash__ = int.__hash__\ndef add(a, b): return Evil(0)"),
    ("patched builtins", "import builtins\nbuiltins.repr = lambda v: '5'\nbuiltins.type = lambda v: int\n"
                         "def add(a, b): return 0"),
    ("forged channel", "import os\nfd = int(os.environ['SANDBOX_CHANNEL_FD'])\n"
                       "os.write(fd, b'loaded\\n0 ok 5\\n1 ok 0\\n2 ok 15\\n')\nos.close(fd)\ndef add(a, b): return 0"),
    ("exit early", "import sys\nsys.exit(0)\ndef add(a, b): return a + b"),
])
def test_a_forged_verdict_scores_zero(name, candidate):
    result = PythonCodeVerifierConfig(sandbox=FAST).build().score([sample(candidate, tests=TESTS)])[0]
    assert result.value == 0.0, (name, result)
    honest = PythonCodeVerifierConfig(sandbox=FAST).build().score([sample("def add(a, b): return a + b",
                                                                          tests=TESTS)])[0]
    assert honest.value == 1.0


def test_expected_values_never_enter_the_sandbox():
    # a candidate that would pass if the expected value were anywhere it can read
    spy = ("import os\nTOKEN = str(987000 + 654)\nFOUND = 0\nfor d, _, names in os.walk('/work'):\n"
           "    for n in names:\n        if TOKEN.encode() in open(os.path.join(d, n), 'rb').read():\n"
           "            FOUND = int(TOKEN)\nif TOKEN in str(os.environ):\n    FOUND = int(TOKEN)\n"
           "def add(a, b): return FOUND")  # the token is built at run time: the file itself does not hold it
    result = PythonCodeVerifierConfig(sandbox=FAST).build().score([sample(spy, tests=["assert add(2, 3) == 987654"])])
    assert result[0].value == 0.0
    leak = "def add(a, b): return 987654"  # the same test is passable: the scan above really looked for it
    assert PythonCodeVerifierConfig(sandbox=FAST).build().score([sample(leak, tests=["assert add(2, 3) == 987654"])
                                                                ])[0].value == 1.0


def test_judge_rejects_duplicate_or_reordered_records():
    tests = [parse_test(t) for t in TESTS]
    assert judge("loaded\n0 ok 5\n1 ok 0\n2 ok 15\n", tests) == (3, None)
    assert judge("loaded\n0 ok 5\n0 ok 5\n1 ok 0\n2 ok 15\n", tests)[0] == 0
    assert judge("loaded\n1 ok 0\n0 ok 5\n2 ok 15\n", tests)[0] == 0
    assert judge("loaded\n0 ok __import__('os')\n1 ok 0\n2 ok 15\n", tests)[0] == 0


def test_unavailable_isolation_refuses_with_the_reason(monkeypatch):
    import rewards.sandbox as sandbox

    monkeypatch.setattr(sandbox, "isolation_status", lambda: (False, "user namespaces are disabled"))
    with pytest.raises(SandboxUnavailable, match="refusing to run untrusted code: user namespaces are disabled"):
        run_python("print(1)", FAST)
    import rewards.code_verifier as verifier
    from rl_platform.config import ConfigError

    monkeypatch.setattr(verifier, "isolation_status", lambda: (False, "user namespaces are disabled"))
    with pytest.raises(ConfigError, match="cannot isolate untrusted code: user namespaces are disabled"):
        PythonCodeVerifierConfig().build()
    weak = run_python("print(1)", SandboxConfig(require_isolation=False))
    assert weak.ok and weak.stdout == "1\n"
