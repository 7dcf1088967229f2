"""What every task family shares: K samples of one prompt, the run log, judging a candidate set with the
panel, the meta-referee's weights, and preference rows in the games' format.

A family (programming, predict, trivia) produces `CandidateSet`s: replies of the model to one exact prompt
(so that any two of them can form a DPO pair), optionally a procedural truth per reply (validator pass
rate, exact match, ...) and the panel's rankings. `build_rows` turns the sets into rows with no model call.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, Field

from ..llm import Chat, Sampling
from ..prefs.branching import JudgeRecord
from ..prefs.rows import DPORow, Message, RowMeta, kto_rows, ranked_pairs, unleash, write_rows
from ..referees.aggregate import consensus, mean_agreement
from ..referees.judge import Candidate, Ranking
from ..referees.meta import MetaReport, assess, judge_pairs, meta_judge_scores
from ..sandbox import SandboxResult

_T = TypeVar("_T")

RUN_LOG = "run.jsonl"
SETS = "sets.jsonl"
BANK = "bank.jsonl"
JUDGES = "judges.json"
PREFS = "prefs.jsonl"
KTO = "kto.jsonl"
SEED_STRIDE = 104_729  # a prime: sample i of a stage gets seed + i * stride, distinct across stages


class Judge(Protocol):
    """The part of `LLMJudge` the tasks use."""

    id: str

    async def rank(
        self, set_id: str, question: str, candidates: list[Candidate], context: str = ""
    ) -> Ranking: ...


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
    log: RunLog = field(default_factory=lambda: RunLog(None))
    seed: int = 0
    max_tokens: int | None = None  # cap on every generation call (small for the embedded model)
    concurrency: int = 4
    unleashed: bool = False
    all_pairs: bool = False
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
# Candidate sets, judging, rows
# ---------------------------------------------------------------------------------------------------
class SetCandidate(BaseModel):
    id: str
    raw: str  # the model's completion: what a preference row pairs
    shown: str  # what judges see (e.g. the code plus its validator results)


class CandidateSet(BaseModel):
    """Replies to one exact prompt, their procedural truth (where one exists) and the panel's rankings."""

    set_id: str
    level: str  # challenge | validator | solution | program | prediction | question | answer
    item_id: str
    prompt: list[Message]
    question: str = ""  # what the judges were asked
    context: str = ""  # what the judges were shown before the candidates
    candidates: list[SetCandidate]
    truth: dict[str, float | None] = Field(default_factory=dict)
    # Candidates that failed a hard procedural check (a program the filter rejected, a validator that never
    # ran...): they can be the rejected side of a pair, never the chosen one, whatever the judges think.
    invalid: list[str] = Field(default_factory=list)
    judges: list[JudgeRecord] = Field(default_factory=list)

    def rankings(self) -> list[Ranking]:
        return [j.ranking(self.set_id) for j in self.judges]

    def has_truth(self) -> bool:
        return sum(v is not None for v in self.truth.values()) >= 2


async def judge_set(ctx: TaskContext, cs: CandidateSet) -> None:
    """Every judge ranks the set in one listwise call; each ranking (and its status) goes to the log."""
    if len(cs.candidates) < 2 or not ctx.judges or not cs.question:
        return
    cands = [Candidate(id=c.id, text=c.shown) for c in cs.candidates]
    rankings = await asyncio.gather(
        *(ctx.limited(j.rank(cs.set_id, cs.question, cands, cs.context)) for j in ctx.judges)
    )
    for r in rankings:
        cs.judges.append(JudgeRecord.of(r))
        ctx.log.write(
            "ranking",
            set_id=cs.set_id,
            level=cs.level,
            judge=r.judge,
            status=r.status,
            ok=r.ok,
            scores=r.scores,
            reasoning=r.reasoning,
            response=r.response,
        )


