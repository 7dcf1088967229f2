"""The host side of one sandbox run, in its four stages.

1. `prepare`: a private temporary directory with the program, its files and its stdin; the init's
   configuration (limits, uid, what to mount) and the command that starts it.
2. `launch`: the launcher (`unshare ...` or nothing) starts the init (`init_program.py`, read here as
   text and run with ``python -I -S -c``) in a process group of its own, its stdout and stderr on
   capped pipes.
3. `supervise`: wait for the init to end; past the program's timeout plus a grace period, SIGKILL the
   whole group (the backstop, should the init itself hang).
4. `collect`: read the init's report and the captured output into a :class:`SandboxResult`.

`cleanup` runs whatever happened (cancellation included): it kills what is left and removes the
directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .records import IsolationInfo, Launcher, SandboxError, SandboxLimits, SandboxResult, isolation_level_name

if TYPE_CHECKING:
    from .init_program import InitConfig, InitReport

PROGRAM_NAME = "main.py"
NS_WORKDIR = "/sandbox"
# The init runs as a script, never imported here: it must stay within the standard library.
INIT_SOURCE = Path(__file__).with_name("init_program.py").read_text(encoding="utf-8")
# Unique uids for sandboxed programs live far above any uid in /etc/passwd.
_UID_BASE = 1_500_000
_UID_SPAN = 1_000_000
_uid_counter = itertools.count()
# Extra wall time the parent allows on top of the program timeout (init start-up, mount setup, the kill)
# before it SIGKILLs the launcher's whole process group itself.
BACKSTOP_GRACE_S = 10.0
_MIN_PATH = "/usr/local/bin:/usr/bin:/bin"


# --- what this machine offers ------------------------------------------------------------------------


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


def interpreter(mode: Launcher) -> tuple[str, list[str]]:
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


def unshare_available() -> bool:
    return bool(shutil.which("unshare")) or os.path.exists("/usr/bin/unshare")


def _next_uid() -> int:
    # Distinct per process and per run so concurrent sandboxes never share an RLIMIT_NPROC budget and
    # the uid-wide kill never reaches another sandbox.
    return _UID_BASE + (os.getpid() % 3907 * 256 + next(_uid_counter) % 256) % _UID_SPAN


def _launcher(mode: Launcher) -> tuple[list[str], list[str]]:
    """The command prefix that starts the init, and the mechanisms it applies."""
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
    cmd += ["--pid", "--fork", "--kill-child", "--mount", "--propagation", "private"]
    cmd += ["--net", "--ipc", "--uts", "--"]
    return cmd, features


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


def check_files(files: dict[str, str] | None) -> dict[str, str]:
    """Extra files by relative path: no absolute paths, no `..`, not the program's own name."""
    out: dict[str, str] = {}
    for name, content in (files or {}).items():
        rel = Path(name)
        if not name or rel.is_absolute() or ".." in rel.parts or str(rel) in (".", PROGRAM_NAME):
            raise ValueError(f"bad sandbox file name {name!r} (relative, no '..', not {PROGRAM_NAME!r})")
        out[str(rel)] = content
    return out


# --- one run --------------------------------------------------------------------------------------


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

    def text(self) -> str:
        return bytes(self.buf).decode("utf-8", "replace")


def _same(reader: _CappedPipe) -> _CappedPipe:
    """A pipe transport's protocol factory that hands over an existing reader."""
    return reader


@dataclass
class _Run:
    """One run's resources and what the stages learn, from `prepare` to `cleanup`."""

    mode: Launcher
    limits: SandboxLimits
    base: Path  # private temporary directory: stage/ (the program's files), root/, stdin
    interpreter: str
    uid: int | None  # the program's unique uid (root only)
    workdir: str  # the program's working directory as it sees it
    cmd: list[str] = field(default_factory=list)
    report_fd: int = -1  # the init's report pipe: read end (ours)
    report_w: int = -1  # and write end (the init's)
    fds: list[int] = field(default_factory=list)  # descriptors to close in cleanup
    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    out: _CappedPipe | None = None
    err: _CappedPipe | None = None
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    wall_s: float = 0.0  # from launch to the init's end, as the host saw it

    @property
    def plain_uid(self) -> int | None:
        """The uid to kill by, when no PID namespace holds the program's processes."""
        return self.uid if self.mode == "plain" else None


