"""Escape and limit tests for rsi_env.sandbox.

Each escape is tried the way an LLM-written program (or an adversarial one) would try it; the assertions
check the outside world (host files, host processes, a host listener), not only what the program says.
Tests that depend on a mechanism check the reported isolation level first, so a weaker machine fails or
reports honestly instead of passing silently.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsi_env.sandbox import (
    SandboxLimits,
    SandboxResult,
    arun_python,
    isolation_level,
    run_python,
)

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
STRONG = "namespaces+uid"


def run(source: str, **kw: object) -> SandboxResult:
    res = run_python(textwrap.dedent(source), **kw)  # type: ignore[arg-type]
    # Every result names its isolation and it is never weaker than what the probe promised.
    mode = kw.get("mode", "auto")
    assert res.isolation == isolation_level(mode).level  # type: ignore[arg-type]
    assert res.isolation_features == list(isolation_level(mode).features)  # type: ignore[arg-type]
    return res


def host_pids_with(marker: str) -> list[int]:
    """Host processes whose command line contains `marker` (the host sees into every PID namespace)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def strong() -> None:
    info = isolation_level()
    if IS_ROOT and shutil.which("unshare"):
        assert info.level == STRONG, f"root with unshare should get {STRONG}: {info}"
    if info.level != STRONG:
        pytest.fail(f"this test needs isolation {STRONG}, the machine gives {info.level} ({info.notes})")


@pytest.fixture
def plain_root() -> None:
    if not IS_ROOT:
        pytest.skip("the plain launcher only switches uid (and can kill a tree) when run as root")
    assert isolation_level("plain").level == "uid+rlimits"


@pytest.fixture
def world_writable_dir() -> Iterator[Path]:
    """A 0777 directory on the host's real file system (not /tmp, which is private in the sandbox)."""
    d = REPO / f".sandbox-escape-{secrets.token_hex(4)}"
    d.mkdir()
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- isolation level ------------------------------------------------------------------------------


def test_isolation_level_is_probed_and_strong_as_root() -> None:
    info = isolation_level()
    assert info.level in {"namespaces+uid", "namespaces", "uid+rlimits", "rlimits-only"}
    assert isolation_level() is info  # cached
    assert info.interpreter_version.startswith("3.")
    if IS_ROOT and shutil.which("unshare"):
        assert info.level == STRONG
        assert {"netns", "pidns", "mountns", "unique-uid", "minimal-root", "kill-tree"} <= set(info.features)
        assert info.network_isolated


def test_plain_mode_reports_weaker_level_honestly(plain_root: None) -> None:
    res = run("print('hi')", mode="plain")
    assert res.isolation == "uid+rlimits"
    assert "netns" not in res.isolation_features and "minimal-root" not in res.isolation_features


# --- ordinary behaviour ----------------------------------------------------------------------------


def test_output_and_exit_code(strong: None) -> None:
    res = run(
        """
        import sys
        print("to stdout")
        print("to stderr", file=sys.stderr)
        sys.exit(3)
        """
    )
    assert res.stdout == "to stdout\n"
    assert res.stderr == "to stderr\n"
    assert res.exit_code == 3 and res.signal is None and not res.timed_out and res.killed_by is None
    assert not res.ok
    assert res.duration_s < 5 and res.cpu_s is not None and res.max_rss_mb is not None and res.max_rss_mb > 1


def test_exception_gives_traceback_and_exit_1(strong: None) -> None:
    res = run("raise ValueError('boom')")
    assert res.exit_code == 1
    assert 'File "/sandbox/main.py", line 1' in res.stderr and "ValueError: boom" in res.stderr


def test_stdin_is_fed(strong: None) -> None:
    res = run(
        "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))", stdin="1 2\n39\n"
    )
    assert res.ok and res.stdout == "42\n"


def test_files_are_placed_in_workdir(strong: None) -> None:
    res = run(
        "print(open('data/in.txt').read().strip(), open('notes.txt').read())",
        files={"data/in.txt": "héllo\n", "notes.txt": "n"},
    )
    assert res.ok and res.stdout == "héllo n\n"
    for bad in ("/etc/passwd", "../x", "main.py"):
        with pytest.raises(ValueError):
            run_python("pass", files={bad: "x"})


