"""Programming: the model writes real-world challenges, validators for them, and solutions.

1. N challenges from one prompt (domain, description, one function entry point; not interview puzzles).
2. Per challenge, V validators and K solutions, each from one prompt.
3. The sandbox runs every validator on every solution and on deliberately broken solutions
   (`validators.BROKEN_SOLUTIONS`): a validator's truth is its separation (best score on a model solution
   minus best score on a broken one), a solution's truth its pass rate weighted by that separation.
4. The panel ranks challenges (novelty, skills, solvability), validators (as code) and solutions (with the
   validators' results shown); the meta-referee weights the judges against the truths.
Rows: better vs worse challenge, validator, solution, and judges' rankings.
"""

from __future__ import annotations

import ast
import asyncio
import json
import keyword
import re
from typing import Any

from pydantic import BaseModel, Field

from ..prefs.candidates import CandidateRecord, CandidateSet, set_id
from ..sandbox import SandboxLimits
from .common import Sample, TaskContext, as_messages, extract_code, judge_set, sample_k
from .registry import Option, TaskFamily, register
from .validators import (
    UNUSABLE,
    CheckRun,
    broken_solutions,
    run_matrix,
    separation,
    solution_scores,
    tamper_signs,
)

SOURCE = "programming"
LEVELS = ("challenge", "validator", "solution")  # the kinds of candidate set it makes
CHALLENGE_TOKENS = 400
VALIDATOR_TOKENS = 700
SOLUTION_TOKENS = 700
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,59}$")

CHALLENGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "domain": {"type": "string", "maxLength": 60},
        "description": {"type": "string", "maxLength": 500},
        "entry_point": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "maxLength": 60},
        "signature": {"type": "string", "maxLength": 160},
    },
    "required": ["domain", "description", "entry_point", "signature"],
    "additionalProperties": False,
}

EXAMPLE_CHALLENGE = {
    "domain": "logistics",
    "description": "Given parcel weights in kg (a list of floats) and a truck capacity in kg, return how "
    "many trucks are needed when parcels are loaded in the given order and a new truck starts whenever the "
    "next parcel does not fit. An empty list needs 0 trucks; a parcel heavier than the capacity raises "
    "ValueError.",
    "entry_point": "count_trucks",
    "signature": "def count_trucks(weights: list[float], capacity: float) -> int",
}
CHALLENGE_SYSTEM = "You design programming tasks that working software engineers meet in real products."
CHALLENGE_USER = (
    "Invent one open-ended, real-world programming challenge: the kind of function an engineer writes for "
    "a product (parsing a log or file format, scheduling, pricing, text clean-up, units, dates, geometry, "
    "data validation, ...), not an interview puzzle. It is solved by a single Python function using only the "
    "standard library, with no files, network or user input.\n"
    "Answer with JSON: domain (a few words), description (what the function must do: inputs, outputs, edge "
    "cases), entry_point (the function's name), signature (one line: def name(args) -> type).\n"
    # A worked example rather than placeholders: small models copy placeholders ("function_name", "...")
    # literally. An answer that repeats the example is rejected (see parse_challenge).
    f"Example of the format (write a different challenge): {json.dumps(EXAMPLE_CHALLENGE)}"
)
VALIDATOR_SYSTEM = "You write evaluation code for programming challenges."
VALIDATOR_USER = (
    "{challenge}\n\n"
    "Write a validator in Python: a function `validate(fn)` that receives a candidate's `{entry}` function, "
    "calls it on inputs you choose and returns a list of booleans, one per check (True = passed). The "
    "function runs in another process: pass it plain data (numbers, strings, lists, dicts, tuples, sets, "
    "None, datetime, Decimal), not your own functions or classes. A good "
    "validator passes a correct solution and fails wrong ones, such as one that returns None or a constant. "
    "Only the standard library. Reply with the code in one ```python block."
)
SOLUTION_SYSTEM = "You are a careful Python engineer."
SOLUTION_USER = (
    "{challenge}\n\nWrite the function `{signature}` in Python, standard library only. "
    "Reply with the code in one ```python block."
)


class Challenge(BaseModel):
    id: str
    domain: str
    description: str
    entry_point: str
    signature: str
    raw: str

    def text(self) -> str:
        return f"CHALLENGE ({self.domain})\nFunction: {self.signature}\n{self.description}".strip()


class Validator(BaseModel):
    id: str
    challenge_id: str
    code: str
    raw: str
    separation: float | None = None


class Solution(BaseModel):
    id: str
    challenge_id: str
    code: str
    raw: str
    score: float | None = None  # separation-weighted validator pass rate
    tamper_signs: list[str] = Field(default_factory=list)


class ProgrammingTask(BaseModel):
    """A challenge and its validators that separate (score > 0): one task of `ProgrammingEnv`."""

    challenge: Challenge
    validators: list[Validator]


def challenge_messages() -> list[dict[str, str]]:
    return [{"role": "system", "content": CHALLENGE_SYSTEM}, {"role": "user", "content": CHALLENGE_USER}]