async def meta_scores(ctx: TaskContext, sets: list[CandidateSet]) -> dict[str, float] | None:
    """The LLM meta-judge scores the judges' rankings of a few sets (mean per judge)."""
    if ctx.meta_judge is None or len(ctx.judges) < 2:
        return None
    scores: dict[str, list[float]] = {}
    reviewed = 0
    for cs in sets:
        if reviewed >= ctx.meta_sets:
            break
        ok = [r for r in cs.rankings() if r.ok]
        if len(ok) < 2:
            continue
        reviewed += 1
        got = await ctx.limited(meta_judge_scores(ctx.meta_judge, cs.set_id, cs.question, ok))  # type: ignore[arg-type]
        ctx.log.write("meta_judge", set_id=cs.set_id, scores=got)
        for judge, s in got.items():
            scores.setdefault(judge, []).append(s)
    return {j: statistics.fmean(v) for j, v in scores.items()} or None


class BuildResult(BaseModel):
    rows: list[DPORow]
    meta: MetaReport
    sets: int
    sets_with_pairs: int


def build_rows(
    sets: list[CandidateSet],
    *,
    source: str,
    seed: int = -1,
    unleashed: bool = False,
    all_pairs: bool = False,
    meta_scores: dict[str, float] | None = None,
) -> BuildResult:
    """Rank each set by a weighted Bradley–Terry consensus of its truth (weight 1) and the judges (weights
    from the meta-referee over the whole run); pair best vs worst (or every ordered pair). The judges' own
    better-vs-worse rankings of the same set become `ranking` rows."""
    rankings = {cs.set_id: cs.rankings() for cs in sets if cs.judges}
    truth = {cs.set_id: dict(cs.truth) for cs in sets if cs.has_truth()}
    meta = assess(rankings, truth, meta_scores)
    weights = {r.judge: r.weight for r in meta.judges}
    rows: list[DPORow] = []
    with_pairs = 0
    for cs in sets:
        new = _set_pairs(cs, truth.get(cs.set_id), weights, source, seed, unleashed, all_pairs)
        with_pairs += bool(new)
        rows += new
    for r in judge_pairs(rankings, truth, task=source):
        rows.append(r.model_copy(update={"source": source, "level": "ranking", "seed": seed}))
    return BuildResult(rows=rows, meta=meta, sets=len(sets), sets_with_pairs=with_pairs)


def _set_pairs(
    cs: CandidateSet,
    truth: dict[str, float | None] | None,
    weights: dict[str, float],
    source: str,
    seed: int,
    unleashed: bool,
    all_pairs: bool,
) -> list[DPORow]:
    ids = [c.id for c in cs.candidates]
    if len(ids) < 2:
        return []
    score_maps: list[dict[str, float | None]] = []
    w: list[float] = []
    if truth is not None:
        score_maps.append({c: truth.get(c) for c in ids})
        w.append(1.0)
    for r in cs.rankings():
        if r.ok:
            score_maps.append({c: r.scores.get(c) for c in ids})
            w.append(weights.get(r.judge, 0.5))
    if not score_maps:
        return []
    strength = consensus(score_maps, w)
    meta = RowMeta(
        source=source,
        task=source,
        level=cs.level,
        episode_id=cs.item_id,
        seed=seed,
        judge_agreement=mean_agreement(score_maps),
    )
    return ranked_pairs(
        unleash(cs.prompt) if unleashed else list(cs.prompt),
        {c.id: c.raw for c in cs.candidates},
        strength,
        meta,
        all_pairs=all_pairs,
        unchoosable=set(cs.invalid),
    )


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
    n = write_rows(prefs, result.rows)
    kto_path = prefs.with_name(KTO)  # beside the DPO rows, as `prefs build` does
    nk = write_rows(kto_path, kto_rows(result.rows))
    nb = write_rows(out_dir / BANK, bank)
    (out_dir / JUDGES).write_text(result.meta.model_dump_json(indent=2), encoding="utf-8")
    levels = Counter(r.level for r in result.rows)
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
