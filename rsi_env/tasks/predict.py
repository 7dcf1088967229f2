"""Output prediction (CRUXEval-style): the model writes short programs and a question about what they
print; other samples predict the output without running anything.

Filter (every program, before it can become a task):
1. static, on the syntax tree (never run): no imports of I/O, network, clocks, randomness, processes or
   interpreter internals, and no `open`/`input`/`eval`/`exec`/`__import__`...;
2. dynamic, in the sandbox under a time limit: two runs with the sandbox's fixed hash seed must print the
   same, non-empty, short output and exit 0 (catches object addresses, set order, leftover clocks), and a
   third run with another hash seed must print it too - output that depends on the hash seed (the order
   of a set of strings) is determined by the sandbox but not predictable by a reader.
The ground truth is the sandbox's stdout. Predictions are scored by normalised exact match
(`normalise_output`), never by executing them.
Rows: correct vs incorrect predictions (same prompt), better vs worse programs (judges: interesting,
non-trivial, unambiguous; a program the filter rejected ranks below the ones it kept).
"""

from __future__ import annotations

import ast
import asyncio
import re
from typing import Any

from pydantic import BaseModel, Field

from ..prefs.candidates import CandidateRecord, CandidateSet, set_id
from ..sandbox import SandboxError, SandboxLimits, SandboxResult
from .common import TaskContext, as_messages, judge_set, sample_k, sandbox_summary
from .programs import run_program
from .registry import Option, TaskFamily, register

SOURCE = "predict"
LEVELS = ("program", "prediction")  # the kinds of candidate set it makes
PROGRAM_TOKENS = 400
PREDICTION_TOKENS = 200
MAX_LINES = 40
MAX_OUTPUT_CHARS = 400
MAX_OUTPUT_LINES = 20

# Modules whose use makes output depend on the world rather than the program text (or lets it escape).
FORBIDDEN_MODULES = frozenset(
    """
    random secrets uuid time datetime zoneinfo calendar timeit sched
    os sys io pathlib shutil tempfile glob fileinput filecmp linecache mmap sqlite3 dbm shelve pickle
    marshal zipfile tarfile gzip bz2 lzma zlib csv logging getpass platform locale sysconfig
    socket ssl http urllib ftplib smtplib poplib imaplib telnetlib xmlrpc socketserver asyncio select
    selectors webbrowser email mailbox
    subprocess multiprocessing threading _thread concurrent signal
    ctypes importlib gc inspect builtins resource faulthandler tracemalloc code codeop pdb runpy site
    atexit weakref posix nt pty tty termios fcntl grp pwd
    """.split()
)
FORBIDDEN_CALLS = frozenset(
    {
        "open",
        "input",
        "eval",
        "exec",
        "compile",
        "__import__",
        "breakpoint",
        "globals",
        "locals",
        "vars",
        "getattr",
        "setattr",
        "delattr",
        "memoryview",
        "exit",
        "quit",
        "help",
    }
    # Object addresses and object hashes: the allocator may repeat them run to run in the sandbox, but no
    # reader can predict them (`sorted(xs, key=id)` passed the dynamic check three times running).
    | {"id", "hash"}
)
# Harmless names a program may reuse for its own variables (`for id, x in ...`, `hash = hash * 31 + c`).
_SHADOWABLE = frozenset({"id", "hash"})

PROGRAM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "program": {"type": "string", "maxLength": 800},
        "question": {"type": "string", "maxLength": 300},
    },
    "required": ["program", "question"],
    "additionalProperties": False,
}
PREDICTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"output": {"type": "string"}},
    "required": ["output"],
    "additionalProperties": False,
}
PROGRAM_SYSTEM = "You write short Python puzzles that test careful reading of code."
PROGRAM_USER = (
    "Write a short, self-contained Python program (at most 20 lines, standard library only) whose output "
    "takes careful thought to predict: loops, string and list operations, dictionaries, recursion, "
    "arithmetic. No input, files, network, randomness or time; it must print the same thing every run, "
    "and little (a few short lines). Add a question asking what it prints.\n"
    "Answer with JSON: program (the code), question.\n"
    'Format: {"program": "nums = [4, 1, 3]\\nprint(sorted(nums)[1] * 2)", '
    '"question": "What does this program print?"}'
)
PREDICT_SYSTEM = "You predict exactly what Python programs print, without running them."
PREDICT_USER = (
    "```python\n{program}\n```\n{question}\n"
    "Answer with JSON: output = exactly what the program prints (every line, nothing else)."
)