def validator_messages(c: Challenge) -> list[dict[str, str]]:
    user = VALIDATOR_USER.format(challenge=c.text(), entry=c.entry_point)
    return [{"role": "system", "content": VALIDATOR_SYSTEM}, {"role": "user", "content": user}]


def solution_messages(c: Challenge) -> list[dict[str, str]]:
    user = SOLUTION_USER.format(challenge=c.text(), signature=c.signature)
    return [{"role": "system", "content": SOLUTION_SYSTEM}, {"role": "user", "content": user}]


def parse_challenge(cid: str, s: Sample) -> Challenge | str:
    """The challenge in a reply, or why there is none."""
    if not s.ok:
        return s.why()
    data = s.parsed if isinstance(s.parsed, dict) else {}
    entry = str(data.get("entry_point", "")).strip()
    if entry.startswith("def "):
        entry = entry[4:].split("(", 1)[0].strip()
    if not _IDENT.match(entry) or keyword.iskeyword(entry):
        return f"entry point {entry[:40]!r} is not a Python function name"
    desc = str(data.get("description", "")).strip()
    if len(desc) < 20:
        return "description too short to solve"
    if entry == EXAMPLE_CHALLENGE["entry_point"] or desc == EXAMPLE_CHALLENGE["description"]:
        return "repeats the prompt's example"
    signature = str(data.get("signature", "")).strip()
    if entry not in signature:
        signature = f"def {entry}(...)"  # the name is what matters to the harness; keep the prompt coherent
    return Challenge(
        id=cid,
        domain=str(data.get("domain", "")).strip()[:60] or "general",
        description=desc,
        entry_point=entry,
        signature=signature,
        raw=s.text or "",
    )


def code_problem(code: str, *, needs: str) -> str:
    """Why `code` cannot be a validator/solution (parsed, never run here), or ""."""
    if not code.strip():
        return "no code in the reply"
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return f"syntax error: {exc.msg} (line {exc.lineno})"
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return "" if needs in defined else f"defines no function {needs}"


async def run(
    ctx: TaskContext,
    *,
    n: int,
    k: int,
    validators: int,
    limits: SandboxLimits,
    sandbox_concurrency: int = 2,
) -> tuple[list[CandidateSet], list[ProgrammingTask]]:
    log = ctx.log
    prompt = challenge_messages()
    samples = await sample_k(
        ctx, prompt, n, stage="challenge", stage_seed=11, max_tokens=CHALLENGE_TOKENS, schema=CHALLENGE_SCHEMA
    )
    challenges: list[Challenge] = []
    # Replies that came back but are no challenge (a copy of the example, no usable entry point): they
    # answer the same prompt, so they stay in the set as the rejected side, never the chosen one.
    unusable: list[CandidateRecord] = []
    for s in samples:
        cid = f"ch{s.index}"
        got = parse_challenge(cid, s)
        if isinstance(got, str):
            log.item("challenge", cid, False, got, raw=s.text)
            if s.ok and (s.text or "").strip():
                unusable.append(CandidateRecord(id=cid, raw=s.text or "", shown=(s.text or "")[:2000]))
            continue
        log.item("challenge", cid, True, challenge=got)
        challenges.append(got)
    sets: list[CandidateSet] = []
    candidates = [CandidateRecord(id=c.id, raw=c.raw, shown=c.text()) for c in challenges] + unusable
    if challenges and len(candidates) >= 2:
        sets.append(
            CandidateSet(
                set_id=set_id("", "challenges"),
                task=SOURCE,
                level="challenge",
                item_id="challenges",
                seed=ctx.seed,
                prompt=as_messages(prompt),
                candidates=candidates,
                truth={c.id: 1.0 for c in challenges} | {c.id: 0.0 for c in unusable},
                invalid=[c.id for c in unusable],
            )
        )
    bank: list[ProgrammingTask] = []
    for c in challenges:  # one at a time: the sandbox and a local model are the bottleneck anyway
        c_sets, task = await _challenge(ctx, c, k, validators, limits, sandbox_concurrency)
        sets += c_sets
        if task is not None:
            bank.append(task)
    await asyncio.gather(*(judge_set(ctx, cs) for cs in sets))
    return sets, bank


