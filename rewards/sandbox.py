"""Runs untrusted Python (model output) in a contained subprocess, for rewards that execute it.

Layers, outermost first (each one stops an escape the tests really attempt):

    wall clock      parent waits wall_time_s, then SIGKILLs the process group    (infinite loop, sleep)
    namespace       `unshare --net` when root: no network interfaces at all      (network)
    cleanup         SIGKILL the process group and, as root, every process of     (orphans that setsid)
                    the run's private uid
    rlimits         RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, no core   (busy loop, allocation,
                                                                                  fork bomb, disk fill)
    own uid         as root, the child drops to a fresh uid (RLIMIT_NPROC only   (fork bomb, writes)
                    binds non-root users, and the uid owns nothing but workdir)
    audit hook      sys.addaudithook: no sockets, no exec/spawn, no kill, no     (network without netns,
                    ctypes, no writes/renames/deletes outside the working dir    writes to /tmp)
    throwaway dir   a fresh temp dir as cwd and HOME, deleted afterwards

Not a security boundary against a determined attacker (the audit hook is in-process; no seccomp, no
read isolation): it contains what a policy stumbles into or is rewarded for, on a shared machine.
TODO(rewards): seccomp + a read-only mount namespace, or gVisor/firejail where available.

The interpreter: dropping to an unprivileged uid needs a Python that uid can execute, so as root the
sandbox runs the system `python3` (the venv's may live under /root); otherwise `sys.executable`. The
candidate never sees this project's packages: the child runs with `-I` (isolated mode).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rl_platform.config import check

# Runs in the child before the candidate: limits, privilege drop, audit hook, then the candidate file.
_BOOTSTRAP = r"""
import json, os, resource, sys
p = json.loads(sys.argv[1])
for name, (soft, hard) in p["limits"].items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
if p["uid"] is not None:
    os.setgroups([]); os.setgid(p["uid"]); os.setuid(p["uid"])
WORK = os.path.realpath(p["workdir"])
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.symlink",
               "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "os.chdir"}
DENIED = {"socket.__new__": "network access", "socket.connect": "network access", "socket.bind": "network access",
          "socket.getaddrinfo": "network access", "subprocess.Popen": "starting programs",
          "os.system": "starting programs", "os.exec": "starting programs", "os.posix_spawn": "starting programs",
          "os.spawn": "starting programs", "os.kill": "signalling processes", "os.killpg": "signalling processes",
          "ctypes.dlopen": "loading native code", "ctypes.dlsym": "loading native code"}
def inside(path):
    if isinstance(path, int):
        return True  # an fd the process already holds: its opening was checked
    real = os.path.realpath(os.fsdecode(path))
    return real == WORK or real.startswith(WORK + os.sep)
def hook(event, args):
    if event == "open":
        if args[2] & WRITE and not inside(args[0]):
            raise PermissionError(f"sandbox: write outside the working directory: {args[0]!r}")
    elif event in DENIED and p["audit_guard"]:
        raise PermissionError(f"sandbox: {DENIED[event]} is disabled ({event})")
    elif event in PATH_EVENTS:
        for arg in args:
            if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                raise PermissionError(f"sandbox: {event} outside the working directory: {arg!r}")
sys.addaudithook(hook)
del hook, json, resource
sys.argv = [p["entry"]]
import runpy
runpy.run_path(p["entry"], run_name="__main__")
"""

_STDERR_TAIL = 400


@dataclass(kw_only=True, slots=True)
class SandboxConfig:
    """Limits of one sandboxed run.

    Example:
        run_python("print(sum(range(10)))", SandboxConfig(wall_time_s=2.0, memory_mb=256)).stdout  # "45\\n"
    """

    wall_time_s: float = 5.0
    """Wall-clock limit; the process group (and PID namespace) is SIGKILLed after it."""
    cpu_time_s: int = 2
    """RLIMIT_CPU per process (SIGXCPU, then SIGKILL one second later)."""
    memory_mb: int = 512
    """RLIMIT_AS per process: address space, so allocations fail with MemoryError beyond it."""
    max_processes: int = 16
    """RLIMIT_NPROC. As root the child runs under a private uid, so this is the sandbox's own process count;
    otherwise the kernel counts every process of the calling user, and forks fail once that exceeds it."""
    max_file_mb: int = 16
    """RLIMIT_FSIZE: largest file (including captured stdout/stderr) the child may write."""
    max_output_chars: int = 65536
    """stdout/stderr returned to the caller are cut to this many characters."""
    use_namespaces: bool = True
    """Use `unshare --net` when running as root; the audit hook blocks sockets either way."""
    audit_guard: bool = True
    """Block sockets/exec/kill/ctypes in-process; off only to test that the namespace layer holds alone."""

    def __post_init__(self) -> None:
        check(self.wall_time_s > 0, "SandboxConfig.wall_time_s", self.wall_time_s, "must be > 0", "give seconds")
        check(self.cpu_time_s > 0, "SandboxConfig.cpu_time_s", self.cpu_time_s, "must be > 0", "give seconds")
        check(self.memory_mb >= 64, "SandboxConfig.memory_mb", self.memory_mb, "must be >= 64",
              "Python itself needs ~30 MB of address space; give at least 64")
        check(self.max_processes >= 1, "SandboxConfig.max_processes", self.max_processes, "must be >= 1",
              "give e.g. 16")


@dataclass(frozen=True, kw_only=True, slots=True)
class SandboxResult:
    """What happened to one sandboxed run; `ok` only for a clean exit 0 within every limit.

    Example:
        SandboxResult(ok=False, returncode=-9, stdout="", stderr="", reason="timeout: ...", wall_s=2.0)
    """

    ok: bool
    returncode: int | None
    stdout: str
    stderr: str
    reason: str | None
    """`<category>: <detail>`; categories: timeout, cpu_limit, memory_limit, file_size_limit, violation,
    signal, exit."""
    wall_s: float


@lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """True when this process can create a network namespace (root with CAP_SYS_ADMIN).

    No PID namespace: `unshare --fork` would stand between us and the child and turn its signals into
    `unshare: sigprocmask ...` exit codes; the private uid already lets us find and kill every orphan.
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    return probe.returncode == 0