class FilterVerdict(BaseModel):
    kept: bool
    reason: str = ""
    stdout: str = ""  # the ground truth when kept
    runs: list[dict[str, Any]] = Field(default_factory=list)  # sandbox summaries


class Program(BaseModel):
    id: str
    source: str
    question: str
    raw: str
    verdict: FilterVerdict | None = None


class Prediction(BaseModel):
    id: str
    program_id: str
    raw: str
    output: str
    correct: bool


class PredictTask(BaseModel):
    """A kept program, its question and the true output: one task of `PredictEnv`."""

    id: str
    source: str
    question: str
    expected: str


# ---------------------------------------------------------------------------------------------------
# The filter
# ---------------------------------------------------------------------------------------------------
def static_problem(source: str) -> str:
    """Why `source` cannot be an output-prediction program, judged from its syntax tree alone; "" if fine."""
    if not source.strip():
        return "empty program"
    if len(source.splitlines()) > MAX_LINES:
        return f"longer than {MAX_LINES} lines"
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return f"syntax error: {exc.msg} (line {exc.lineno})"
    own = _bound_names(tree) & _SHADOWABLE
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level:
                return "relative import"
            for name in names:
                top = name.split(".")[0]
                if top in FORBIDDEN_MODULES or top.startswith("_"):
                    return f"forbidden import: {top}"
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_CALLS and node.id not in own:
            return f"forbidden builtin: {node.id}"
        elif isinstance(node, ast.Name) and node.id.startswith("__") and node.id != "__name__":
            return f"forbidden name: {node.id}"  # __builtins__, __loader__...: the way around the rules
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr not in _DUNDER_OK:
            return f"forbidden attribute: {node.attr}"
    if not any(isinstance(n, ast.Name) and n.id == "print" for n in ast.walk(tree)):
        return "never prints"
    return ""


def _bound_names(tree: ast.AST) -> set[str]:
    """Names the program binds itself: assignment and loop targets, parameters, functions, classes."""
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    names |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    return names


# Dunders that are ordinary in small programs; the rest (__class__, __subclasses__, __globals__...)
# are how code reaches the interpreter's internals.
_DUNDER_OK = frozenset({"__init__", "__name__", "__doc__", "__len__", "__repr__", "__str__", "__eq__"})

_HASH_WRAPPER = r"""
import os, sys
env = dict(os.environ, PYTHONHASHSEED={seed!r})
os.execve(sys.executable, [sys.executable, "-s", "-P", "program.py"], env)
"""


async def _run(source: str, limits: SandboxLimits, hash_seed: str | None, ray: str | None) -> SandboxResult:
    if hash_seed is None:
        return await run_program(source, limits=limits, ray=ray)
    # A trusted two-line launcher re-executes the program with another hash seed (the sandbox fixes 0).
    wrapper = _HASH_WRAPPER.replace("{seed!r}", repr(hash_seed))
    return await run_program(wrapper, limits=limits, files={"program.py": source}, ray=ray)


async def check_program(
    source: str, limits: SandboxLimits | None = None, *, hash_check: bool = True, ray: str | None = None
) -> FilterVerdict:
    """The whole filter: static checks, then two sandbox runs (same output) and one with another hash seed."""
    problem = static_problem(source)
    if problem:
        return FilterVerdict(kept=False, reason=problem)
    return await check_determinism(source, limits, hash_check=hash_check, ray=ray)


