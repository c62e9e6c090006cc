"""Runs untrusted Python (model output) in a contained subprocess, for rewards that execute it.

Layers, outermost first (each one stops an escape that tests/rewards/test_sandbox_escapes.py attempts):

    wall clock      the parent waits wall_time_s, then kills the sandbox           (infinite loop, sleep)
    tree memory     the parent sums the resident memory of every process of the     (many children that
                    sandbox every 20 ms and kills it past total_memory_mb            each stay under RLIMIT_AS)
    namespaces      `unshare --user --mount --net --pid`, no root needed: a new     (reading host files or
                    root of read-only system directories plus /work, nothing else;  /proc/*/environ, writes via
                    no network interfaces; a private /proc; PID 1 is our reaper,    dir_fd, network, orphans
                    so when it exits the kernel kills every process left            that setsid)
    own uid         as root, everything runs under a fresh uid, which owns nothing  (fork bomb counted alone,
                    but /work (and RLIMIT_NPROC then counts only the sandbox)        kill of other processes)
    no privileges   every capability dropped, no_new_privs                           (undoing the mounts)
    rlimits         RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, no core        (busy loop, allocation,
                                                                                      fork bomb, disk fill)
    audit hook      no sockets, exec, kill, ctypes, gc object lists, tracing or      (defence in depth: the
                    function patching; no writes outside /work                      kernel layers hold alone)

The namespaces need unprivileged user namespaces (most Linux distributions; some container runtimes turn
them off). Where they are unavailable the sandbox refuses to run untrusted code and says why
(`SandboxUnavailable`), unless `require_isolation=False` accepts the weaker rlimits-and-hook sandbox on a
machine you trust. The candidate never sees this project's packages or site-packages (`-I -S`).
Reference and threat model: docs/fault_tolerance.md, 'Reward sandbox'.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rewards.sandbox_boot import BOOTSTRAP, SETUP_EXIT
from rl_platform.config import check

_STDERR_TAIL = 400
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
"""The pivot_root syscall number per machine (Python has no wrapper for it)."""


class SandboxUnavailable(RuntimeError):
    """Isolation is required but this machine cannot provide it; the message says why and what to do."""


@dataclass(kw_only=True, slots=True)
class SandboxConfig:
    """Limits of one sandboxed run.

    Example:
        run_python("print(sum(range(10)))", SandboxConfig(wall_time_s=2.0, memory_mb=256)).stdout  # "45\\n"
    """

    wall_time_s: float = 5.0
    """Wall-clock limit; then every process of the sandbox is killed."""
    cpu_time_s: int = 2
    """RLIMIT_CPU per process (SIGXCPU, then SIGKILL one second later)."""
    memory_mb: int = 512
    """RLIMIT_AS per process: address space, so allocations fail with MemoryError beyond it."""
    total_memory_mb: int = 768
    """Resident memory of all the sandbox's processes together; past it the sandbox is killed."""
    max_processes: int = 16
    """RLIMIT_NPROC. As root the sandbox runs under a private uid, so this is its own process count;
    otherwise the kernel counts every process of the calling user, and forks fail once that exceeds it."""
    max_file_mb: int = 16
    """RLIMIT_FSIZE: largest file (including captured stdout/stderr) the child may write."""
    max_output_chars: int = 65536
    """stdout/stderr returned to the caller are cut to this many characters."""
    require_isolation: bool = True
    """Refuse to run (SandboxUnavailable) where user/mount/PID/network namespaces are unavailable. False
    accepts rlimits and the audit hook alone: no read isolation; only for code you would run anyway."""
    audit_guard: bool = True
    """The in-process audit hook; off only to test that the kernel layers hold alone."""

    def __post_init__(self) -> None:
        check(self.wall_time_s > 0, "SandboxConfig.wall_time_s", self.wall_time_s, "must be > 0", "give seconds")
        check(self.cpu_time_s > 0, "SandboxConfig.cpu_time_s", self.cpu_time_s, "must be > 0", "give seconds")
        check(self.memory_mb >= 64, "SandboxConfig.memory_mb", self.memory_mb, "must be >= 64",
              "Python itself needs ~30 MB of address space; give at least 64")
        check(self.total_memory_mb >= 64, "SandboxConfig.total_memory_mb", self.total_memory_mb, "must be >= 64",
              "give at least 64 (one Python process needs ~10 MB resident)")
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
    signal, exit, and setup (the sandbox itself failed: the run says nothing about the code)."""
    wall_s: float
    channel: str = ""
    """What the child wrote to the fd named by $SANDBOX_CHANNEL_FD (a file only the parent reads back)."""


def _interpreter() -> tuple[str, list[str]]:
    """(python executable, host directories it needs): the system python3 if there is one, else the base
    interpreter of this one (never a venv's, whose site-packages hold this project and its secrets)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate, []
    base = getattr(sys, "_base_executable", sys.executable)
    return os.path.realpath(base), [sys.base_prefix]


def _binds(workdir: Path, extra: list[str]) -> tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]:
    """(binds as (host path, path inside, writable), symlinks as (path inside, target)) for the new root."""
    binds: list[tuple[str, str, bool]] = []
    links: list[tuple[str, str]] = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            binds.append((top, top, False))
    for path in ("/etc/ld.so.cache", "/etc/localtime", *extra):
        if os.path.exists(path) and not path.startswith("/usr/"):
            binds.append((os.path.realpath(path), path, False))
    for dev in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
        if os.path.exists(dev):
            binds.append((dev, dev, True))
    binds.append((str(workdir), "/work", True))
    return binds, links