def _interpreter() -> str:
    if os.geteuid() == 0:
        for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
            if os.access(candidate, os.X_OK):
                return candidate
    return sys.executable


def _live_pids_of_uid(uid: int) -> list[int]:
    """Pids owned by `uid` that are not zombies (a zombie is dead; it only waits for init to reap it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                with open(f"/proc/{entry}/stat") as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if state not in ("Z", "X"):
                pids.append(int(entry))
    return pids


def _kill_uid(uid: int, deadline_s: float = 2.0) -> None:
    """SIGKILLs every process of `uid` (made up for one run, so nothing else has it) until none is left.

    Repeated passes, because a fork bomb can fork between our scan and our kill.
    """
    deadline = time.monotonic() + deadline_s
    while (pids := _live_pids_of_uid(uid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _classify(returncode: int, stderr: str, timed_out: bool, wall_time_s: float) -> str | None:
    if timed_out:
        return f"timeout: still running after {wall_time_s} s wall clock; killed"
    signum = -returncode if returncode < 0 else 0
    if signum in (signal.SIGXCPU, signal.SIGKILL):
        return f"cpu_limit: killed by {signal.Signals(signum).name} (RLIMIT_CPU)"
    if signum == signal.SIGXFSZ:
        return "file_size_limit: killed by SIGXFSZ (RLIMIT_FSIZE)"
    if signum:
        return f"signal: killed by {signal.Signals(signum).name}"
    if returncode == 0:
        return None
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if "MemoryError" in tail:
        return f"memory_limit: {tail[:_STDERR_TAIL]}"
    if "sandbox:" in tail:
        return f"violation: {tail[:_STDERR_TAIL]}"
    return f"exit: code {returncode}: {tail[:_STDERR_TAIL]}"


def run_python(code: str, config: SandboxConfig, files: dict[str, str] | None = None,
               entry: str = "main.py") -> SandboxResult:
    """Runs `code` as `entry` in a fresh directory with `files` beside it; never raises for what the code does."""
    workdir = Path(tempfile.mkdtemp(prefix="sandbox_"))
    logdir = Path(tempfile.mkdtemp(prefix="sandbox_log_"))  # outside workdir: the child cannot rewrite it
    uid = random.randrange(200_000, 260_000) if os.geteuid() == 0 else None
    try:
        for name, text in {**(files or {}), entry: code}.items():
            (workdir / name).write_text(text)
        if uid is not None:
            for path in [workdir, *workdir.iterdir()]:
                os.chown(path, uid, uid)
        # CPU hard limit one second above soft: the soft limit delivers SIGXCPU, which names the cause.
        limits = {"RLIMIT_CPU": (config.cpu_time_s, config.cpu_time_s + 1),
                  "RLIMIT_AS": (config.memory_mb << 20,) * 2, "RLIMIT_NPROC": (config.max_processes,) * 2,
                  "RLIMIT_FSIZE": (config.max_file_mb << 20,) * 2, "RLIMIT_CORE": (0, 0)}
        params = {"limits": limits, "uid": uid, "workdir": str(workdir), "entry": entry,
                  "audit_guard": config.audit_guard}
        command = [_interpreter(), "-I", "-c", _BOOTSTRAP, json.dumps(params)]
        if config.use_namespaces and namespaces_available():
            command = ["unshare", "--net", "--", *command]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        started = time.perf_counter()
        # Output goes to files, not pipes: a forked child holding a pipe open would block the reader, and
        # RLIMIT_FSIZE bounds a file where a pipe would fill the parent's memory.
        with open(logdir / "stdout", "wb") as out, open(logdir / "stderr", "wb") as err:
            proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
            timed_out = False
            try:
                returncode = proc.wait(timeout=config.wall_time_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                returncode = proc.wait()
        wall_s = time.perf_counter() - started
        _cleanup(proc.pid, uid)
        stdout = (logdir / "stdout").read_text(errors="replace")[: config.max_output_chars]
        stderr = (logdir / "stderr").read_text(errors="replace")[-config.max_output_chars:]
        reason = _classify(returncode, stderr, timed_out, config.wall_time_s)
        return SandboxResult(ok=reason is None, returncode=returncode, stdout=stdout, stderr=stderr, reason=reason,
                             wall_s=wall_s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)


def _cleanup(pgid: int, uid: int | None) -> None:
    """Kills what the run left behind: its process group, and (as root) everything of its private uid."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid)
