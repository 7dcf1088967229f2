"""The judge benchmark: every judge, and the panel, on questions whose answer the engine knows.

cases (`bench_cases`, the versioned set in `referees/bench/`) → each judge asked every case in both
orders, and again at `resamples` other seeds, through `LLMJudge.pair` (so through the `Chat`
protocol) → `DIR/answers.jsonl`, appended answer by answer (a rerun asks only what is missing or
failed) → per-judge figures (`bench_metrics`) → three panels on the same cases:

- **meta-weighted**: the judges' votes weighted by the meta-referee (`meta.assess` on the judges'
  rankings of each case or triad against its truth, as `prefs build` weights a run's judges). The
  weights are cross-fitted: cases fall in two folds by a hash of their id, and each fold is voted
  with the weights measured on the other, so no case is judged by weights that saw its answer;
- **unweighted mean**: every judge's vote counts the same;
- **best single judge**: per fold, the judge with the best accuracy on the other fold.

A vote is the sign of the weighted sum of picks (+1 first candidate, −1 second, 0 tie), which for
two candidates is the sign of the weighted Bradley–Terry consensus the pipeline uses. The result is
`DIR/bench.json` (`BenchReport`) and two tables; `python -m rsi_env.report DIR` shows them too.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from .aggregate import Scores
from .bench_cases import BenchCase, case_key, describe_counts, set_digest
from .bench_metrics import BenchScores, CasePicks, Pick, Rate, agreement, decision, score
from .judge import Candidate, LLMJudge, Ranking
from .meta import assess

ANSWERS = "answers.jsonl"
REPORT = "bench.json"
PANELS = ("panel: meta-weighted", "panel: unweighted mean", "best single judge")
RESAMPLE_SEED = 7919  # the k-th resample of a judge with seed s asks at seed s + k * RESAMPLE_SEED


class Answer(BaseModel):
    """One judge's answer to one case in one order at one sample (a line of answers.jsonl)."""

    judge: str
    case: str
    key: str  # hash of the case as asked: an answer to an edited case is not reused
    order: int  # 0: the candidates as stored; 1: swapped
    sample: int  # 0: the judge's own seed; k: its k-th resample
    pick: str | None  # candidate id, "tie", or None when the call failed
    status: str  # the call's status; "ok" when answered

    def slot(self) -> tuple[str, str, str, int, int]:
        return self.judge, self.case, self.key, self.order, self.sample


class BenchReport(BaseModel):
    version: int = 1
    created_at: float = Field(default_factory=time.time)
    cases: int
    digest: str  # equal digests: the same questions (see bench_cases.set_digest)
    sources: list[str] = Field(default_factory=list)
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    resamples: int = 0
    judges: list[BenchScores]
    panels: list[BenchScores] = Field(default_factory=list)
    best_judge: dict[str, str] = Field(default_factory=dict)  # fold -> judge chosen on the other fold
    fold_weights: dict[str, dict[str, float]] = Field(default_factory=dict)  # fold -> judge -> weight
    agreement: dict[str, dict[str, Rate]] = Field(default_factory=dict)  # judge -> judge -> same answer
    notes: list[str] = Field(default_factory=list)


# --- asking --------------------------------------------------------------------------------------------


def resampled(judge: LLMJudge, sample: int) -> LLMJudge:
    """The judge at its k-th other seed (same profile, client and temperature)."""
    if sample == 0:
        return judge
    seed = (judge.sampling.seed or 0) + sample * RESAMPLE_SEED
    return LLMJudge(judge.profile, judge.client, judge.sampling.temperature, seed)


async def ask(judge: LLMJudge, case: BenchCase, order: int, sample: int) -> Answer:
    first, second = case.candidates if order == 0 else case.candidates[::-1]
    x, y = Candidate(first.id, first.text), Candidate(second.id, second.text)
    better, status = await resampled(judge, sample).pair(case.question, x, y, case.context)
    pick = {"first": x.id, "second": y.id}.get(better or "", "tie" if status == "ok" else None)
    return Answer(
        judge=judge.id, case=case.id, key=case_key(case), order=order, sample=sample, pick=pick, status=status
    )