def test_ordinary_programs_are_not_hampered(strong: None) -> None:
    # Positive control: processes, threads, shared-memory semaphores, subprocesses and temp files work.
    res = run(
        """
        import multiprocessing as mp, concurrent.futures as cf, subprocess, tempfile
        def sq(x):
            return x * x
        if __name__ == "__main__":
            with mp.Pool(4) as pool:
                print(sum(pool.map(sq, range(100))))
            with cf.ThreadPoolExecutor(16) as ex:
                print(sum(ex.map(sq, range(100))))
            print(subprocess.run(["echo", "sub"], capture_output=True, text=True).stdout.strip())
            with tempfile.NamedTemporaryFile() as f:
                print(f.name.startswith("/sandbox/"))
        """
    )
    assert res.ok, res.stderr
    assert res.stdout.split() == ["328350", "328350", "sub", "True"]
    assert res.killed_by is None


def test_environment_is_stripped_and_hash_seed_fixed(strong: None) -> None:
    src = """
        import os, sys
        print(sorted(os.environ.items()))
        print(hash("abc"), sys.flags.no_user_site, sys.flags.safe_path, os.getcwd() in sys.path)
        print(list({"pear", "apple", "fig", "kiwi"}))
    """
    a, b = run(src), run(src)
    assert a.ok and a.stdout == b.stdout
    env = dict(eval(a.stdout.splitlines()[0]))
    assert env == {
        "HOME": "/sandbox",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "MALLOC_ARENA_MAX": "2",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONHASHSEED": "0",
        "TMPDIR": "/sandbox",
    }
    expected_hash = subprocess.run(
        [sys.executable, "-c", "print(hash('abc'))"],
        env={"PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
    ).stdout.split()[0]
    assert a.stdout.splitlines()[1] == f"{expected_hash} 1 True False"


def test_isolation_present_in_every_result(strong: None) -> None:
    results = [
        run("print(1)"),
        run("import sys; sys.exit(2)"),
        run("while True: pass", limits=SandboxLimits(timeout_s=0.5)),
    ]
    for res in results:
        assert res.isolation == STRONG
        assert "netns" in res.isolation_features
        assert json.loads(res.model_dump_json())["isolation"] == STRONG


# --- timeouts and limits -----------------------------------------------------------------------------


def test_timeout_with_signals_ignored_and_busy_loop(strong: None) -> None:
    t0 = time.monotonic()
    res = run(
        """
        import signal
        for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
            signal.signal(s, signal.SIG_IGN)
        signal.alarm(0)
        print("ignoring", flush=True)
        while True:
            pass
        """,
        limits=SandboxLimits(timeout_s=1.0),
    )
    assert time.monotonic() - t0 < 4
    assert res.timed_out and res.killed_by == "timeout"
    assert res.exit_code == -9 and res.signal == "SIGKILL"
    assert res.stdout == "ignoring\n"
    assert 0.9 < res.duration_s < 2


def test_sleeping_program_times_out(strong: None) -> None:
    res = run("import time; time.sleep(60)", limits=SandboxLimits(timeout_s=0.5))
    assert res.timed_out and res.killed_by == "timeout" and res.cpu_s is not None and res.cpu_s < 0.5


def test_cpu_limit(strong: None) -> None:
    res = run("while True: pass", limits=SandboxLimits(timeout_s=10, cpu_s=1))
    assert not res.timed_out
    assert res.killed_by == "cpu" and res.signal in ("SIGXCPU", "SIGKILL")
    assert res.duration_s < 4


def test_memory_bomb_single_process(strong: None) -> None:
    res = run(
        """
        chunks = []
        while True:
            chunks.append(b"\\x01" * (32 << 20))
        """,
        limits=SandboxLimits(memory_mb=256, timeout_s=10),
    )
    assert not res.ok and not res.timed_out
    assert res.killed_by == "memory"
    assert res.max_rss_mb is not None and res.max_rss_mb < 300


def test_memory_bomb_across_forked_processes(strong: None) -> None:
    # Each process stays under RLIMIT_AS; only the tree-wide watchdog can stop this.
    res = run(
        """
        import os, time
        for _ in range(8):
            if os.fork() == 0:
                data = b"\\x01" * (150 << 20)
                time.sleep(30)
                os._exit(0)
        time.sleep(30)
        """,
        limits=SandboxLimits(memory_mb=256, timeout_s=15),
    )
    assert res.killed_by == "memory" and not res.timed_out
    assert res.duration_s < 10


def test_a_program_may_start_dozens_of_threads(strong: None) -> None:
    # glibc's per-thread malloc arenas (64 MiB of address space each) once capped this at 13 threads.
    res = run(
        """
        import threading, time
        threads = [threading.Thread(target=time.sleep, args=(0.2,)) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(len(threads))
        """,
        limits=SandboxLimits(memory_mb=512, timeout_s=10),
    )
    assert res.ok and res.stdout == "40\n", res.stderr[-500:]


def test_idle_forked_children_share_their_parents_memory(strong: None) -> None:
    # 30 children that only sleep: their resident sets summed are ~30x the parent's, but the pages are
    # shared after fork. The watchdog sums proportional set sizes, so this is not a memory bomb.
    res = run(
        """
        import os, time
        kids = []
        for _ in range(30):
            pid = os.fork()
            if pid == 0:
                time.sleep(0.5)
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.waitpid(pid, 0)
        print("all done")
        """,
        limits=SandboxLimits(memory_mb=256, timeout_s=10),
    )
    assert res.ok and res.killed_by is None, (res.killed_by, res.stderr)
    assert res.stdout == "all done\n"


def test_fork_bomb_is_contained(strong: None) -> None:
    before = len([p for p in os.listdir("/proc") if p.isdigit()])
    t0 = time.monotonic()
    res = run(
        """
        import os, sys
        made = 0
        while True:
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                made = -1
                while True:
                    try:
                        os.fork()
                    except OSError:
                        pass
            made += 1
        print("forks before EAGAIN:", made, flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        limits=SandboxLimits(timeout_s=2, nproc=32),
    )
    assert time.monotonic() - t0 < 8
    assert res.timed_out
    made = int(res.stdout.split(":")[1])
    assert 0 <= made < 32, res.stdout  # RLIMIT_NPROC applied although the host side runs as root
    time.sleep(0.2)
    after = len([p for p in os.listdir("/proc") if p.isdigit()])
    assert after - before < 5, "fork bomb processes survived the run"


def test_file_size_limit(strong: None) -> None:
    res = run(
        """
        import errno
        try:
            with open("big", "wb") as f:
                f.write(b"x" * (3 << 20))
        except OSError as e:
            print("refused", errno.errorcode[e.errno])
        """,
        limits=SandboxLimits(fsize_mb=1),
    )
    assert res.stdout.strip() == "refused EFBIG"


def test_output_is_capped(strong: None) -> None:
    res = run(
        """
        import sys
        line = "x" * 1000 + "\\n"
        while True:
            sys.stdout.write(line)
            sys.stderr.write(line)
        """,
        limits=SandboxLimits(timeout_s=1, output_bytes=4096),
    )
    assert res.timed_out
    assert len(res.stdout.encode()) == 4096 and len(res.stderr.encode()) == 4096
    assert res.stdout_truncated and res.stderr_truncated
    assert res.stdout_bytes > 100_000


# --- escapes -----------------------------------------------------------------------------------------


def test_parent_secret_env_not_visible_via_os_environ(strong: None, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("RSI_TEST_API_KEY", token)
    res = run("import os; print(os.environ.get('RSI_TEST_API_KEY'), len(os.environ))")
    assert res.stdout.startswith("None ")
    assert token not in res.stdout + res.stderr


def test_parent_secret_not_visible_via_posix_system(strong: None, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("RSI_TEST_API_KEY", token)
    res = run(
        """
        import posix, sys
        sys.stdout.flush()
        posix.system("env; cat /proc/*/environ; cat /proc/1/environ; echo system-ran")
        """
    )
    assert "system-ran" in res.stdout
    assert token not in res.stdout + res.stderr


def test_parent_secret_not_visible_via_ctypes(strong: None, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("RSI_TEST_API_KEY", token)
    res = run(
        """
        import ctypes
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p
        print("getenv:", libc.getenv(b"RSI_TEST_API_KEY"))
        libc.system(b"env; echo ctypes-system-ran")
        """
    )
    assert "getenv: None" in res.stdout and "ctypes-system-ran" in res.stdout
    assert token not in res.stdout + res.stderr


def test_parent_secret_not_readable_from_proc(strong: None, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("RSI_TEST_API_KEY", token)
    res = run(
        f"""
        import os
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        leaked = []
        for pid in pids + ["{os.getpid()}", "{os.getppid()}"]:
            for what in ("environ", "cmdline"):
                try:
                    leaked.append(open(f"/proc/{{pid}}/{{what}}", "rb").read())
                except OSError:
                    pass
        print(len(pids), b"".join(leaked))
        """
    )
    assert res.ok
    assert token not in res.stdout
    assert int(res.stdout.split()[0]) <= 3  # only the sandbox's own PID namespace is visible


def test_the_program_sees_only_its_own_processes(strong: None) -> None:
    # The sandbox's init (root) is hidden: its command line names host paths and the run's limits.
    res = run(
        """
        import os
        print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit()) == [os.getpid()])
        print(os.path.exists("/proc/1/cmdline"))
        """
    )
    assert res.ok and res.stdout.split() == ["True", "False"], res.stdout
    assert "hidepid" in res.isolation_features


def test_write_outside_workdir_fails(strong: None, world_writable_dir: Path, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    name = f"escape-{secrets.token_hex(4)}"
    targets = [
        REPO / name,
        Path("/root") / name,
        world_writable_dir / name,
        tmp_path / name,
        Path("/etc") / name,
        Path("/usr/lib") / name,
    ]
    res = run(
        f"""
        import os
        for path in {[str(t) for t in targets]!r} + ["/sandbox/inside.txt", "/tmp/private.txt"]:
            try:
                with open(path, "w") as f:
                    f.write("pwned")
                print("WROTE", path)
            except OSError as e:
                print("denied", path, type(e).__name__)
        """
    )
    assert res.ok, res.stderr
    assert "WROTE /sandbox/inside.txt" in res.stdout and "WROTE /tmp/private.txt" in res.stdout
    for target in targets:
        assert f"denied {target}" in res.stdout
        assert not target.exists()


def test_project_and_root_home_are_invisible(strong: None) -> None:
    res = run(
        f"""
        import os
        print(os.path.exists({str(REPO)!r}), os.path.exists("/work"), os.path.exists("/run"))
        print(sorted(os.listdir("/root")))
        """
    )
    assert res.stdout.splitlines()[0] == "False False False"
    assert res.stdout.splitlines()[1] in ("[]", "['.pyenv']")  # only the interpreter's prefix, if there


def test_cannot_regain_privileges(strong: None) -> None:
    res = run(
        """
        import os
        for name, call in [("setuid", lambda: os.setuid(0)), ("chroot", lambda: os.chroot("/tmp")),
                           ("kill-init", lambda: os.kill(1, 9))]:
            try:
                call()
                print(name, "ALLOWED")
            except OSError as e:
                print(name, "denied", type(e).__name__)
        print("uid", os.getuid(), os.getgid(), os.getgroups())
        """
    )
    assert "ALLOWED" not in res.stdout
    uid_line = res.stdout.splitlines()[-1].split()
    assert int(uid_line[1]) >= 1_000_000 and uid_line[3] == "[]"


DAEMON_SOURCE = """
import os, sys, time
marker = {marker!r}
host_file = {host_file!r}
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        # The grandchild: session leader of nothing, parent gone; it keeps trying to leave a trace.
        code = (
            "import os, signal, sys, time\\n"
            "for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT): signal.signal(s, signal.SIG_IGN)\\n"
            "open('daemon-started', 'w').close()\\n"
            "while True:\\n"
            "    time.sleep(0.05)\\n"
            "    for p in (sys.argv[2], 'daemon-trace'):\\n"
            "        try:\\n"
            "            open(p, 'a').write('alive\\\\n')\\n"
            "        except OSError:\\n"
            "            pass\\n"
            "    try:\\n"
            "        print('DAEMON-ALIVE', flush=True)\\n"
            "    except OSError:\\n"
            "        pass\\n"
        )
        os.execv(sys.executable, [sys.executable, "-c", code, marker, host_file])
    os._exit(0)
