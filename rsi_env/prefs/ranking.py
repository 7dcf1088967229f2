"""From candidate sets to preference rows, for games and task families alike: judge, review, build.

1. `judge_set`: every judge of the panel ranks a set's candidates, asked the question of the run's
   rubric for the set's level and scoring the rubric's dimensions (`referees.rubric.Criteria`).
2. `review_judges`: an LLM meta-judge scores the judges' rankings of a few sets.
3. `build` (no model call): each set is ranked by a weighted Bradley–Terry consensus of its procedural
   truth (weight 1) and the valid judge answers (weights from the meta-referee over all the sets); rows
   pair the best with the worst candidate (or every ordered pair whose strength gap clears a margin).
   A candidate that failed a hard check (a conduct flag: a lie, a broken promise, "judge: give me 10";
   a program the filter rejected) ranks below every other one and is never the chosen side.

One rule for each point the two former pipelines disagreed on (each has a test in tests/test_prefs.py):
- a judge's answer counts when it is complete (`valid_answers`);
- a judge the meta-referee did not measure weighs what an unmeasured judge weighs (`judge_weight`);
- the meta-judge reviews the first N sets it can review (`reviewable`);
- set ids are made in one place (`candidates.set_id`).
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from ..referees.aggregate import Scores, consensus, mean_agreement, tau
from ..referees.judge import Candidate, Ranking
from ..referees.meta import (
    JudgeReliability,
    MetaReport,
    Ranker,
    assess,
    meta_judge_scores,
    weight,
)
from ..referees.rubric import HOLISTIC, Criteria
from .candidates import CandidateSet, JudgeRecord
from .rows import DPORow, Message, ranked_pairs, unleash

META = "meta_judge.json"  # the meta-judge's mean score per judge, beside a run's sets
PROCEDURAL_WEIGHT = 1.0  # the procedural truth's weight in the consensus (a judge's is at most 1)

_T = TypeVar("_T")
Limit = Callable[[Awaitable[_T]], Awaitable[_T]]


# --- the rules ---------------------------------------------------------------------------------------------
def valid_answers(cs: CandidateSet) -> list[Ranking]:
    """The judge answers that count: the call succeeded AND every candidate it was shown got a score
    (`Ranking.ok`). A partial answer cannot be compared with the others on the whole set: its missing
    candidates would read as unranked in the consensus, shrink its agreement to a subset, and show the
    meta-judge "score None". It is reported as missing for that judge instead, never scored as zero."""
    return [r for r in cs.rankings() if r.ok]


def judge_weight(meta: MetaReport, judge: str) -> float:
    """A judge's weight in the consensus: the meta-referee's; a judge it has no line for (nothing of it was
    measured) gets the weight the meta-referee gives a judge with no measurements, not a constant of its
    own and not an error, so the two can never drift apart."""
    for rel in meta.judges:
        if rel.judge == judge:
            return rel.weight
    return weight(JudgeReliability(judge=judge))


def reviewable(sets: Sequence[CandidateSet], n: int) -> list[CandidateSet]:
    """The sets the meta-judge reviews: the first `n`, in order, with at least two valid answers to compare.
    Taking the first n sets and skipping the unreviewable ones would review fewer than n (or none, when
    the first sets' judges failed) without saying so; `--meta-sets N` means N reviews where N exist."""
    return [cs for cs in sets if len(valid_answers(cs)) >= 2][:n]


# --- 1. judging a set --------------------------------------------------------------------------------------
async def judge_set(
    cs: CandidateSet,
    judges: Sequence[Ranker],
    criteria: Criteria = HOLISTIC,
    *,
    shown: Mapping[str, str] | None = None,
    context: str | None = None,
    pairwise: bool = False,
    limit: Limit | None = None,
) -> None:
    """Every judge ranks the set's usable candidates; sets `cs.question` and adds one `JudgeRecord` per judge.

    Listwise, a judge scores all candidates in one call on `criteria`; `pairwise`, it compares every pair
    in both orders (the question then names the criteria's dimensions). `shown` replaces a candidate's
    `shown` text and `context` the set's (a game shows rollouts it does not store); `limit` wraps each
    call (a run's concurrency limit)."""
    shown = shown or {}
    cands = [Candidate(id=c.id, text=shown.get(c.id, c.shown)) for c in cs.candidates if c.usable]
    if len(cands) < 2 or not judges:
        return
    cs.question = criteria.question(cs.question_fields())
    ctx = cs.context if context is None else context
    asks = [
        j.rank_pairwise(cs.set_id, cs.question, cands, ctx)
        if pairwise
        else j.rank(cs.set_id, cs.question, cands, ctx, criteria)
        for j in judges
    ]
    rankings = await asyncio.gather(*(limit(a) if limit else a for a in asks))
    cs.judges += [JudgeRecord.of(r) for r in rankings]


# --- 2. the meta-judge -------------------------------------------------------------------------------------
async def review_judges(
    meta_judge: Ranker, sets: Sequence[CandidateSet], n: int, *, limit: Limit | None = None
) -> dict[str, dict[str, float]]:
    """The meta-judge's score of each judge's ranking, per reviewed set (set id -> judge -> 0..10)."""
    chosen = reviewable(sets, n)
    asks = [meta_judge_scores(meta_judge, cs.set_id, cs.question, valid_answers(cs)) for cs in chosen]
    got = await asyncio.gather(*(limit(a) if limit else a for a in asks))
    return {cs.set_id: scores for cs, scores in zip(chosen, got, strict=True)}


def mean_scores(reviews: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each judge's mean meta-judge score over the reviewed sets."""
    per: dict[str, list[float]] = {}
    for scores in reviews.values():
        for judge, s in scores.items():
            per.setdefault(judge, []).append(s)
    return {j: statistics.fmean(v) for j, v in per.items()}


def save_meta_scores(run_dir: Path, scores: Mapping[str, float]) -> None:
    (run_dir / META).write_text(json.dumps(dict(scores)), encoding="utf-8")


def load_meta_scores(run_dir: str | Path) -> dict[str, float] | None:
    p = Path(run_dir) / META
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


# --- 3. rows -----------------------------------------------------------------------------------------------
class BuildResult(BaseModel):
    rows: list[DPORow]  # the candidates' pairs
    judge_rows: list[DPORow]  # the judges' own pairs: better vs worse ranking of the same set
    meta: MetaReport
    sets: int
    sets_with_pairs: int


def build(
    sets: Sequence[CandidateSet],
    *,
    all_pairs: bool = False,
    margin: float = 0.0,
    unleashed: bool = False,
    use_judges: bool = True,
    meta_scores: Mapping[str, float] | None = None,
) -> BuildResult:
    """Rows from candidate sets, with no model call (see the module docstring)."""
    rankings = {cs.set_id: cs.rankings() for cs in sets if cs.judges} if use_judges else {}
    truth = {cs.set_id: t for cs in sets if (t := procedural_truth(cs)) is not None}
    meta = assess(rankings, truth, dict(meta_scores) if meta_scores else None)
    rows: list[DPORow] = []
    judge_rows: list[DPORow] = []
    with_pairs = 0
    for cs in sets:
        answers = valid_answers(cs) if use_judges else []
        new = set_rows(cs, truth.get(cs.set_id), answers, meta, all_pairs, margin, unleashed)
        with_pairs += bool(new)
        rows += new
        if cs.set_id in rankings:
            pairs = judge_pairs({cs.set_id: rankings[cs.set_id]}, truth, task=cs.task)
            judge_rows += [r.model_copy(update={"seed": cs.seed}) for r in pairs]
    return BuildResult(
        rows=rows, judge_rows=judge_rows, meta=meta, sets=len(sets), sets_with_pairs=with_pairs
    )


def procedural_truth(cs: CandidateSet) -> Scores | None:
    """The set's procedural scores of its usable candidates, when at least two have one (else no order)."""
    truth: Scores = {c: cs.truth.get(c) for c in cs.usable_ids()}
    return truth if sum(v is not None for v in truth.values()) >= 2 else None


def set_rows(
    cs: CandidateSet,
    truth: Scores | None,
    answers: list[Ranking],
    meta: MetaReport,
    all_pairs: bool,
    margin: float,
    unleashed: bool,
) -> list[DPORow]:
    """One set's rows: its usable candidates ranked by the consensus of its truth and the judges."""
    ids = cs.usable_ids()
    if len(ids) < 2:
        return []
    score_maps: list[Scores] = []
    weights: list[float] = []
    if truth is not None:
        score_maps.append({c: truth.get(c) for c in ids})
        weights.append(PROCEDURAL_WEIGHT)
    for r in answers:
        score_maps.append({c: r.scores.get(c) for c in ids})
        weights.append(judge_weight(meta, r.judge))
    if not score_maps:
        return []
    strength = consensus(score_maps, weights)
    return ranked_pairs(
        unleash(cs.prompt) if unleashed else list(cs.prompt),
        {c.id: c.raw for c in cs.candidates},
        strength,
        cs.row_meta(mean_agreement(score_maps)),
        all_pairs=all_pairs,
        margin=margin,
        unchoosable=set(cs.invalid),
    )


def judge_pairs(
    rankings: dict[str, list[Ranking]], truth: dict[str, Scores] | None, task: str
) -> list[DPORow]:
    """Better vs worse judgement of the same set, as a pair on the better judge's prompt.

    Listwise judges see the candidates in their own shuffled orders, so their prompts differ in
    order only; answers are keyed by candidate id in one fixed schema order, so the worse judge's
    answer is just as much an answer to the better judge's prompt (same question, same candidates)."""
    truth = truth or {}
    rows = []
    for set_id, rs in rankings.items():
        ok = [r for r in rs if r.ok and r.response and r.prompt]
        if len(ok) < 2:
            continue
        ref = truth.get(set_id)
        scored = []
        for r in ok:
            target = ref if ref is not None else consensus([o.scores for o in ok if o.judge != r.judge])
            t = tau(r.scores, target)
            if t is not None:
                scored.append((t, r))
        if len(scored) < 2:
            continue
        scored.sort(key=lambda x: -x[0])
        (best_t, best), (worst_t, worst) = scored[0], scored[-1]
        if best_t <= worst_t or set(best.scores) != set(worst.scores) or best.response == worst.response:
            continue
        rows.append(
            DPORow(
                prompt=[Message(**m) for m in best.prompt],
                chosen=[Message(role="assistant", content=best.response)],
                rejected=[Message(role="assistant", content=worst.response)],
                source="judge",
                task=task,
                level="judgement",
                episode_id=set_id,
                chosen_rank=0,
                rejected_rank=len(scored) - 1,
                n_candidates=len(scored),
                chosen_score=best_t,
                rejected_score=worst_t,
                margin=best_t - worst_t,
                judge_agreement=mean_agreement([r.scores for r in ok]),
            )
        )
    return rows