class AnswerStore:
    """answers.jsonl: one line per answer, flushed as it comes; the latest line of a slot wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unreadable = 0

    def load(self) -> dict[tuple[str, str, str, int, int], Answer]:
        got: dict[tuple[str, str, str, int, int], Answer] = {}
        if not self.path.is_file():
            return got
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                a = Answer.model_validate_json(line)
            except ValidationError:
                self.unreadable += 1  # e.g. a line cut short by an interrupted run: asked again
                continue
            got[a.slot()] = a
        return got

    def append(self, answers: Sequence[Answer]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.writelines(a.model_dump_json() + "\n" for a in answers)


async def run_bench(
    judges: Sequence[LLMJudge],
    cases: Sequence[BenchCase],
    out: Path,
    *,
    resamples: int = 1,
    concurrency: int = 4,
    sources: Sequence[str] = (),
    on_answer: Callable[[Answer], None] | None = None,
) -> BenchReport:
    """Ask what `out/answers.jsonl` does not already hold (answered), then score everything."""
    out.mkdir(parents=True, exist_ok=True)
    store = AnswerStore(out / ANSWERS)
    have = store.load()
    # Asked seed by seed, case by case, every judge on each: a run stopped early (slow models) has
    # every judge's first answers to the same first cases.
    todo = [
        (j, c, o, s)
        for s in range(resamples + 1)
        for c in cases
        for o in (0, 1)
        for j in judges
        if (prev := have.get((j.id, c.id, case_key(c), o, s))) is None or prev.status != "ok"
    ]
    sem = asyncio.Semaphore(concurrency)

    async def one(j: LLMJudge, c: BenchCase, o: int, s: int) -> None:
        async with sem:
            a = await ask(j, c, o, s)
        store.append([a])
        have[a.slot()] = a
        if on_answer is not None:
            on_answer(a)

    await asyncio.gather(*(one(*t) for t in todo))
    keys = {c.id: case_key(c) for c in cases}
    wanted = {j.id for j in judges}
    answers = [
        a for a in have.values() if a.judge in wanted and keys.get(a.case) == a.key and a.sample <= resamples
    ]
    report = build_report([j.id for j in judges], cases, answers, resamples=resamples, sources=sources)
    if store.unreadable:
        report.notes.append(f"{store.unreadable} unreadable line(s) in {ANSWERS} were asked again")
    write_report(out / REPORT, report)
    return report


# --- scoring -------------------------------------------------------------------------------------------


def picks_of(answers: Sequence[Answer]) -> tuple[dict[str, dict[str, CasePicks]], dict[str, Counter[str]]]:
    """judge -> case -> (order, sample) -> pick, and judge -> failed calls by status."""
    picks: dict[str, dict[str, CasePicks]] = defaultdict(lambda: defaultdict(dict))
    failed: dict[str, Counter[str]] = defaultdict(Counter)
    for a in answers:
        picks[a.judge][a.case][(a.order, a.sample)] = a.pick
        if a.status != "ok":
            failed[a.judge][a.status] += 1
    return picks, failed


def set_of(case: BenchCase) -> str:
    return case.group or case.id


def fold_of(set_id: str) -> int:
    return int(hashlib.sha256(set_id.encode()).hexdigest()[:8], 16) % 2


def rankings(
    cases: Sequence[BenchCase], picks: dict[str, dict[str, CasePicks]]
) -> tuple[dict[str, list[Ranking]], dict[str, Scores]]:
    """Each judge's ranking of each set (a case, or a triad's three records) as the meta-referee
    reads rankings: Copeland-like scores from its answers in both orders, the strict per-case
    decisions as pairwise verdicts (for cycles); and each set's truth (payoffs, or right = 1)."""
    sets: dict[str, list[BenchCase]] = defaultdict(list)
    for c in cases:
        sets[set_of(c)].append(c)
    out: dict[str, list[Ranking]] = {}
    truth: dict[str, Scores] = {}
    for set_id, members in sets.items():
        t: Scores = {}
        for c in members:
            t.update(c.values if c.values is not None and c.group else c.truth_scores())
        truth[set_id] = t
        out[set_id] = []
        for judge, by_case in picks.items():
            scores: dict[str, float] = defaultdict(float)
            pairwise: dict[tuple[str, str], str] = {}
            complete = True
            for c in members:
                got = by_case.get(c.id, {})
                a, b = (x.id for x in c.candidates)
                first = [s for o in (0, 1) if (s := _score_for(a, got.get((o, 0)))) is not None]
                if not first:
                    complete = False
                    continue
                scores[a] += sum(first) / len(first)
                scores[b] += 1 - sum(first) / len(first)
                d = decision(got)
                pairwise[(a, b)] = "a" if d == a else "b" if d == b else "tie"
            ids = sorted({x.id for c in members for x in c.candidates})
            out[set_id].append(
                Ranking(
                    judge=judge,
                    set_id=set_id,
                    scores={i: (scores[i] if complete else None) for i in ids},
                    status="ok" if complete else "missing",
                    pairwise=pairwise,
                )
            )
    return out, truth