def prepare(source: str, *, stdin: str, files: dict[str, str], limits: SandboxLimits, mode: Launcher) -> _Run:
    """Stage 1: the run's directory and the init's configuration and command."""
    launcher, ns_features = _launcher(mode)
    exe, ro_binds = interpreter(mode)
    uid = _next_uid() if _is_root() else None
    base = Path(tempfile.mkdtemp(prefix="rsi-sandbox-"))
    stage, newroot = base / "work", base / "root"
    run = _Run(mode, limits, base, exe, uid, NS_WORKDIR if mode == "namespaces" else str(stage))
    try:
        stage.mkdir(mode=0o700)
        newroot.mkdir(mode=0o700)
        (stage / PROGRAM_NAME).write_text(source, encoding="utf-8")
        for rel, content in files.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_text(content, encoding="utf-8")
        (base / "stdin").write_text(stdin, encoding="utf-8")
        if mode == "plain" and uid is not None:
            # The program's uid needs its work directory; nothing else is its own.
            base.chmod(0o711)
            for p in [stage, *stage.rglob("*")]:
                os.chown(p, uid, uid)
        run.report_fd, run.report_w = os.pipe()
        run.fds += [run.report_fd, run.report_w]
        cfg: InitConfig = {
            "report_fd": run.report_w,
            "features": ns_features,
            "pidns": mode == "namespaces",
            "newroot": str(newroot) if mode == "namespaces" else None,
            "stage": str(stage),
            "ro_binds": ro_binds,
            "workdir": NS_WORKDIR,
            "child_workdir": run.workdir,
            "disk_mb": limits.disk_mb,
            "uid": uid,
            "drop_caps": mode == "namespaces" and uid is None,
            "argv": [exe, "-s", "-P", f"{run.workdir}/{PROGRAM_NAME}"],
            "env": _child_env(run.workdir),
            "rlimits": _rlimits(limits),
            "timeout_s": limits.timeout_s,
            "memory_mb": limits.memory_mb,
        }
        run.cmd = [*launcher, sys.executable, "-I", "-S", "-c", INIT_SOURCE, json.dumps(cfg)]
    except BaseException:
        cleanup(run)
        raise
    return run


def _rlimits(limits: SandboxLimits) -> list[tuple[str, int, int]]:
    return [
        ("RLIMIT_CPU", limits.effective_cpu_s, limits.effective_cpu_s + 1),  # SIGXCPU, then SIGKILL
        ("RLIMIT_AS", limits.memory_mb << 20, limits.memory_mb << 20),
        ("RLIMIT_NPROC", limits.nproc, limits.nproc),
        ("RLIMIT_FSIZE", limits.fsize_mb << 20, limits.fsize_mb << 20),
        ("RLIMIT_NOFILE", limits.nofile, limits.nofile),
        ("RLIMIT_CORE", 0, 0),
    ]


async def launch(run: _Run) -> None:
    """Stage 2: start the launcher and init, its output on capped pipes."""
    loop = asyncio.get_running_loop()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    run.fds += [out_r, out_w, err_r, err_w]
    pipes = []
    for fd in (out_r, err_r):
        reader = _CappedPipe(run.limits.output_bytes, loop.create_future())
        run.fds.remove(fd)  # the transport owns it from now on
        pipe = os.fdopen(fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(functools.partial(_same, reader), pipe)
        run.transports.append(transport)
        pipes.append(reader)
    run.out, run.err = pipes
    run.started = time.monotonic()
    with open(run.base / "stdin", "rb") as stdin_file:
        # start_new_session: the launcher and init form one process group that we can SIGKILL whole.
        run.proc = await asyncio.create_subprocess_exec(
            *run.cmd,
            stdin=stdin_file,
            stdout=out_w,
            stderr=err_w,
            env={"PATH": _MIN_PATH},
            cwd=str(run.base),
            start_new_session=True,
            pass_fds=(run.report_w,),
        )
    for fd in (run.report_w, out_w, err_w):  # only the init writes to them now
        os.close(fd)
        run.fds.remove(fd)


async def supervise(run: _Run) -> bool:
    """Stage 3: wait for the init; True when the backstop had to kill it (the init itself hung)."""
    assert run.proc is not None
    backstop = False
    try:
        await asyncio.wait_for(run.proc.wait(), run.limits.timeout_s + BACKSTOP_GRACE_S)
    except TimeoutError:
        backstop = True
        _kill_group(run.proc.pid, run.plain_uid, run.interpreter)
        await run.proc.wait()
    run.wall_s = time.monotonic() - run.started
    return backstop


async def read_report(run: _Run) -> InitReport:
    """The init's report, once the output pipes are drained."""
    assert run.out is not None and run.err is not None
    # Every writer is dead once init has exited (except under rlimits-only, where an escaped daemon
    # may hold the pipes): give the readers a moment, then stop listening.
    await asyncio.wait([run.out.done, run.err.done], timeout=1.0)
    os.set_blocking(run.report_fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(run.report_fd, 65536):
            chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks) or b"{}")
    except json.JSONDecodeError:
        return {"ok": False, "error": "unreadable init report"}
    return data if isinstance(data, dict) else {"ok": False, "error": "bad init report"}  # type: ignore[return-value]


