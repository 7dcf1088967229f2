"""What every task family shares: K samples of one prompt, the run log, and the family's side of the one
preference path (`prefs.ranking`: judge a set, the meta-judge's review, build rows).

A family (programming, predict, trivia) produces `CandidateSet`s (`prefs.candidates`): replies of the model
to one exact prompt (so that any two of them can form a DPO pair), optionally a procedural truth per reply
(validator pass rate, exact match, ...) and the panel's rankings, asked with the questions of the run's
rubric (by default the family's own, `referees/<family>.yaml`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from ..llm import Chat, Sampling
from ..prefs import ranking
from ..prefs.candidates import CandidateSet
from ..prefs.ranking import BuildResult
from ..prefs.rows import DPORow, Message, kto_rows, write_rows
from ..referees.meta import Ranker
from ..referees.rubric import Rubric, RubricError, load_rubric
from ..sandbox import SandboxResult

_T = TypeVar("_T")

RUN_LOG = "run.jsonl"
SETS = "sets.jsonl"
BANK = "bank.jsonl"
JUDGES = "judges.json"
PREFS = "prefs.jsonl"
KTO = "kto.jsonl"
SEED_STRIDE = 104_729  # a prime: sample i of a stage gets seed + i * stride, distinct across stages


Judge = Ranker  # the part of `LLMJudge` the tasks use (the name `tasks.envs` imports)


# ---------------------------------------------------------------------------------------------------
# The run log
# ---------------------------------------------------------------------------------------------------
class RunLog:
    """JSONL, one event per line, flushed as it goes: every item, sandbox run, ranking and drop."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("", encoding="utf-8")

    def write(self, kind: str, **data: Any) -> None:
        event = {"t": round(time.time(), 3), "kind": kind, **data}
        self.events.append(event)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event, default=_jsonable, ensure_ascii=False) + "\n")

    def item(self, level: str, item_id: str, kept: bool, reason: str = "", **data: Any) -> None:
        """One generated item's fate: kept, or dropped and why (the reason is the report's key)."""
        self.write("item", level=level, item_id=item_id, kept=kept, reason=reason, **data)

    def outcomes(self) -> dict[str, Counter[str]]:
        """level -> Counter of "kept" / drop reasons, from the item events so far."""
        out: dict[str, Counter[str]] = {}
        for e in self.events:
            if e["kind"] == "item":
                out.setdefault(e["level"], Counter())["kept" if e["kept"] else e["reason"]] += 1
        return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, BaseModel):
        return x.model_dump(mode="json")
    return str(x)


def sandbox_summary(result: SandboxResult | None) -> dict[str, Any] | None:
    """What the log keeps of a sandbox run: outcome, resources and the isolation it really had."""
    if result is None:
        return None
    return {
        "ok": result.ok,
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "killed_by": result.killed_by,
        "duration_s": result.duration_s,
        "stdout": result.stdout[-2000:],
        "stderr": result.stderr[-2000:],
        "isolation": result.isolation,
        "isolation_features": result.isolation_features,
    }


# ---------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------
class Sample(BaseModel):
    """One reply to a prompt. `text` is the raw completion (what rows are made of)."""

    index: int
    seed: int | None = None
    status: str
    text: str | None = None
    parsed: Any = None
    error: str | None = None
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.text and self.text.strip())

    def why(self) -> str:
        """Why this sample gave nothing (the drop reason in the run log); always starts with "call "."""
        if self.status == "ok":
            return "call ok but the reply is empty"
        return f"call {self.status}" + (f": {self.error}" if self.error else "")