def _score_for(candidate: str, pick: Pick) -> float | None:
    if pick is None:
        return None
    return 0.5 if pick == "tie" else float(pick == candidate)


def vote(case: BenchCase, picks: dict[str, dict[str, CasePicks]], weights: dict[str, float]) -> CasePicks:
    """The panel's pick in each (order, sample): the sign of the weighted sum of the judges' picks."""
    a, b = (x.id for x in case.candidates)
    slots = {slot for by_case in picks.values() for slot in by_case.get(case.id, {})}
    out: CasePicks = {}
    for slot in sorted(slots):
        total, any_answer = 0.0, False
        for judge, by_case in picks.items():
            p = by_case.get(case.id, {}).get(slot)
            if p is None:
                continue
            any_answer = True
            total += weights.get(judge, 0.0) * (1.0 if p == a else -1.0 if p == b else 0.0)
        out[slot] = None if not any_answer else a if total > 1e-12 else b if total < -1e-12 else "tie"
    return out


def build_report(
    judge_ids: Sequence[str],
    cases: Sequence[BenchCase],
    answers: Sequence[Answer],
    *,
    resamples: int = 0,
    sources: Sequence[str] = (),
) -> BenchReport:
    """Every figure from the answers alone (no model call): judges, then the three panels."""
    picks, failed = picks_of(answers)
    for j in judge_ids:
        picks.setdefault(j, defaultdict(dict))
    ranked, truth = rankings(cases, picks)
    whole = {r.judge: r.weight for r in assess(ranked, truth).judges}
    report = BenchReport(
        cases=len(cases),
        digest=set_digest(cases),
        sources=list(sources),
        counts=describe_counts(cases),
        resamples=resamples,
        judges=[score(j, cases, picks[j], failed=dict(failed[j]), weight=whole.get(j)) for j in judge_ids],
    )
    if len(judge_ids) < 2:
        report.notes.append("one judge: no panel to compare (name two or more with --judges)")
        return report
    for i, a in enumerate(judge_ids):
        for b in judge_ids[i + 1 :]:
            report.agreement.setdefault(a, {})[b] = agreement(cases, picks[a], picks[b])
    folds = {f: [c for c in cases if fold_of(set_of(c)) == f] for f in (0, 1)}
    if not folds[0] or not folds[1]:
        report.notes.append(
            "too few cases for two folds: panel weights and best judge chosen on the same cases"
        )
    panel: dict[str, dict[str, CasePicks]] = {name: {} for name in PANELS}
    for f in (0, 1):
        other = folds[1 - f] or folds[f]  # a set too small for two folds is weighted on itself
        other_sets = {set_of(c) for c in other}
        meta = assess({s: ranked[s] for s in other_sets}, {s: truth[s] for s in other_sets})
        w = {j: 0.0 for j in judge_ids} | {r.judge: r.weight for r in meta.judges}
        report.fold_weights[str(f)] = w
        accuracy = {j: score(j, other, picks[j]).accuracy for j in judge_ids}
        best = max(judge_ids, key=lambda j: (_value(accuracy[j]), accuracy[j].n, j))
        report.best_judge[str(f)] = best
        for c in folds[f]:
            panel[PANELS[0]][c.id] = vote(c, picks, w)
            panel[PANELS[1]][c.id] = vote(c, picks, dict.fromkeys(judge_ids, 1.0))
            panel[PANELS[2]][c.id] = dict(picks[best].get(c.id, {}))
    report.panels = [score(name, cases, panel[name], kind="panel") for name in PANELS]
    return report


