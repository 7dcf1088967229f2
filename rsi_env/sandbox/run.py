"""Running a program: `arun_python` / `run_python`, and the probe that finds this machine's isolation."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from .launch import check_files, run_program, unshare_available
from .records import IsolationInfo, Launcher, Mode, SandboxError, SandboxLimits, SandboxResult

_log = logging.getLogger("rsi_env.sandbox")
_T = TypeVar("_T")


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
    extra = check_files(dict(files or {}))
    info = _probe_cache.get(mode)
    if info is None:
        info = await asyncio.to_thread(isolation_level, mode)
    return await run_program(source, stdin=stdin, limits=limits, files=extra, mode=info.mode, info=info)


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


# --- probing ---------------------------------------------------------------------------------------

_PROBE_SOURCE = "import sys\nprint('probe-ok', sys.version.split()[0])\n"
_probe_lock = threading.Lock()
_probe_cache: dict[str, IsolationInfo] = {}


def _probe(mode: Launcher) -> IsolationInfo:
    limits = SandboxLimits(timeout_s=20)
    res = _run_blocking(run_program(_PROBE_SOURCE, stdin="", limits=limits, files={}, mode=mode, info=None))
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
        candidates: list[Launcher] = ["namespaces", "plain"] if mode == "auto" else [mode]
        for candidate in candidates:
            if candidate == "namespaces" and not unshare_available():
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
