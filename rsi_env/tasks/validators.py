"""Validators run against solutions in the sandbox, and how well a validator separates good from bad.

A validator is model-written code defining ``validate(fn)``: it receives the solution's entry-point
function, calls it, and returns its checks (a list of booleans; a bool or a 0..1 score is accepted too).
Each (validator, solution) pair runs as one sandboxed program: the trusted harness
(``sandboxed/check_harness.py``) loads the validator, starts the solution in a process of its own
(``sandboxed/solution_server.py``), hands ``validate`` a proxy that forwards each call there, and prints one
verdict line carrying a nonce read from stdin. The solution shares no memory with the harness, cannot read
its file descriptors or the validator's source, and sends back plain data only, so it cannot patch the
checks or forge the verdict; it can only answer calls. The price: ``fn`` takes and returns data that can
cross a process boundary (builtins, datetime, Decimal, Fraction, collections; objects come back as records
with their class name and attributes), and in-place changes to list/dict/set arguments are copied back.

Who is at fault decides the score of a pair:
- the validator cannot be loaded, defines no ``validate``, returns no usable checks or passes ``fn``
  something that cannot be sent to another process → ``None`` (this pair says nothing about the solution);
- anything else that goes wrong (the solution does not load, lacks the entry point, raises, hangs, dies,
  or ``validate`` raises, e.g. a failed ``assert``) → 0.0 for the solution.

`tamper_signs` still flags code that reaches for the interpreter's internals, for the judges to see.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import statistics
from pathlib import Path

from pydantic import BaseModel, Field

from ..sandbox import SandboxError, SandboxLimits, SandboxResult
from .common import RunLog, sandbox_summary
from .programs import run_program

# Deliberately broken solutions: a validator that passes any of these is not checking much.
BROKEN_SOLUTIONS = {
    "broken-none": "def {entry}(*args, **kwargs):\n    return None\n",
    "broken-zero": "def {entry}(*args, **kwargs):\n    return 0\n",
    "broken-echo": "def {entry}(*args, **kwargs):\n    return args[0] if args else None\n",
}
UNUSABLE = -1.0  # separation of a validator that never produced a verdict: worse than a useless one

_SANDBOXED = Path(__file__).with_name("sandboxed")
# The two programs of a check: the trusted harness (the sandbox's main program) and the solution's server.
HARNESS_SOURCE = (_SANDBOXED / "check_harness.py").read_text(encoding="utf-8")
SERVER_SOURCE = (_SANDBOXED / "solution_server.py").read_text(encoding="utf-8")


class CheckRun(BaseModel):
    """One validator run on one solution."""

    validator_id: str
    solution_id: str
    score: float | None  # fraction of checks passed; None = the validator is at fault
    checks: list[bool] = Field(default_factory=list)
    error: str = ""
    error_in: str = ""  # validator | solution | harness | sandbox | timeout | "" (no error)
    isolation: str = ""


def broken_solutions(entry: str) -> dict[str, str]:
    return {sid: code.format(entry=entry) for sid, code in BROKEN_SOLUTIONS.items()}


def parse_verdict(result: SandboxResult, nonce: str, validator_id: str, solution_id: str) -> CheckRun:
    run = CheckRun(validator_id=validator_id, solution_id=solution_id, score=0.0, isolation=result.isolation)
    line = next((ln for ln in reversed(result.stdout.splitlines()) if ln.startswith(nonce)), None)
    if line is None:
        # No verdict: the program hung, was killed or took the interpreter down. We cannot tell whose
        # fault it was; count it against the solution (a validator that always does this separates nothing).
        run.error_in = "timeout" if result.timed_out else "solution"
        run.error = (
            f"no verdict (killed by {result.killed_by})"
            if result.killed_by
            else (f"no verdict (exit code {result.exit_code}): {result.stderr.strip()[-200:]}")
        )
        return run
    # The harness writes the line, but the validator's code runs in its process: read it as untrusted
    # (nested past Python's recursion limit, not an object, a score too large for a float).
    try:
        data = json.loads(line[len(nonce) :])
        if not isinstance(data, dict):
            raise ValueError("not an object")
        score = data.get("score")
        run.score = float(score) if isinstance(score, int | float) else None
        checks = data.get("checks") or []
        if not isinstance(checks, list):
            raise ValueError("checks are not a list")
        run.checks = [bool(c) for c in checks]
        run.error, run.error_in = str(data.get("error", ""))[:2000], str(data.get("error_in", ""))[:40]
    except (ValueError, RecursionError, OverflowError):
        run.score, run.checks = None, []
        run.error, run.error_in = "unreadable verdict", "harness"
    return run


async def check(
    entry: str,
    validator_id: str,
    validator_code: str,
    solution_id: str,
    solution_code: str,
    limits: SandboxLimits,
    ray: str | None = None,
) -> tuple[CheckRun, SandboxResult | None]:
    """Run one validator on one solution in the sandbox; a sandbox failure is a missing result."""
    nonce = "RSI-VERDICT-" + secrets.token_hex(12) + ":"
    try:
        result = await run_program(
            HARNESS_SOURCE,
            stdin=f"{nonce}\n{entry}\n",
            limits=limits,
            files={
                "validator.py": validator_code,
                "solution.py": solution_code,
                "solution_server.py": SERVER_SOURCE,
            },
            ray=ray,
        )
    except SandboxError as exc:
        return CheckRun(
            validator_id=validator_id,
            solution_id=solution_id,
            score=None,
            error=str(exc)[:300],
            error_in="sandbox",
        ), None
    return parse_verdict(result, nonce, validator_id, solution_id), result


async def run_matrix(
    entry: str,
    validators: dict[str, str],
    solutions: dict[str, str],
    limits: SandboxLimits,
    *,
    log: RunLog | None = None,
    concurrency: int = 2,
    item_id: str = "",
    ray: str | None = None,
) -> list[CheckRun]:
    """Every validator on every solution, `concurrency` sandboxes at a time (on Ray tasks with `ray`);
    each run is logged."""
    sem = asyncio.Semaphore(concurrency)

    async def one(vid: str, sid: str) -> CheckRun:
        async with sem:
            run, result = await check(entry, vid, validators[vid], sid, solutions[sid], limits, ray)
        if log is not None:
            log.write(
                "sandbox",
                what="validator×solution",
                item_id=item_id,
                validator_id=vid,
                solution_id=sid,
                score=run.score,
                checks=run.checks,
                error=run.error,
                error_in=run.error_in,
                result=sandbox_summary(result),
            )
        return run

    return list(await asyncio.gather(*(one(v, s) for v in validators for s in solutions)))


def separation(
    runs: list[CheckRun], validator_id: str, model_ids: set[str], broken_ids: set[str]
) -> float | None:
    """Best score it gives a model solution minus best score it gives a broken one, in [-1, 1].

    `UNUSABLE` (-1) when the validator never produced a verdict; None when there is nothing to compare
    (no model solution or no broken one ran)."""
    mine = [r for r in runs if r.validator_id == validator_id]
    scored = [r for r in mine if r.score is not None]
    if mine and not scored:
        return UNUSABLE
    good = [r.score for r in scored if r.solution_id in model_ids and r.score is not None]
    bad = [r.score for r in scored if r.solution_id in broken_ids and r.score is not None]
    if not good or not bad:
        return None
    return max(good) - max(bad)


def solution_scores(
    runs: list[CheckRun], solution_ids: list[str], separations: dict[str, float | None]
) -> dict[str, float | None]:
    """Each solution's pass rate, averaged over validators weighted by how well they separate.

    None for every solution when no validator separates (then only the judges can rank them)."""
    weights = {v: s for v, s in separations.items() if s is not None and s > 0}
    out: dict[str, float | None] = {}
    for sid in solution_ids:
        got = [
            (r.score, weights[r.validator_id])
            for r in runs
            if r.solution_id == sid and r.validator_id in weights and r.score is not None
        ]
        total = sum(w for _, w in got)
        out[sid] = sum(s * w for s, w in got) / total if total > 0 else None
    return out


def reward(runs: list[CheckRun]) -> float:
    """The env's reward: mean fraction of checks passed over the validators that gave a verdict."""
    scores = [r.score for r in runs if r.score is not None]
    return statistics.fmean(scores) if scores else 0.0


_TAMPER = re.compile(
    r"_getframe|\bgc\b|\binspect\b|\batexit\b|os\._exit|\bdup2\b|sys\.stdin|/proc/|f_back|f_locals|"
    r"__builtins__|\bsettrace\b|\bsetprofile\b"
)


def tamper_signs(code: str) -> list[str]:
    """Names a solution would use to interfere with the harness instead of solving the task."""
    return sorted(set(_TAMPER.findall(code)))