async def check_determinism(
    source: str, limits: SandboxLimits | None = None, *, hash_check: bool = True, ray: str | None = None
) -> FilterVerdict:
    """The dynamic half of the filter alone (no static checks): what running the program shows."""
    limits = limits or SandboxLimits(timeout_s=3.0, memory_mb=256)
    verdict = FilterVerdict(kept=False)
    outputs: list[str] = []
    seeds: list[str | None] = [None, None] + (["12345"] if hash_check else [])
    for i, seed in enumerate(seeds):
        try:
            res = await _run(source, limits, seed, ray)
        except SandboxError as exc:
            verdict.reason = f"sandbox error: {exc}"[:300]
            return verdict
        verdict.runs.append(sandbox_summary(res) or {})
        if res.timed_out or res.killed_by:
            verdict.reason = f"too slow or too big (killed by {res.killed_by or 'timeout'})"
            return verdict
        if res.exit_code != 0:
            last = (res.stderr.strip().splitlines() or ["?"])[-1]
            verdict.reason = f"exits with {res.exit_code}: {last[:200]}"
            return verdict
        if res.stdout_truncated:
            verdict.reason = "prints too much"
            return verdict
        outputs.append(res.stdout)
        if i == 1 and outputs[1] != outputs[0]:
            verdict.reason = "nondeterministic: prints differently run to run"
            return verdict
        if i == 2 and outputs[2] != outputs[0]:
            verdict.reason = "output depends on the hash seed (e.g. the order of a set of strings)"
            return verdict
    out = outputs[0]
    if not normalise_output(out):
        verdict.reason = "prints nothing"
    elif len(out) > MAX_OUTPUT_CHARS or len(out.splitlines()) > MAX_OUTPUT_LINES:
        verdict.reason = f"output too long to predict ({len(out)} chars, {len(out.splitlines())} lines)"
    else:
        verdict.kept, verdict.stdout = True, out
    return verdict


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------
_ONE_FENCE = re.compile(r"^\s*```[A-Za-z0-9_+-]*[ \t]*\n(.*?)\n?[ \t]*```\s*$", re.DOTALL)


def normalise_output(text: str) -> str:
    """Output as compared: no surrounding code fence, \\n line ends, no trailing spaces, no blank lines at
    either end. Case, inner spaces and punctuation are kept: `True` vs `true` is a wrong answer."""
    m = _ONE_FENCE.match(text)
    if m:
        text = m.group(1)
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def exact_match(prediction: str, expected: str) -> bool:
    return normalise_output(prediction) == normalise_output(expected)


def prediction_text(raw: str, parsed: Any) -> str:
    """The predicted output of a reply: the JSON `output` field, or the reply itself."""
    if isinstance(parsed, dict) and isinstance(parsed.get("output"), str):
        return parsed["output"]
    return raw


# ---------------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------------
def program_messages() -> list[dict[str, str]]:
    return [{"role": "system", "content": PROGRAM_SYSTEM}, {"role": "user", "content": PROGRAM_USER}]


def predict_messages(source: str, question: str) -> list[dict[str, str]]:
    user = PREDICT_USER.format(program=source, question=question.strip() or "What does this program print?")
    return [{"role": "system", "content": PREDICT_SYSTEM}, {"role": "user", "content": user}]