@dataclass
class TaskContext:
    """Everything a family's pipeline needs; built by the CLI (or a test, with test doubles)."""

    client: Chat
    sampling: Sampling  # the generator profile's sampling; max_tokens is set per stage
    judges: list[Judge] = field(default_factory=list)
    meta_judge: Judge | None = None
    meta_sets: int = 3
    rubric: Rubric | None = None  # what judges are asked per level; None: the family's own rubric
    log: RunLog = field(default_factory=lambda: RunLog(None))
    seed: int = 0
    max_tokens: int | None = None  # cap on every generation call (small for the embedded model)
    concurrency: int = 4
    unleashed: bool = False
    all_pairs: bool = False
    ray: str | None = None  # run programs as Ray tasks on this cluster (`--ray`), else in this process
    _sem: asyncio.Semaphore | None = None

    def sampling_for(self, stage_tokens: int, seed: int | None) -> Sampling:
        cap = stage_tokens if self.max_tokens is None else min(stage_tokens, self.max_tokens)
        return self.sampling.model_copy(update={"max_tokens": cap, "seed": seed})

    async def limited(self, aw: Awaitable[_T]) -> _T:
        """Run one model call under the run's concurrency limit (made lazily: it binds to the loop)."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        async with self._sem:
            return await aw


async def sample_k(
    ctx: TaskContext,
    messages: list[dict[str, str]],
    k: int,
    *,
    stage: str,
    stage_seed: int,
    max_tokens: int,
    schema: dict[str, Any] | None = None,
) -> list[Sample]:
    """K replies to the identical `messages`, each with its own sampling seed; failures are kept as such."""

    async def one(i: int) -> Sample:
        seed = ctx.seed * 1_000_003 + stage_seed + i * SEED_STRIDE
        sampling = ctx.sampling_for(max_tokens, seed)
        res = await ctx.limited(
            ctx.client.chat(messages, schema=schema, schema_name=stage, sampling=sampling)
        )
        return Sample(
            index=i,
            seed=seed,
            status=str(res.record.status),
            text=res.text,
            parsed=res.parsed,
            error=res.record.error,
            latency_s=res.record.latency_s,
        )

    samples = await asyncio.gather(*(one(i) for i in range(k)))
    for s in samples:
        ctx.log.write(
            "call",
            stage=stage,
            index=s.index,
            seed=s.seed,
            status=s.status,
            error=s.error,
            latency_s=round(s.latency_s, 3),
            text=s.text,
        )
    return list(samples)


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)


def extract_code(text: str) -> str:
    """The program in a reply: the first ```python block (else the first fenced block), else the text.

    An unclosed fence (a reply cut off by max_tokens) still yields what was written after it.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    for lang, body in blocks:
        if lang in ("python", "py", "python3"):
            return body.strip("\n")
    if blocks:
        return blocks[0][1].strip("\n")
    return text.strip("\n")


# ---------------------------------------------------------------------------------------------------
# The family's side of the preference path
# ---------------------------------------------------------------------------------------------------
def check_rubric(rubric: Rubric, family: str, levels: Iterable[str]) -> None:
    """A RubricError unless the rubric ranks at least one of the family's levels (with questions that
    use only the names a set has); levels it does not rank keep their procedural truth alone."""
    ranked = [lv for lv in levels if lv in rubric.ranking]
    if not ranked:
        raise RubricError(
            f"rubric {rubric.id!r} ranks none of {family}'s levels ({', '.join(levels)}); "
            f"it ranks: {', '.join(rubric.ranking) or 'nothing'}"
        )
    for lv in ranked:
        rubric.criteria(lv).check(CandidateSet.FIELDS)


async def judge_set(ctx: TaskContext, cs: CandidateSet) -> None:
    """The panel ranks the set, if the run's rubric ranks its level; each ranking goes to the log."""
    rubric = ctx.rubric or load_rubric(cs.task)  # by default the family's own
    if cs.level not in rubric.ranking:
        return
    await ranking.judge_set(cs, ctx.judges, rubric.criteria(cs.level), limit=ctx.limited)
    for j in cs.judges:
        r = j.ranking(cs.set_id)
        ctx.log.write(
            "ranking", set_id=cs.set_id, level=cs.level, judge=r.judge, status=r.status, ok=r.ok,
            scores=r.scores, reasoning=r.reasoning, response=r.response,
        )  # fmt: skip


async def meta_scores(ctx: TaskContext, sets: list[CandidateSet]) -> dict[str, float] | None:
    """The LLM meta-judge scores the judges' rankings of a few sets (mean per judge), each review logged."""
    if ctx.meta_judge is None:
        return None
    reviews = await ranking.review_judges(ctx.meta_judge, sets, ctx.meta_sets, limit=ctx.limited)
    for set_id, scores in reviews.items():
        ctx.log.write("meta_judge", set_id=set_id, scores=scores)
    return ranking.mean_scores(reviews) or None


def all_rows(result: BuildResult) -> list[DPORow]:
    """A task run's rows: the candidates' pairs, then the judges' own pairs as `ranking` rows of the family
    (a games run writes those to a file of their own)."""
    judged = [r.model_copy(update={"source": r.task, "level": "ranking"}) for r in result.judge_rows]
    return [*result.rows, *judged]


def write_outputs(
    out_dir: Path,
    sets: list[CandidateSet],
    result: BuildResult,
    *,
    prefs_path: Path | None = None,
    bank: Iterable[BaseModel] = (),
) -> dict[str, Any]:
    """Write sets.jsonl (all a rebuild needs), prefs.jsonl + kto.jsonl, judges.json and bank.jsonl."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_rows(out_dir / SETS, sets)
    prefs = prefs_path or out_dir / PREFS
    rows = all_rows(result)
    n = write_rows(prefs, rows)
    kto_path = prefs.with_name(KTO)  # beside the DPO rows, as `prefs build` does
    nk = write_rows(kto_path, kto_rows(rows))
    nb = write_rows(out_dir / BANK, bank)
    (out_dir / JUDGES).write_text(result.meta.model_dump_json(indent=2), encoding="utf-8")
    levels = Counter(r.level for r in rows)
    return {
        "prefs": str(prefs),
        "rows": n,
        "kto": str(kto_path),
        "kto_rows": nk,
        "bank": nb,
        "rows_by_level": dict(levels),
    }


def as_messages(messages: list[dict[str, str]]) -> list[Message]:
    return [Message(**m) for m in messages]  # type: ignore[arg-type]


def run_blocking(coro: Any) -> Any:
    """Run a coroutine to completion from synchronous code (a Gymnasium `step`), even inside a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name="rsi-tasks")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
