"""The meta-referee: ranks the judges' rankings, weights the judges, and makes judge preference pairs.

For every judge it measures, across candidate sets:
- agreement with procedural ground truth where the set has one (Kendall τ-b vs e.g. payoffs);
- agreement with the consensus of the *other* judges (leave-one-out weighted Bradley–Terry);
- transitivity of its pairwise preferences (cycles found with networkx);
- optionally, an LLM meta-judge's score of its rankings and rationales.
These become a weight in [0.01, 1]; a judge that inverts the truth or disagrees with everyone
ends with the lowest weight. The run's judge reliability table is this module's output.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel
from rich.table import Table

from .aggregate import Scores, consensus, preference_cycles, tau
from .judge import Candidate, Ranking
from .rubric import HOLISTIC, Criteria

MIN_WEIGHT = 0.01


class Ranker(Protocol):
    """What ranking candidate sets needs of a judge (`LLMJudge` is one; tests use doubles)."""

    id: str

    async def rank(
        self,
        set_id: str,
        question: str,
        candidates: list[Candidate],
        context: str = "",
        criteria: Criteria = HOLISTIC,
    ) -> Ranking: ...

    async def rank_pairwise(
        self, set_id: str, question: str, candidates: list[Candidate], context: str = ""
    ) -> Ranking: ...


class JudgeReliability(BaseModel):
    judge: str
    sets: int = 0
    missing: int = 0
    tau_truth: float | None = None
    tau_consensus: float | None = None
    cycles: int = 0
    cyclic: bool = False
    meta_score: float | None = None
    weight: float = 1.0


class MetaReport(BaseModel):
    judges: list[JudgeReliability]
    consensus: dict[str, dict[str, float]]  # set -> candidate -> strength
    agreement: dict[str, float | None]  # set -> mean pairwise τ between judges


@dataclass
class _Tally:
    """One judge's measurements across sets, gathered by `assess`."""

    truth: list[float | None] = field(default_factory=list)  # τ with the procedural truth, per set
    cons: list[float | None] = field(default_factory=list)  # τ with the other judges' consensus, per set
    cycles: int = 0
    sets: int = 0
    missing: int = 0


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def assess(
    rankings: dict[str, list[Ranking]],
    truth: dict[str, Scores] | None = None,
    meta_scores: dict[str, float] | None = None,
) -> MetaReport:
    """Judge reliability from rankings grouped by candidate set (set id -> one ranking per judge)."""
    truth = truth or {}
    judges = sorted({r.judge for rs in rankings.values() for r in rs})
    per = {j: _Tally() for j in judges}
    for set_id, rs in rankings.items():
        ok = [r for r in rs if r.ok]
        for r in rs:
            if r.ok:
                per[r.judge].sets += 1
            else:
                per[r.judge].missing += 1
            per[r.judge].cycles += len(preference_cycles(r.pairwise))
        for r in ok:
            if set_id in truth:
                per[r.judge].truth.append(tau(r.scores, truth[set_id]))
            others = [o.scores for o in ok if o.judge != r.judge]
            if others:
                per[r.judge].cons.append(tau(r.scores, consensus(others)))
    table = []
    for j in judges:
        d = per[j]
        rel = JudgeReliability(
            judge=j,
            sets=d.sets,
            missing=d.missing,
            tau_truth=_mean(d.truth),
            tau_consensus=_mean(d.cons),
            cycles=d.cycles,
            cyclic=d.cycles > 0,
            meta_score=(meta_scores or {}).get(j),
        )
        rel.weight = weight(rel)
        table.append(rel)
    w = {r.judge: r.weight for r in table}
    cons: dict[str, dict[str, float]] = {}
    agreement: dict[str, float | None] = {}
    for set_id, rs in rankings.items():
        ok = [r for r in rs if r.ok]
        if ok:
            cons[set_id] = consensus([r.scores for r in ok], [w[r.judge] for r in ok])
        pairs = [tau(a.scores, b.scores) for i, a in enumerate(ok) for b in ok[i + 1 :]]
        agreement[set_id] = _mean(pairs)
    return MetaReport(judges=table, consensus=cons, agreement=agreement)


def weight(rel: JudgeReliability) -> float:
    """Map a judge's measurements to a weight: agreement terms in [0, 1], penalties multiply.

    Agreement counts above chance only (τ ≤ 0 earns nothing): mapping τ linearly to [0, 1] gave a
    coin-flipping judge half a perfect judge's weight, so two of them outvoted one good judge (the
    judge benchmark, `python -m rsi_env.referees bench`, measures the weighted panel against that)."""
    parts = [max(0.0, t) for t in (rel.tau_truth, rel.tau_consensus) if t is not None]
    w = statistics.fmean(parts) if parts else 0.5
    if rel.cyclic:
        w *= 0.5
    if rel.meta_score is not None:
        w *= 0.5 + rel.meta_score / 20  # a 0..10 meta score scales by 0.5..1
    total = rel.sets + rel.missing
    if total:
        w *= rel.sets / total
    return max(MIN_WEIGHT, min(1.0, w))


async def meta_judge_scores(
    meta: Ranker, set_id: str, question: str, rankings: list[Ranking]
) -> dict[str, float]:
    """An LLM meta-judge scores each judge's ranking (order and rationales) of one set."""
    cands = []
    for i, r in enumerate(rankings):
        lines = [f"{c}: score {r.scores[c]} — {r.reasoning.get(c, '')}" for c in r.order()]
        cands.append(Candidate(id=f"J{i + 1}", text="\n".join(lines)))
    q = (
        f"Several judges ranked the same candidates for this question:\n{question}\n"
        "Which judgements are most sound?"
    )
    got = await meta.rank(f"meta:{set_id}", q, cands)
    return {
        r.judge: s for r, s in zip(rankings, (got.scores[c.id] for c in cands), strict=True) if s is not None
    }


def reliability_table(report: MetaReport) -> Table:
    t = Table(title="Judge reliability (meta-referee)")
    for col in ("judge", "sets", "missing", "τ truth", "τ consensus", "cycles", "meta", "weight"):
        t.add_column(col, justify="right" if col != "judge" else "left")

    def f(x: float | None) -> str:
        return "—" if x is None else f"{x:+.2f}"

    for r in sorted(report.judges, key=lambda r: -r.weight):
        t.add_row(
            r.judge,
            str(r.sets),
            str(r.missing),
            f(r.tau_truth),
            f(r.tau_consensus),
            f"{r.cycles}{' ⚠' if r.cyclic else ''}",
            "—" if r.meta_score is None else f"{r.meta_score:.1f}",
            f"{r.weight:.2f}",
        )
    return t