def cleanup(run: _Run) -> None:
    """Whatever happened: nothing of the run is left running or on disk."""
    if run.proc is not None and run.proc.returncode is None:  # cancelled: take everything down
        _kill_group(run.proc.pid, run.plain_uid, run.interpreter)
    for transport in run.transports:
        transport.close()
    for fd in run.fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    run.fds.clear()
    shutil.rmtree(run.base, ignore_errors=True)


def collect(run: _Run, report: InitReport, backstop: bool, info: IsolationInfo | None) -> SandboxResult:
    """Stage 4: the result, from the init's report and the captured output."""
    assert run.out is not None and run.err is not None and run.proc is not None
    if not report.get("ok"):
        if not backstop:
            raise SandboxError(
                f"sandbox init failed: {report.get('error', 'no report')}; launcher exit "
                f"{run.proc.returncode}; stderr: {run.err.text()[:2000]}"
            )
        # The init hung and was killed with the program: that is the program's timeout.
        features = list(info.features) if info else []
        report = {"ok": True, "status": None, "reason": "timeout", "features": features}
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
    stdout, stderr = run.out.text(), run.err.text()
    cpu_s = report.get("cpu_s")
    rss_kb = report.get("max_rss_kb")
    return SandboxResult(
        stdout=stdout,
        stderr=stderr,
        exit_code=exit_code,
        signal=sig,
        timed_out=report.get("reason") == "timeout",
        killed_by=_killed_by(report, exit_code, sig, cpu_s, run.limits, stderr),
        duration_s=round(report.get("wall_s", run.wall_s), 4),
        cpu_s=round(cpu_s, 4) if cpu_s is not None else None,
        max_rss_mb=round(rss_kb / 1024, 2) if rss_kb is not None else None,
        stdout_truncated=run.out.total > len(run.out.buf),
        stderr_truncated=run.err.total > len(run.err.buf),
        stdout_bytes=run.out.total,
        stderr_bytes=run.err.total,
        isolation=isolation_level_name(features),
        isolation_features=features,
        interpreter=run.interpreter,
        workdir=run.workdir,
        limits=run.limits,
    )


async def run_program(
    source: str,
    *,
    stdin: str,
    limits: SandboxLimits,
    files: dict[str, str],
    mode: Launcher,
    info: IsolationInfo | None,
) -> SandboxResult:
    """One run through the four stages. `info` is the probed isolation (None while probing)."""
    run = prepare(source, stdin=stdin, files=files, limits=limits, mode=mode)
    try:
        await launch(run)
        backstop = await supervise(run)
        report = await read_report(run)
    finally:
        cleanup(run)
    return collect(run, report, backstop, info)


# --- killing and naming -----------------------------------------------------------------------------


def _kill_group(pgid: int, uid: int | None, interpreter: str) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if uid is not None:  # no PID namespace: the program's setsid() daemons are only reachable by uid
        _kill_uid(uid, interpreter)


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
    report: InitReport,
    exit_code: int | None,
    sig: str | None,
    cpu_s: float | None,
    limits: SandboxLimits,
    stderr: str,
) -> str | None:
    reason = report.get("reason")
    if reason in ("timeout", "memory"):
        return reason
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
