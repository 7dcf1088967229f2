"""The sandbox's init: the trusted process that sets up the jail, starts the program and watches it.

The host (`launch.py`) does not import this module: it reads this file as text and runs it with
``python -I -S -c SOURCE CONFIG_JSON`` (as root, or as root of a user namespace), so it may use only
the standard library and must not import anything of rsi_env. Under the namespace levels it is PID 1
of the sandbox's PID namespace: when it exits, the kernel SIGKILLs every process left in there.

Why a separate init rather than a ``preexec_fn`` in the host: the host is an asyncio program that may
have threads, where ``preexec_fn`` can deadlock; this init is a fresh single-threaded process, so its
own ``Popen(preexec_fn=...)`` is safe.

Its one output is a JSON report written to the file descriptor named in the configuration
(:class:`InitReport`); the program's stdout and stderr go straight to the host's pipes.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time

# `typing` is not imported at run time: it would add milliseconds to every sandbox start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypedDict

    class InitConfig(TypedDict):
        """What the host tells the init (one JSON argument)."""

        report_fd: int  # where the report goes
        features: list[str]  # mechanisms the launcher already applied (namespaces)
        pidns: bool  # PID 1 of a PID namespace of our own
        newroot: str | None  # where to build the minimal root (namespace levels), else None
        stage: str  # host directory holding the program and its files
        ro_binds: list[str]  # extra host directories to bind read-only (the interpreter's prefix)
        workdir: str  # the work directory inside the minimal root
        child_workdir: str  # the program's working directory (as the program sees it)
        disk_mb: int  # size of the private /tmp, /dev/shm (capped) and work directory
        uid: int | None  # the program's unique unprivileged uid (root only)
        drop_caps: bool  # root of a user namespace: drop every capability
        argv: list[str]
        env: dict[str, str]
        rlimits: list[tuple[str, int, int]]  # (RLIMIT_x name, soft, hard)
        timeout_s: float
        memory_mb: int

    class InitReport(TypedDict, total=False):
        """What the init tells the host. `ok` false: the sandbox itself failed (see `error`)."""

        ok: bool
        error: str
        status: int | None  # the program's wait status (None: it did not end by itself)
        reason: str | None  # "timeout", "memory", "parent-died" or None
        wall_s: float
        setup_s: float
        cpu_s: float
        max_rss_kb: int
        features: list[str]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_NOATIME, MS_NODIRATIME = 32, 4096, 1024, 2048
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
ST_NOEXEC, ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 8, 1024, 2048, 4096
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 36, 38, 24, 28
EINVAL = 22


def report(fd: int, data: InitReport) -> None:
    raw = json.dumps(data).encode()
    while raw:
        raw = raw[os.write(fd, raw) :]


# --- the minimal root ----------------------------------------------------------------------------


def mount(src: str | None, dst: str | None, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    if _libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")


def remount_flags(path: str, extra: int) -> int:
    # Keep noexec/atime flags: inside a user namespace they are locked and a remount that drops them
    # fails. MS_REMOUNT|MS_BIND only changes this mount's flags (never the shared superblock).
    f = os.statvfs(path).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | extra
    if f & ST_NOEXEC:
        flags |= MS_NOEXEC
    if f & ST_NOATIME:
        flags |= MS_NOATIME
    elif f & ST_RELATIME:
        flags |= MS_RELATIME
    else:
        flags |= MS_STRICTATIME
    if f & ST_NODIRATIME:
        flags |= MS_NODIRATIME
    return flags


def bind(src: str, dst: str, readonly: bool = True) -> None:
    mount(src, dst, None, MS_BIND)
    mount(None, dst, None, remount_flags(dst, (MS_RDONLY | MS_NODEV) if readonly else 0))


def tmpfs(dst: str, options: str, flags: int = MS_NOSUID | MS_NODEV) -> None:
    mount("tmpfs", dst, "tmpfs", flags, options)


def build_root(cfg: InitConfig, root: str, features: list[str]) -> None:
    """A minimal root file system on a tmpfs; raises on any failure."""
    uid = cfg["uid"]
    tmpfs(root, "size=4m,nr_inodes=4096,mode=0755")
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc"):
        src = "/" + name
        if os.path.islink(src):
            os.symlink(os.readlink(src), root + src)
        elif os.path.isdir(src):
            os.mkdir(root + src)
            bind(src, root + src)
    for extra in cfg["ro_binds"]:
        if not os.path.exists(root + extra):
            os.makedirs(root + extra, mode=0o755)
            bind(extra, root + extra)
    dev = root + "/dev"
    os.mkdir(dev)
    tmpfs(dev, "size=64k,nr_inodes=64,mode=0755", MS_NOSUID | MS_NOEXEC)
    for node in ("null", "zero", "full", "random", "urandom"):
        open(dev + "/" + node, "w").close()
        bind("/dev/" + node, dev + "/" + node, readonly=False)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, dev + "/" + name)
    os.mkdir(dev + "/shm")
    tmpfs(dev + "/shm", f"size={min(cfg['disk_mb'], 16)}m,nr_inodes=1024,mode=1777")
    os.mkdir(root + "/proc")
    # hidepid: the program sees only its own processes, not this init (whose command line holds the
    # run's configuration and host paths). Older kernels know only the numeric form; very old, neither.
    for option in ("hidepid=invisible", "hidepid=2", None):
        try:
            mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, option)
        except OSError:
            continue
        if option:
            features.append("hidepid")
        break
    else:
        raise OSError("cannot mount /proc in the sandbox")
    os.mkdir(root + "/tmp")
    tmpfs(root + "/tmp", f"size={cfg['disk_mb']}m,nr_inodes=16384,mode=1777")
    work = root + cfg["workdir"]
    os.mkdir(work)
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    tmpfs(work, f"size={cfg['disk_mb']}m,nr_inodes=16384,mode=0700{owner}")
    copy_tree(cfg["stage"], work, uid)
    # Seal the skeleton: nothing outside /tmp, /dev/shm and the work directory is writable.
    mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    features.extend(["minimal-root", "ro-root", "private-tmp", "tmpfs-workdir"])


def copy_tree(src: str, dst: str, uid: int | None) -> None:
    for dirpath, _dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        if rel != ".":
            os.mkdir(target, 0o755)
            if uid is not None:
                os.chown(target, uid, uid)
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fin:
                data = fin.read()
            with open(os.path.join(target, name), "wb") as fout:
                fout.write(data)
            if uid is not None:
                os.chown(os.path.join(target, name), uid, uid)


def loopback_up() -> None:
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, ifreq))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS |= IFF_UP


# --- the program's process -----------------------------------------------------------------------


def drop_all_caps() -> None:
    # Root of a user namespace: empty the bounding set, then lock "root is not special" so exec cannot
    # give capabilities back (SECBIT_NOROOT|NO_SETUID_FIXUP|KEEP_CAPS_LOCKED and their locks).
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != EINVAL:
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")
    if _libc.prctl(PR_SET_SECUREBITS, 0x3F, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECUREBITS")


def child_setup(cfg: InitConfig) -> Callable[[], None]:
    """What the program's process does between fork and exec: jail, limits, identity."""

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if cfg["newroot"]:
            os.chroot(cfg["newroot"])
        os.chdir(cfg["child_workdir"])
        for name, soft, hard in cfg["rlimits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        uid = cfg["uid"]
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        elif cfg["drop_caps"]:
            drop_all_caps()
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")

    return setup


# --- watching the process tree --------------------------------------------------------------------


def tree_pids(proc_root: str, pidns: bool) -> list[int]:
    """Pids of every process that belongs to the sandbox (excluding this init)."""
    me = os.getpid()
    pids = [int(p) for p in os.listdir(proc_root) if p.isdigit() and int(p) != me]
    if pidns:
        return pids
    parent = {}
    for pid in pids:
        try:
            with open(f"{proc_root}/{pid}/stat") as f:
                parent[pid] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    mine: set[int] = set()
    frontier = {me}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in mine}
        mine |= frontier
    return list(mine)


