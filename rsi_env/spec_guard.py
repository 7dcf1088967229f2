"""Untrusted specs are checked in a child process, under the sandbox's CPU and memory limits.

A spec written by a model may be built to exhaust whoever reads it. The evaluation budget
(`expr_budget`) bounds what Python can see of its expressions; what it cannot see (work inside one
native call of the CEL runtime, memory the runtime allocates, a bug of ours a spec happens to hit) is
bounded here: the static checks and the dry run run in `python -m rsi_env.spec_guard_child`, a fresh
interpreter with the sandbox's resource limits (`sandbox.SandboxLimits`, applied as rlimits by
`sandbox.resource_limits`: CPU time, address space, file size, open files, no core dumps) and a
wall-clock backstop that kills its process group. A runaway costs the caller those limits, never its
own process, and comes back as one problem of the spec, naming the stage it was in:

    bad.yaml: 1 problem(s)
      - the checks used more than 30 s of CPU time (in the dry run n=2, seed=0): ...

The child is our own code reading untrusted data, not an untrusted program, so it needs no namespace
or uid of its own (the sandbox proper is for programs); it gets the spec as JSON on stdin and answers
with a JSON report on stdout. `games validate`, `play --game FILE`, `rsi_env.make(path)` and the
generator check untrusted specs here (the generator from a thread: its pipeline goes on meanwhile).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from .sandbox import SandboxLimits, resource_limits
from .spec import GameSpec, SpecError, read_spec_file

# The checks of a normal spec take ~1 s of CPU; the dry run stops itself at DRY_RUN_UNITS (~5 s here).
GUARD_LIMITS = SandboxLimits(timeout_s=180, cpu_s=40, memory_mb=1536, fsize_mb=1, nofile=64)
PROGRESS = "progress: "  # the child reports each stage it starts on stderr


class GuardReport(BaseModel):
    """What the child found: `stage` is where the first problems came up (or `ok`)."""

    stage: Literal["ok", "static", "dry_run", "guard"]
    problems: list[str] = []


def check_isolated(
    spec: GameSpec, source: str = "<spec>", *, dry_run: bool = True, max_ticks: int | None = None
) -> GuardReport:
    """Run `spec_check.check_spec` and (`dry_run`) its dry run, each episode capped at `max_ticks`,
    on `spec` in a child process under GUARD_LIMITS."""
    request = json.dumps(
        {
            "spec": spec.model_dump(mode="json", by_alias=True),
            "source": source,
            "dry_run": dry_run,
            "max_ticks": max_ticks,
        }
    )
    limits = GUARD_LIMITS
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONSTARTUP", "PYTHONINSPECT"))}
    # One malloc arena and one BLAS thread: the address-space limit counts every reservation.
    env.update({"MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    rlimits = [r for r in resource_limits(limits) if r[0] != "RLIMIT_NPROC"]  # ours, not the program's

    def limit() -> None:  # in the child, before it runs Python
        for name, soft, hard in rlimits:
            resource.setrlimit(getattr(resource, name), (soft, hard))

    proc = subprocess.Popen(
        [sys.executable, "-m", "rsi_env.spec_guard_child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=limit,
        start_new_session=True,  # its own process group, killed whole at the backstop
    )
    try:
        out, err = proc.communicate(request.encode(), timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return GuardReport(
            stage="guard",
            problems=[
                f"the checks took more than {limits.timeout_s:g} s{_where(err)}: the spec costs too much"
            ],
        )
    if proc.returncode == 0:
        try:
            return GuardReport.model_validate_json(out)
        except ValueError:
            pass
    return GuardReport(stage="guard", problems=[_why_stopped(proc.returncode, err, limits)])


def _where(stderr: bytes) -> str:
    """` (in the dry run n=2, seed=0)`: the last stage the child reported."""
    stages = [
        ln[len(PROGRESS) :]
        for ln in stderr.decode("utf-8", "replace").splitlines()
        if ln.startswith(PROGRESS)
    ]
    return f" (in the {stages[-1]})" if stages else ""


def _why_stopped(code: int, stderr: bytes, limits: SandboxLimits) -> str:
    text = stderr.decode("utf-8", "replace")
    where = _where(stderr)
    if code == -signal.SIGXCPU or code == -signal.SIGKILL:
        cpu = limits.effective_cpu_s
        return f"the checks used more than {cpu} s of CPU time{where}: the spec costs too much"
    if "MemoryError" in text or "memory allocation" in text or code == -signal.SIGABRT:
        return f"the checks needed more than {limits.memory_mb} MB of memory{where}: the spec builds too much"
    last = next((ln for ln in reversed(text.splitlines()) if ln.strip() and not ln.startswith(PROGRESS)), "")
    return f"the checks stopped (exit {code}){where}: {last[:200] or 'no message'}"


def check_spec_isolated(spec: GameSpec, source: str = "<spec>", *, dry_run: bool = True) -> None:
    """`check_isolated`, raising SpecError with its problems."""
    report = check_isolated(spec, source, dry_run=dry_run)
    if report.problems:
        raise SpecError(source, report.problems)


def load_untrusted_spec(path: str | Path, *, dry_run: bool = True) -> GameSpec:
    """Read a spec file (bounded: `spec.read_spec_file`) and check it in a child process; raises
    SpecError with every problem found, as `games validate` prints them."""
    spec = read_spec_file(path)
    check_spec_isolated(spec, str(path), dry_run=dry_run)
    return spec