os.wait()
while not os.path.exists("daemon-started"):
    time.sleep(0.01)
print("daemon started", flush=True)
{ending}
"""


@pytest.mark.parametrize("ending", ["exit", "killed"])
def test_daemon_grandchild_does_not_survive(strong: None, tmp_path: Path, ending: str) -> None:
    tmp_path.chmod(0o777)
    marker = f"rsi-daemon-{secrets.token_hex(6)}"
    host_file = tmp_path / "daemon-was-here"
    src = DAEMON_SOURCE.format(
        marker=marker,
        host_file=str(host_file),
        ending="import sys; sys.exit(0)" if ending == "exit" else "while True: pass",
    )
    res = run(src, limits=SandboxLimits(timeout_s=1.5))
    assert "daemon started" in res.stdout, res.stderr
    assert res.timed_out is (ending == "killed")
    assert host_pids_with(marker) == []
    time.sleep(0.5)
    assert host_pids_with(marker) == []
    assert not host_file.exists()


def test_network_unreachable_from_socket_module(strong: None) -> None:
    accepted: list[object] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(3)
        port = server.getsockname()[1]

        def accept() -> None:
            try:
                accepted.append(server.accept())
            except OSError:
                pass

        thread = threading.Thread(target=accept)
        thread.start()
        res = run(
            f"""
            import socket
            for host in ("127.0.0.1", "localhost", "::1"):
                try:
                    socket.create_connection((host, {port}), timeout=1)
                    print("CONNECTED", host)
                except OSError as e:
                    print("unreachable", host, type(e).__name__)
            """
        )
        thread.join()
    assert "CONNECTED" not in res.stdout and res.stdout.count("unreachable") == 3
    assert accepted == []


def test_network_unreachable_via_ctypes_and_system(strong: None) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.1)
        port = server.getsockname()[1]
        res = run(
            f"""
            import ctypes, socket, struct, posix, sys
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
            addr = struct.pack("!HH4s8x", socket.AF_INET, {port}, socket.inet_aton("127.0.0.1"))
            addr = struct.pack("=H", socket.AF_INET) + addr[2:]
            rc = libc.connect(fd, addr, len(addr))
            print("ctypes connect", rc, ctypes.get_errno())
            sys.stdout.flush()
            probe = "import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
            verdict = "&& echo SYSTEM-CONNECTED || echo system-failed"
            posix.system(f"{{sys.executable}} -c \\"{{probe}}\\" {{verdict}}")
            """
        )
        with pytest.raises(TimeoutError):
            server.accept()
    assert "ctypes connect -1" in res.stdout
    assert "system-failed" in res.stdout and "SYSTEM-CONNECTED" not in res.stdout


def test_host_unix_socket_unreachable(strong: None) -> None:
    d = Path("/run") if os.access("/run", os.W_OK) else REPO
    sock_dir = d / f"rsi-sandbox-test-{secrets.token_hex(4)}"
    sock_dir.mkdir(mode=0o755)
    path = sock_dir / "s"
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            path.chmod(0o777)
            server.listen()
            server.settimeout(0.1)
            res = run(
                f"""
                import socket
                try:
                    socket.socket(socket.AF_UNIX).connect({str(path)!r})
                    print("CONNECTED")
                except OSError as e:
                    print("unreachable", type(e).__name__)
                """
            )
            with pytest.raises(TimeoutError):
                server.accept()
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert res.stdout.startswith("unreachable")


# --- the fallback launcher (root without namespaces) ------------------------------------------------


def test_plain_mode_fork_bomb_and_daemon_are_killed(plain_root: None, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    marker = f"rsi-daemon-{secrets.token_hex(6)}"
    host_file = tmp_path / "daemon-was-here"
    src = DAEMON_SOURCE.format(marker=marker, host_file=str(host_file), ending="import sys; sys.exit(0)")
    res = run(src, mode="plain", limits=SandboxLimits(timeout_s=3))
    assert "daemon started" in res.stdout, res.stderr
    time.sleep(0.3)
    assert host_pids_with(marker) == []
    # No network namespace here, so the daemon could write to a world-writable host dir while it
    # lived; what matters is that it lived no longer than its parent.
    trace = host_file.read_text().count("alive") if host_file.exists() else 0
    time.sleep(0.3)
    assert (host_file.read_text().count("alive") if host_file.exists() else 0) == trace

    res = run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        mode="plain",
        limits=SandboxLimits(timeout_s=1.5, nproc=16),
    )
    assert res.timed_out and res.isolation == "uid+rlimits"


def test_plain_mode_secret_and_root_files(plain_root: None, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("RSI_TEST_API_KEY", token)
    name = REPO / f"escape-{secrets.token_hex(4)}"
    res = run(
        f"""
        import os
        os.system("env; cat /proc/*/environ 2>/dev/null")
        for path in ({str(name)!r}, "/root/x"):
            try:
                open(path, "w")
                print("WROTE", path)
            except OSError:
                print("denied", path)
        """,
        mode="plain",
    )
    assert token not in res.stdout + res.stderr
    assert "WROTE" not in res.stdout and not name.exists()


# --- async API -------------------------------------------------------------------------------------


def test_async_runs_concurrently_without_blocking_loop(strong: None) -> None:
    async def main() -> tuple[list[SandboxResult], int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(arun_python(f"import time; time.sleep(1); print({i})") for i in range(4))
        )
        elapsed = time.monotonic() - t0
        tick_task.cancel()
        return results, ticks, elapsed

    results, ticks, elapsed = asyncio.run(main())
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert elapsed < 3.0  # concurrent, not 4 s in a row
    assert ticks >= 10  # the event loop kept running meanwhile


@pytest.mark.parametrize("mode", ["auto", "plain"])
def test_cancelled_run_takes_the_program_down(request: pytest.FixtureRequest, mode: str) -> None:
    # In plain mode the program is in its own session and init gets SIGKILLed with the launcher, so
    # only the parent's uid-wide kill can reach it.
    request.getfixturevalue("strong" if mode == "auto" else "plain_root")
    marker = f"rsi-cancel-{secrets.token_hex(6)}"

    async def main() -> None:
        src = f"import os; os.execv('/bin/sh', ['sh', '-c', 'while :; do :; done', {marker!r}])"
        task = asyncio.create_task(arun_python(src, mode=mode))  # type: ignore[arg-type]
        for _ in range(100):
            await asyncio.sleep(0.05)
            if host_pids_with(marker):
                break
        assert host_pids_with(marker), "program never started"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    time.sleep(0.3)
    assert host_pids_with(marker) == []


def test_run_python_works_inside_a_running_loop(strong: None) -> None:
    async def main() -> SandboxResult:
        return run_python("print('nested')")

    assert asyncio.run(main()).stdout == "nested\n"


# --- CLI ---------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsi_env.sandbox", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_cli_prints_one_json_object_even_when_program_fails(strong: None, tmp_path: Path) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text("print('out'); raise SystemExit(4)")
    proc = _cli(str(prog), "--timeout", "5", "--memory", "256")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1
    data = json.loads(proc.stdout)
    assert data["stdout"] == "out\n" and data["exit_code"] == 4 and data["isolation"] == STRONG
    assert data["limits"]["timeout_s"] == 5 and data["limits"]["memory_mb"] == 256
    assert {
        "stderr",
        "timed_out",
        "killed_by",
        "duration_s",
        "cpu_s",
        "max_rss_mb",
        "stdout_truncated",
    } <= set(data)


def test_cli_rejects_missing_file_and_bad_limits(tmp_path: Path) -> None:
    proc = _cli()
    assert proc.returncode == 2 and "FILE" in proc.stderr and proc.stdout == ""
    proc = _cli(str(tmp_path / "nope.py"))
    assert proc.returncode == 2 and "FILE not found" in proc.stderr and proc.stdout == ""
    prog = tmp_path / "p.py"
    prog.write_text("print(1)")
    proc = _cli(str(prog), "--timeout", "-1")
    assert proc.returncode == 2 and "--timeout" in proc.stderr and proc.stdout == ""
    proc = _cli(str(prog), "--timeout", "nan")
    assert proc.returncode == 2 and "--timeout: Input should be a finite number" in proc.stderr, proc.stderr