def process_memory_bytes(proc_root: str, pid: int, page: int) -> int:
    """The process's proportional set size: pages shared after fork count once across the tree, so
    thirty idle children of a small program are not a memory bomb. Resident size where Pss is missing."""
    try:
        with open(f"{proc_root}/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"{proc_root}/{pid}/statm") as f:
            return int(f.read().split()[1]) * page
    except (OSError, IndexError, ValueError):
        return 0


def tree_memory_bytes(proc_root: str, pidns: bool, page: int) -> int:
    return sum(process_memory_bytes(proc_root, pid, page) for pid in tree_pids(proc_root, pidns))


def kill_everything(cfg: InitConfig, child_pid: int) -> None:
    uid = cfg["uid"]
    if cfg["pidns"]:
        if os.getpid() == 1:  # never signal "every process" unless we are PID 1 of our own namespace
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
    elif uid is not None:
        # kill(-1) from a process of the sandbox uid reaches exactly the processes of that (unique) uid,
        # atomically with respect to fork, so a fork bomb cannot outrun it.
        killer = os.fork()
        if killer == 0:
            try:
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                for _ in range(1000):
                    os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                os._exit(0)
            except BaseException:
                os._exit(1)
            os._exit(2)
        os.waitpid(killer, 0)
    else:
        try:
            os.killpg(child_pid, signal.SIGKILL)  # rlimits-only: the session, setsid() escapes this
        except ProcessLookupError:
            pass


# --- the run ---------------------------------------------------------------------------------------


def prepare(cfg: InitConfig, features: list[str]) -> str:
    """Build the jail around this process; returns where its /proc is."""
    proc_root = "/proc"
    newroot = cfg["newroot"]
    if newroot:
        build_root(cfg, newroot, features)
        proc_root = newroot + "/proc"
    if "netns" in features:
        loopback_up()
    if "utsns" in features:
        import socket

        socket.sethostname("sandbox")
    if not cfg["pidns"]:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back to us to be reaped/killed
    if cfg["uid"] is not None:
        features.append("unique-uid")
    if cfg["drop_caps"]:
        features.append("no-caps")
    features.extend(["no-new-privs", "rlimits", "mem-watchdog"])
    if cfg["pidns"] or cfg["uid"] is not None:
        features.append("kill-tree")
    return proc_root


def watch(cfg: InitConfig, child_pid: int, proc_root: str, host_pid: int) -> tuple[int | None, str | None]:
    """Wait for the program to end, the deadline, the memory cap or the host's death (our parent is no
    longer `host_pid`), whichever comes first. Returns (the program's wait status if it ended, why it
    was stopped otherwise)."""
    deadline = time.monotonic() + cfg["timeout_s"]
    mem_limit = cfg["memory_mb"] * 1024 * 1024
    page = os.sysconf("SC_PAGE_SIZE")
    while True:
        while True:
            try:
                pid, st, _ = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid == child_pid:
                return st, None
        now = time.monotonic()
        if now >= deadline:
            return None, "timeout"
        if tree_memory_bytes(proc_root, cfg["pidns"], page) > mem_limit:
            return None, "memory"
        if not cfg["pidns"] and os.getppid() != host_pid:
            return None, "parent-died"
        signal.sigtimedwait([signal.SIGCHLD], min(0.05, deadline - now))


def reap(cfg: InitConfig, child_pid: int, status: int | None) -> int | None:
    """Reap everything left (all SIGKILLed by now); the program's status if it was reaped here.
    Bounded, in case something sits in D state."""
    stop = time.monotonic() + 5
    blocking = cfg["pidns"] or cfg["uid"] is not None
    while time.monotonic() < stop:
        try:
            pid, st, _ = os.wait4(-1, 0 if blocking else os.WNOHANG)
        except ChildProcessError:
            break
        if pid == child_pid:
            status = st
        elif pid == 0:
            if status is not None:
                break
            time.sleep(0.01)
    return status


def main(cfg: InitConfig, features: list[str]) -> InitReport:
    start = time.monotonic()
    host_pid = os.getppid()
    proc_root = prepare(cfg, features)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    child = subprocess.Popen(
        cfg["argv"],
        env=cfg["env"],
        preexec_fn=child_setup(cfg),
        start_new_session=True,
        close_fds=True,
        restore_signals=True,
    )
    t0 = time.monotonic()
    status, reason = watch(cfg, child.pid, proc_root, host_pid)
    ended = time.monotonic()
    kill_everything(cfg, child.pid)
    status = reap(cfg, child.pid, status)
    child.returncode = 0  # already reaped by wait4; keep Popen from waiting on a recycled pid
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "ok": True,
        "status": status,
        "reason": reason,
        "wall_s": ended - t0,
        "setup_s": t0 - start,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "max_rss_kb": ru.ru_maxrss,
        "features": sorted(set(features)),
    }


def run(argument: str) -> None:
    cfg: InitConfig = json.loads(argument)
    fd = cfg["report_fd"]
    os.set_inheritable(fd, False)
    os.umask(0o022)
    features = list(cfg["features"])
    try:
        report(fd, main(cfg, features))
    except BaseException as exc:
        try:
            error = f"{type(exc).__name__}: {exc}"
            report(fd, {"ok": False, "error": error, "features": sorted(set(features))})
        finally:
            os._exit(70)


if __name__ == "__main__":
    run(sys.argv[1])