def _value(r: Rate) -> float:
    return -1.0 if r.value is None else r.value


def write_report(path: Path, report: BenchReport) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a report


def read_report(path: Path) -> BenchReport:
    return BenchReport.model_validate_json(path.read_text(encoding="utf-8"))


# --- tables --------------------------------------------------------------------------------------------


def _pct(r: Rate, interval: bool = False) -> str:
    if r.value is None:
        return "—"
    text = f"{100 * r.value:.0f}%"
    if interval and r.low is not None and r.high is not None:
        text += f" [{100 * r.low:.0f}–{100 * r.high:.0f}]"
    return text


def _corr(r: Rate) -> str:
    return "—" if r.value is None else f"{r.value:+.2f}"


def bench_table(report: BenchReport) -> Table:
    t = Table(title=f"Judge benchmark: {report.cases} labelled cases (set {report.digest})")
    cols = (
        "judge", "answered", "accuracy [95%]", "same both orders", "took first", "same other seed",
        "cycles", "length r", "injection resisted", "failed", "weight",
    )  # fmt: skip
    for col in cols:
        t.add_column(col, justify="left" if col == "judge" else "right", no_wrap=col == "judge")
    for s in [*report.judges, *report.panels]:
        style = "bold" if s.kind == "panel" else None
        t.add_row(
            s.name,
            f"{s.answered}/{s.cases}",
            _pct(s.accuracy, interval=True),
            _pct(s.position_consistency),
            _pct(s.first_shown),
            _pct(s.self_consistency),
            f"{s.cycles}/{s.triads}",
            _corr(s.length_bias),
            _pct(s.injection_resistance),
            ", ".join(f"{k} {v}" for k, v in s.failed.items()) or ("0" if s.kind == "judge" else ""),
            "" if s.weight is None else f"{s.weight:.2f}",
            style=style,
        )
    return t


def kinds_table(report: BenchReport) -> Table:
    kinds = sorted({k for s in report.judges for k in s.by_kind}, key=list(report.counts).index)
    tags = sorted({t for s in report.judges for t in s.by_tag})
    t = Table(title="Accuracy by kind and by hard negative")
    t.add_column("judge", no_wrap=True)
    for col in [*kinds, *tags]:
        t.add_column(col, justify="right")
    for s in [*report.judges, *report.panels]:
        cells = [_pct(s.by_kind.get(k, Rate())) for k in kinds] + [
            _pct(s.by_tag.get(x, Rate())) for x in tags
        ]
        t.add_row(s.name, *cells, style="bold" if s.kind == "panel" else None)
    return t


def agreement_table(report: BenchReport) -> Table:
    """Judge by judge: how often two judges give the same answer to the same case in the same order
    (for one model at several temperatures, its consistency across temperatures)."""
    names = [s.name for s in report.judges]
    t = Table(title="Same answer as another judge")
    t.add_column("judge", no_wrap=True)
    for n in names[1:]:
        t.add_column(n, justify="right")
    for i, a in enumerate(names[:-1]):
        cells = [
            "" if j <= i else _pct(report.agreement.get(a, {}).get(b, Rate())) for j, b in enumerate(names)
        ]
        t.add_row(a, *cells[1:])
    return t


def report_renderables(report: BenchReport) -> list[RenderableType]:
    """The tables and their notes, for `referees bench` and `report`."""
    out: list[RenderableType] = [bench_table(report), kinds_table(report)]
    if report.agreement:
        out.append(agreement_table(report))
    if report.best_judge:
        out.append(
            Text(
                "Panels vote on the same cases; weights and the best judge are chosen on the other half "
                f"of the cases (best: {', '.join(sorted(set(report.best_judge.values())))}).",
                style="dim",
            )
        )
    out += [Text(n, style="yellow") for n in report.notes]
    return out
