"""Where a task family's programs run: in this process's sandbox, or (`tasks --ray`) as Ray tasks.

Model calls are I/O and stay on the driver's event loop; running validators, solutions and candidate
programs is the CPU-bound part, so that is what `--ray` spreads over a cluster's cores. Each Ray task
runs the same sandbox (`rsi_env.sandbox.run_python`) on its node, under the same limits; a task whose
worker or node is lost is retried by Ray (a program run writes nothing, so a retry is harmless).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..sandbox import SandboxLimits, SandboxResult, arun_python, run_python


def _run_here(source: str, stdin: str, limits: SandboxLimits, files: dict[str, str]) -> SandboxResult:
    return run_python(source, stdin=stdin, limits=limits, files=files)


async def run_program(
    source: str,
    *,
    stdin: str = "",
    limits: SandboxLimits,
    files: Mapping[str, str] | None = None,
    ray: str | None = None,
) -> SandboxResult:
    """Run `source` in the sandbox: here, or with `ray` (an address or "auto") as one Ray task.
    Raises SandboxError if the sandbox could not be set up where it ran."""
    if ray is None:
        return await arun_python(source, stdin=stdin, limits=limits, files=files)
    from ..runner.ray_backend import remote_task

    result: SandboxResult = await remote_task(
        _run_here, source, stdin, limits, dict(files or {}), address=ray
    )
    return result
