"""Validators run against solutions in the sandbox, and how well a validator separates good from bad.

A validator is model-written code defining ``validate(fn)``: it receives the solution's entry-point
function, calls it, and returns its checks (a list of booleans; a bool or a 0..1 score is accepted too).
Each (validator, solution) pair runs as one sandboxed program: a trusted harness loads ``validator.py``
and ``solution.py`` from the work directory, calls ``validate``, and prints one verdict line.

Who is at fault decides the score of a pair:
- the validator cannot be loaded, defines no ``validate`` or returns no usable checks → ``None``
  (the validator is broken; this pair says nothing about the solution);
- anything else that goes wrong (the solution does not load, lacks the entry point, raises, hangs, or
  ``validate`` raises, e.g. a failed ``assert``) → 0.0 for the solution.

Limitation (documented, not hidden): the checks run in the solution's own interpreter, so a solution
written to cheat could walk the stack or patch ``validate``'s helpers. The verdict line carries a nonce
read from stdin, the solution's output is moved to stderr, and `tamper_signs` flags the usual tricks in
the run log; the judges see the code.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import statistics

from pydantic import BaseModel, Field

from ..sandbox import SandboxError, SandboxLimits, SandboxResult, arun_python
from .common import RunLog, sandbox_summary

# Deliberately broken solutions: a validator that passes any of these is not checking much.
BROKEN_SOLUTIONS = {
    "broken-none": "def {entry}(*args, **kwargs):\n    return None\n",
    "broken-zero": "def {entry}(*args, **kwargs):\n    return 0\n",
    "broken-echo": "def {entry}(*args, **kwargs):\n    return args[0] if args else None\n",
}
UNUSABLE = -1.0  # separation of a validator that never produced a verdict: worse than a useless one

_HARNESS = r'''
import importlib.util, json, os, sys, traceback

ENTRY = {entry!r}


def _load(name):
    spec = importlib.util.spec_from_file_location(name, name + ".py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _origin(exc):
    origin = "harness"
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        base = os.path.basename(frame.f_code.co_filename)
        if base in ("solution.py", "validator.py"):
            origin = base[:-3]
    return origin


def _describe(exc):
    return ("%s: %s" % (type(exc).__name__, exc))[:300]


def _checks(value):
    """(checks, score) from what validate returned; (None, None) when it is not a verdict."""
    if isinstance(value, bool):
        return [value], None
    if isinstance(value, (int, float)):
        return (None, float(value)) if 0 <= value <= 1 else (None, None)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)) and value:
        out = []
        for item in value:
            if isinstance(item, (tuple, list)) and item and isinstance(item[-1], (bool, int)):
                item = item[-1]  # ("name", passed) pairs
            if isinstance(item, (bool, int, float)):
                out.append(bool(item))
            else:
                return None, None
        return out, None
    return None, None


def _verdict():
    try:
        validate = getattr(_load("validator"), "validate", None)
        if not callable(validate):
            raise NameError("validator.py defines no function validate(fn)")
    except BaseException as exc:
        return dict(phase="validator", score=None, error=_describe(exc), error_in="validator")
    try:
        fn = getattr(_load("solution"), ENTRY, None)
        if not callable(fn):
            raise NameError("solution.py defines no function %s" % ENTRY)
    except BaseException as exc:
        return dict(phase="solution", score=0.0, error=_describe(exc), error_in="solution")
    try:
        value = validate(fn)
    except BaseException as exc:
        return dict(phase="validate", score=0.0, error=_describe(exc), error_in=_origin(exc))
    try:
        checks, score = _checks(value)
    except BaseException as exc:
        checks, score = None, None
    if checks is None and score is None:
        what = "validate returned %s, not checks" % type(value).__name__
        return dict(phase="verdict", score=None, error=what, error_in="validator")
    if checks is not None:
        score = sum(checks) / len(checks)
    return dict(phase="done", score=score, checks=checks or [], error="", error_in="")


nonce = sys.stdin.readline().strip()
verdict_fd = os.dup(1)
os.dup2(2, 1)  # the programs' own prints go to stderr: stdout carries only the verdict line
line = nonce + json.dumps(_verdict()) + "\n"
os.write(verdict_fd, line.encode())
os._exit(0)  # no atexit hooks or lingering threads of the programs after the verdict
'''


class CheckRun(BaseModel):
    """One validator run on one solution."""

    validator_id: str
    solution_id: str
    score: float | None  # fraction of checks passed; None = the validator is at fault
    checks: list[bool] = Field(default_factory=list)
    error: str = ""
    error_in: str = ""  # validator | solution | harness | sandbox | timeout | "" (no error)
    isolation: str = ""


def harness(entry: str) -> str:
    return _HARNESS.replace("{entry!r}", repr(entry))


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
    try:
        data = json.loads(line[len(nonce) :])
    except ValueError:
        run.error, run.error_in = "unreadable verdict", "harness"
        return run
    score = data.get("score")
    run.score = float(score) if isinstance(score, int | float) else None
    run.checks = [bool(c) for c in data.get("checks") or []]
    run.error, run.error_in = str(data.get("error", "")), str(data.get("error_in", ""))
    return run


async def check(
    entry: str,
    validator_id: str,
    validator_code: str,
    solution_id: str,
    solution_code: str,
    limits: SandboxLimits,
) -> tuple[CheckRun, SandboxResult | None]:
    """Run one validator on one solution in the sandbox; a sandbox failure is a missing result."""
    nonce = "RSI-VERDICT-" + secrets.token_hex(12) + ":"
    try:
        result = await arun_python(
            harness(entry),
            stdin=nonce + "\n",
            limits=limits,
            files={"validator.py": validator_code, "solution.py": solution_code},
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
) -> list[CheckRun]:
    """Every validator on every solution, `concurrency` sandboxes at a time; each run is logged."""
    sem = asyncio.Semaphore(concurrency)

    async def one(vid: str, sid: str) -> CheckRun:
        async with sem:
            run, result = await check(entry, vid, validators[vid], sid, solutions[sid], limits)
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