@lru_cache(maxsize=1)
def isolation_status() -> tuple[bool, str]:
    """(available, why not): probes once per process by running a trivial program fully isolated."""
    if platform.system() != "Linux":
        return False, f"namespaces are Linux-only (this is {platform.system()})"
    if shutil.which("unshare") is None:
        return False, "the `unshare` program (util-linux) is not installed"
    if platform.machine() not in _PIVOT_ROOT:
        return False, f"pivot_root's syscall number is not known for {platform.machine()}"
    probe = _run("import os; print(sorted(os.listdir('/')))", SandboxConfig(wall_time_s=30, cpu_time_s=10),
                 None, "main.py", isolate=True)
    if probe.ok:
        return True, ""
    detail = (probe.stderr.strip().splitlines() or [probe.reason or "no output"])[-1]
    return False, (f"creating user/mount/PID/network namespaces failed ({detail[:300]}); unprivileged user "
                   "namespaces may be disabled (sysctl kernel.unprivileged_userns_clone / "
                   "user.max_user_namespaces, or the container runtime's seccomp profile)")


def namespaces_available() -> bool:
    return isolation_status()[0]


def _tree(root_pid: int) -> list[int]:
    """root_pid and all its descendants (through every thread's children list)."""
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def _resident_mb(pids: list[int]) -> float:
    pages = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                pages += int(f.read().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILLs the sandbox: its process group, then every descendant; with namespaces PID 1's death makes
    the kernel kill whatever is left in the namespace."""
    for pid in reversed(_tree(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _watch(proc: subprocess.Popen, config: SandboxConfig, verdict: dict[str, str]) -> None:
    """Kills the sandbox when its processes together hold more than total_memory_mb resident."""
    while proc.poll() is None:
        used = _resident_mb(_tree(proc.pid))
        if used > config.total_memory_mb:
            verdict["memory"] = (f"memory_limit: the sandbox's processes together held {used:.0f} MB resident "
                                 f"> total_memory_mb={config.total_memory_mb}; killed")
            _kill_tree(proc)
            return
        time.sleep(0.02)


def _classify(returncode: int, stderr: str, timed_out: bool, config: SandboxConfig) -> str | None:
    if timed_out:
        return f"timeout: still running after {config.wall_time_s} s wall clock; killed"
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if returncode == SETUP_EXIT and "sandbox setup:" in tail:
        return f"setup: {tail[:_STDERR_TAIL]}"
    # PID 1 of the namespace reports a signal death of the program as 128 + signal
    signum = -returncode if returncode < 0 else (returncode - 128 if 128 < returncode < 160 else 0)
    if signum in (signal.SIGXCPU, signal.SIGKILL):
        return f"cpu_limit: killed by {signal.Signals(signum).name} (RLIMIT_CPU)"
    if signum == signal.SIGXFSZ:
        return "file_size_limit: killed by SIGXFSZ (RLIMIT_FSIZE)"
    if signum and signum in signal.valid_signals():
        return f"signal: killed by {signal.Signals(signum).name}"
    if returncode == 0:
        return None
    if "MemoryError" in tail:
        return f"memory_limit: {tail[:_STDERR_TAIL]}"
    if "sandbox:" in tail:
        return f"violation: {tail[:_STDERR_TAIL]}"
    return f"exit: code {returncode}: {tail[:_STDERR_TAIL]}"


def run_python(code: str, config: SandboxConfig, files: dict[str, str] | None = None,
               entry: str = "main.py") -> SandboxResult:
    """Runs `code` as `entry` in a fresh directory with `files` beside it; never raises for what the code does.

    Raises SandboxUnavailable if config.require_isolation and this machine cannot isolate (see module doc)."""
    available, why = isolation_status()
    if not available and config.require_isolation:
        raise SandboxUnavailable(f"refusing to run untrusted code: {why}. Enable unprivileged user namespaces, "
                                 "or set sandbox.require_isolation=false to accept a sandbox without read "
                                 "isolation on a machine you trust")
    return _run(code, config, files, entry, isolate=available)


def _prepare(box: Path, code: str, files: dict[str, str] | None, entry: str, uid: int | None) -> Path:
    workdir = box / "work"
    workdir.mkdir()
    (box / "root").mkdir()
    for name, text in {**(files or {}), entry: code}.items():
        (workdir / name).write_text(text)
    box.chmod(0o711)  # the private uid must reach work/ and root/ to mount them, not list the box
    if uid is not None:
        for path in [workdir, *workdir.iterdir()]:
            os.chown(path, uid, uid)
    return workdir


def _run(code: str, config: SandboxConfig, files: dict[str, str] | None, entry: str,
         isolate: bool) -> SandboxResult:
    box = Path(tempfile.mkdtemp(prefix="sandbox_"))
    logdir = Path(tempfile.mkdtemp(prefix="sandbox_log_"))  # never visible to the child
    uid = random.randrange(200_000, 260_000) if os.geteuid() == 0 else None
    try:
        workdir = _prepare(box, code, files, entry, uid)
        python, extra = _interpreter()
        binds, links = _binds(workdir, extra)
        # CPU hard limit one second above soft: the soft limit delivers SIGXCPU, which names the cause.
        limits = {"RLIMIT_CPU": (config.cpu_time_s, config.cpu_time_s + 1),
                  "RLIMIT_AS": (config.memory_mb << 20,) * 2, "RLIMIT_NPROC": (config.max_processes,) * 2,
                  "RLIMIT_FSIZE": (config.max_file_mb << 20,) * 2, "RLIMIT_CORE": (0, 0)}
        with open(logdir / "stdout", "wb") as out, open(logdir / "stderr", "wb") as err, \
                open(logdir / "channel", "wb") as channel:
            params = {"limits": limits, "entry": entry, "audit_guard": config.audit_guard, "isolate": isolate,
                      "root": str(box / "root"), "binds": binds, "symlinks": links,
                      "workdir": "/work" if isolate else str(workdir), "channel_fd": channel.fileno(),
                      "sys_pivot_root": _PIVOT_ROOT.get(platform.machine(), -1),
                      "uid": None if isolate else uid}
            command = [python, "-I", "-S", "-c", BOOTSTRAP, json.dumps(params)]
            if isolate:
                command = ["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork",
                           "--kill-child", "--", *command]
            drop = {"user": uid, "group": uid, "extra_groups": []} if isolate and uid is not None else {}
            env = {"PATH": "/usr/bin:/bin", "HOME": "/work" if isolate else str(workdir), "LANG": "C.UTF-8",
                   "PYTHONDONTWRITEBYTECODE": "1"}
            started = time.perf_counter()
            # Output goes to files, not pipes: a forked child holding a pipe open would block the reader, and
            # RLIMIT_FSIZE bounds a file where a pipe would fill the parent's memory.
            proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, pass_fds=(channel.fileno(),), start_new_session=True, **drop)
            verdict: dict[str, str] = {}
            watcher = threading.Thread(target=_watch, args=(proc, config, verdict), daemon=True)
            watcher.start()
            timed_out = False
            try:
                returncode = proc.wait(timeout=config.wall_time_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_tree(proc)
                returncode = proc.wait()
            watcher.join(1.0)
        wall_s = time.perf_counter() - started
        _kill_tree(proc)
        if uid is not None:
            _kill_uid(uid)
        stdout = (logdir / "stdout").read_text(errors="replace")[: config.max_output_chars]
        stderr = (logdir / "stderr").read_text(errors="replace")[-config.max_output_chars:]
        reason = verdict.get("memory") or _classify(returncode, stderr, timed_out, config)
        return SandboxResult(ok=reason is None, returncode=returncode, stdout=stdout, stderr=stderr, reason=reason,
                             wall_s=wall_s, channel=(logdir / "channel").read_text(errors="replace"))
    finally:
        shutil.rmtree(box, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)


def _kill_uid(uid: int, deadline_s: float = 2.0) -> None:
    """SIGKILLs every process of `uid` (made up for one run, so nothing else has it) until none is left;
    repeated passes, because a fork bomb can fork between our scan and our kill."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        pids = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                    with open(f"/proc/{entry}/stat") as handle:
                        if handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                            pids.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