async def _challenge(
    ctx: TaskContext, c: Challenge, k: int, n_validators: int, limits: SandboxLimits, sandbox_concurrency: int
) -> tuple[list[CandidateSet], ProgrammingTask | None]:
    log = ctx.log
    v_prompt, s_prompt = validator_messages(c), solution_messages(c)
    seed = 1000 * (int(c.id[2:]) + 1)
    v_samples, s_samples = await asyncio.gather(
        sample_k(
            ctx, v_prompt, n_validators, stage="validator", stage_seed=seed + 1, max_tokens=VALIDATOR_TOKENS
        ),
        sample_k(ctx, s_prompt, k, stage="solution", stage_seed=seed + 2, max_tokens=SOLUTION_TOKENS),
    )
    vals: list[Validator] = []
    for s in v_samples:
        vid = f"{c.id}-v{s.index}"
        if not s.ok:  # a failed call is missing, never a bad validator
            log.item("validator", vid, False, s.why(), challenge_id=c.id)
            continue
        vals.append(Validator(id=vid, challenge_id=c.id, code=extract_code(s.text or ""), raw=s.text or ""))
    sols: list[Solution] = []
    for s in s_samples:
        sid = f"{c.id}-s{s.index}"
        if not s.ok:
            log.item("solution", sid, False, s.why(), challenge_id=c.id)
            continue
        code = extract_code(s.text or "")
        sols.append(
            Solution(id=sid, challenge_id=c.id, code=code, raw=s.text or "", tamper_signs=tamper_signs(code))
        )
    broken = broken_solutions(c.entry_point)
    runs: list[CheckRun] = []
    if vals:
        runs = await run_matrix(
            c.entry_point,
            {v.id: v.code for v in vals},
            {**{s.id: s.code for s in sols}, **broken},
            limits,
            log=log,
            concurrency=sandbox_concurrency,
            item_id=c.id,
            ray=ctx.ray,
        )
    model_ids = {s.id for s in sols}
    for v in vals:
        v.separation = separation(runs, v.id, model_ids, set(broken))
        problem = code_problem(v.code, needs="validate")
        if v.separation == UNUSABLE:
            reason = "unusable: " + (problem or _first_error(runs, v.id))
        elif v.separation is None:
            reason = "no model solution to compare with"
        elif v.separation <= 0:
            reason = f"does not separate (separation {v.separation:+.2f})"
        else:
            reason = ""
        log.item(
            "validator", v.id, not reason, reason, challenge_id=c.id, separation=v.separation, code=v.code
        )
    seps = {v.id: v.separation for v in vals}
    scores = solution_scores(runs, [s.id for s in sols], seps)
    unusable: list[str] = []
    for sol in sols:
        sol.score = scores[sol.id]
        # A solution that does not even define the function stays a candidate (a fine "rejected" side).
        problem = code_problem(sol.code, needs=c.entry_point)
        if problem:
            unusable.append(sol.id)
        log.item(
            "solution", sol.id, not problem, problem, challenge_id=c.id, score=sol.score,
            tamper=sol.tamper_signs,
        )  # fmt: skip
    sets = [
        CandidateSet(
            set_id=set_id(c.id, "validators"),
            task=SOURCE,
            level="validator",
            item_id=c.id,
            seed=ctx.seed,
            prompt=as_messages(v_prompt),
            context=c.text(),
            candidates=[CandidateRecord(id=v.id, raw=v.raw, shown=v.code) for v in vals],
            truth={v.id: v.separation for v in vals},
            invalid=[v.id for v in vals if v.separation == UNUSABLE],
        ),
        CandidateSet(
            set_id=set_id(c.id, "solutions"),
            task=SOURCE,
            level="solution",
            item_id=c.id,
            seed=ctx.seed,
            prompt=as_messages(s_prompt),
            context=c.text(),
            candidates=[
                CandidateRecord(id=s.id, raw=s.raw, shown=_solution_shown(s, vals, runs)) for s in sols
            ],
            truth=dict(scores),
            invalid=unusable,
        ),
    ]
    good = [v for v in vals if v.separation is not None and v.separation > 0]
    return [cs for cs in sets if cs.candidates], (
        ProgrammingTask(challenge=c, validators=good) if good else None
    )


def _first_error(runs: list[CheckRun], vid: str) -> str:
    return next((r.error for r in runs if r.validator_id == vid and r.error), "no verdict")


def _solution_shown(s: Solution, vals: list[Validator], runs: list[CheckRun]) -> str:
    lines = [s.code, "", "VALIDATOR RESULTS:"]
    for v in vals:
        r = next((r for r in runs if r.validator_id == v.id and r.solution_id == s.id), None)
        if r is None or r.score is None:
            lines.append(f"- {v.id}: validator broken ({(r.error if r else 'not run')[:120]})")
        elif r.error:
            lines.append(f"- {v.id}: failed ({r.error_in}: {r.error[:120]})")
        else:
            lines.append(
                f"- {v.id}: {sum(r.checks)}/{len(r.checks)} checks passed"
                if r.checks
                else f"- {v.id}: score {r.score:.2f}"
            )
    return "\n".join(lines)


FAMILY = register(
    TaskFamily(
        name="programming",
        summary="challenges, validators and solutions; the sandbox runs every validator on every solution",
        run=run,
        levels=LEVELS,
        rubric=SOURCE,
        options=(
            Option("n", 2, "challenges", type=int, minimum=1),
            Option("k", 4, "solutions per challenge", type=int, minimum=1),
            Option("validators", 3, "validators per challenge", type=int, minimum=1),
        ),
        sandbox=True,
        env="rsi_env.tasks.envs:ProgrammingEnv",
    )
)