async def run(
    ctx: TaskContext, *, n: int, k: int, limits: SandboxLimits
) -> tuple[list[CandidateSet], list[PredictTask]]:
    log = ctx.log
    prompt = program_messages()
    samples = await sample_k(
        ctx, prompt, n, stage="program", stage_seed=21, max_tokens=PROGRAM_TOKENS, schema=PROGRAM_SCHEMA
    )
    programs: list[Program] = []
    for s in samples:
        pid = f"p{s.index}"
        data = s.parsed if isinstance(s.parsed, dict) else {}
        if not s.ok or not isinstance(data.get("program"), str):
            log.item(
                "program",
                pid,
                False,
                s.why() if not s.ok else "call ok but the reply has no program",
                raw=s.text,
            )
            continue
        programs.append(
            Program(
                id=pid,
                source=_unfence(data["program"]),
                question=str(data.get("question", "")),
                raw=s.text or "",
            )
        )
    for p in programs:  # sequentially: three sandbox runs each, cheap next to a model call
        p.verdict = await check_program(p.source, limits, ray=ctx.ray)
        log.write(
            "filter", program_id=p.id, kept=p.verdict.kept, reason=p.verdict.reason, runs=p.verdict.runs
        )
        log.item(
            "program",
            p.id,
            p.verdict.kept,
            p.verdict.reason,
            source=p.source,
            question=p.question,
            expected=p.verdict.stdout,
        )
    kept = [p for p in programs if p.verdict and p.verdict.kept]
    sets: list[CandidateSet] = []
    if programs:
        sets.append(
            CandidateSet(
                set_id=set_id("", "programs"),
                task=SOURCE,
                level="program",
                item_id="programs",
                seed=ctx.seed,
                prompt=as_messages(prompt),
                candidates=[CandidateRecord(id=p.id, raw=p.raw, shown=_shown(p)) for p in programs],
                # the filter is procedural truth: kept programs rank above rejected ones
                truth={p.id: 1.0 if p.verdict and p.verdict.kept else 0.0 for p in programs},
                invalid=[p.id for p in programs if not (p.verdict and p.verdict.kept)],
            )
        )
    for i, p in enumerate(kept):
        sets.append(await _predictions(ctx, p, k, stage_seed=100 * (i + 1)))
    # The rubric decides which sets the judges rank (the built-in one: the programs; predictions have
    # an exact truth).
    await asyncio.gather(*(judge_set(ctx, cs) for cs in sets))
    bank = [
        PredictTask(id=p.id, source=p.source, question=p.question, expected=p.verdict.stdout)
        for p in kept
        if p.verdict
    ]
    return sets, bank


async def _predictions(ctx: TaskContext, p: Program, k: int, stage_seed: int) -> CandidateSet:
    assert p.verdict is not None
    prompt = predict_messages(p.source, p.question)
    samples = await sample_k(
        ctx,
        prompt,
        k,
        stage="prediction",
        stage_seed=stage_seed,
        max_tokens=PREDICTION_TOKENS,
        schema=PREDICTION_SCHEMA,
    )
    preds: list[Prediction] = []
    for s in samples:
        qid = f"{p.id}-a{s.index}"
        if not s.ok:  # missing, not wrong
            ctx.log.item("prediction", qid, False, s.why(), program_id=p.id)
            continue
        out = prediction_text(s.text or "", s.parsed)
        pred = Prediction(
            id=qid, program_id=p.id, raw=s.text or "", output=out, correct=exact_match(out, p.verdict.stdout)
        )
        ctx.log.item("prediction", qid, True, "", program_id=p.id, output=out, correct=pred.correct)
        preds.append(pred)
    return CandidateSet(
        set_id=set_id(p.id, "predictions"),
        task=SOURCE,
        level="prediction",
        item_id=p.id,
        seed=ctx.seed,
        prompt=as_messages(prompt),
        candidates=[CandidateRecord(id=q.id, raw=q.raw, shown=q.output) for q in preds],
        truth={q.id: 1.0 if q.correct else 0.0 for q in preds},
    )


def _unfence(source: str) -> str:
    m = _ONE_FENCE.match(source)
    return m.group(1) if m else source


def _shown(p: Program) -> str:
    return f"```python\n{p.source}\n```\nQUESTION: {p.question}"


FAMILY = register(
    TaskFamily(
        name="predict",
        summary="programs that pass the determinism filter; predictions of what they print, by exact match",
        run=run,
        levels=LEVELS,
        rubric=SOURCE,
        options=(
            Option("n", 4, "programs", type=int, minimum=1),
            Option("k", 4, "predictions per kept program", type=int, minimum=1),
        ),
        sandbox=True,
        env="rsi_env.tasks.envs:PredictEnv",
    )
)
