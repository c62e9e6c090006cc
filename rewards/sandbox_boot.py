"""The program that runs first inside a sandbox (rewards/sandbox.py): isolation, limits, guard, candidate.

It is sent to the child as source text (`python -I -S -c BOOTSTRAP params`), so it imports nothing of this
project; it is a module of its own so that it can be read, linted and reviewed as code.

Inside `unshare --user --map-root-user --mount --net --pid --fork` it is PID 1 of a fresh PID namespace,
"root" only inside a user namespace that maps to an unprivileged uid. In that order it:
  1. builds a new root file system on a small tmpfs: read-only binds of the interpreter's directories
     (/usr, ...), the run's working directory read-write at /work, /dev/null and friends, a fresh /proc that
     shows only the sandbox's own processes; `pivot_root`s into it and detaches the old root, then remounts
     the new root read-only. Nothing of the host's files (home directories, the repository, datasets,
     other processes' /proc entries) exists any more, for reading or writing, through any path or fd.
  2. forks: PID 1 stays behind as the reaper (when it exits, the kernel kills every process of the
     namespace, so nothing escapes by daemonising); the child drops every capability, sets
     no_new_privs and the resource limits, installs the audit hook and runs the entry file.
Any failure of step 1 exits with SETUP_EXIT and a `sandbox setup:` line, so the caller can tell a broken
sandbox (the reward cannot judge) from a candidate that misbehaved.
"""

SETUP_EXIT = 121

BOOTSTRAP = r"""
import ctypes, json, os, resource, sys
p = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
SETUP_EXIT = @SETUP_EXIT@
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21

def fail(what):
    err = ctypes.get_errno()
    sys.stderr.write(f"sandbox setup: {what}: {os.strerror(err)}\n")
    sys.stderr.flush()
    os._exit(SETUP_EXIT)

def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        fail(f"mount {src} on {dst}")

def locked_flags(path):
    # a remount inside a user namespace must keep the flags the host mount has (the kernel locks them)
    f = os.statvfs(path).f_flag
    table = ((2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME), (2048, MS_NODIRATIME),
             (4096, MS_RELATIME))
    return sum(ms for st, ms in table if f & st)

def build_root():
    root = p["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    for src, dst, writable in p["binds"]:
        target = root + dst
        if os.path.isdir(src):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        mount(src, target, None, MS_BIND | MS_REC)
        if not writable:
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked_flags(src))
    for link, to in p["symlinks"]:
        os.symlink(to, root + link)
    os.mkdir(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir(root + "/.old")
    if libc.syscall(p["sys_pivot_root"], root.encode(), (root + "/.old").encode()) != 0:
        fail("pivot_root")
    os.chdir("/")
    if libc.umount2(b"/.old", 2) != 0:  # MNT_DETACH
        fail("umount the old root")
    os.rmdir("/.old")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(p["workdir"])

def reap(child):
    # Reap orphans until the program itself ends, then exit: the kernel kills whatever is left.
    while True:
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)

def drop_privileges():
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (EINVAL past the last capability is fine)
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    if libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0:
        fail("capset")
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        fail("no_new_privs")

if p["isolate"]:
    build_root()
    child = os.fork()
    if child:
        reap(child)
    drop_privileges()
for name, (soft, hard) in p["limits"].items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
if p["uid"] is not None:
    os.setgroups([]); os.setgid(p["uid"]); os.setuid(p["uid"])

def install_guard(work, audit_guard, write_mask=os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
    # Everything the hook decides on lives in this closure, and the events that reach closures, frames and
    # the garbage collector's object lists are themselves denied, so the candidate cannot edit the guard.
    path_events = frozenset(("os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown",
                             "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move",
                             "os.chdir"))
    denied = (("socket.__new__", "network access"), ("socket.connect", "network access"),
              ("socket.bind", "network access"), ("socket.getaddrinfo", "network access"),
              ("subprocess.Popen", "starting programs"), ("os.system", "starting programs"),
              ("os.exec", "starting programs"), ("os.posix_spawn", "starting programs"),
              ("os.spawn", "starting programs"),
              ("os.kill", "signalling processes"), ("os.killpg", "signalling processes"),
              ("ctypes.dlopen", "loading native code"), ("ctypes.dlsym", "loading native code"),
              ("gc.get_objects", "inspecting the interpreter"), ("gc.get_referrers", "inspecting the interpreter"),
              ("gc.get_referents", "inspecting the interpreter"), ("sys._current_frames", "inspecting the interpreter"),
              ("sys.settrace", "inspecting the interpreter"), ("sys.setprofile", "inspecting the interpreter"),
              ("sys.addaudithook", "changing the guard"), ("code.__new__", "building code objects"))
    function_slots = frozenset(("__code__", "__defaults__", "__kwdefaults__", "__globals__", "__closure__"))
    realpath, sep, plain = os.path.realpath, os.sep, (str, bytes, int)

    def inside(path):
        if type(path) is int:
            return True  # an fd the process already holds: its opening was checked
        if type(path) not in plain:
            return False  # a path object's __fspath__ would run the candidate's code inside the guard
        real = realpath(path if type(path) is str else path.decode(errors="replace"))
        return real == work or real.startswith(work + sep)

    def hook(event, args):
        if event == "open":
            if args[2] & write_mask and not inside(args[0]):
                raise PermissionError(f"sandbox: write outside the working directory: {args[0]!r}")
            return
        if not audit_guard:
            pass
        elif event == "object.__setattr__" and len(args) > 1 and args[1] in function_slots:
            raise PermissionError(f"sandbox: patching functions is disabled ({args[1]})")
        else:
            for name, why in denied:
                if event == name:
                    raise PermissionError(f"sandbox: {why} is disabled ({event})")
        if event in path_events:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    raise PermissionError(f"sandbox: {event} outside the working directory: {arg!r}")
    sys.addaudithook(hook)

os.environ["SANDBOX_CHANNEL_FD"] = str(p["channel_fd"])
install_guard(os.path.realpath(p["workdir"]), p["audit_guard"])
entry = p["entry"]
del p, libc, install_guard, build_root, reap, drop_privileges, mount, fail, locked_flags, json, resource, ctypes
sys.argv = [entry]
import runpy
runpy.run_path(entry, run_name="__main__")
""".replace("@SETUP_EXIT@", str(SETUP_EXIT))
