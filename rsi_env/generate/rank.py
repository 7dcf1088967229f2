"""Ranking the games that passed their play-test: procedural metrics and LLM judges, aggregated.

As for preference data (`rsi_env.prefs.ranking`): the procedural ranking is the ground truth the
meta-referee measures each judge against, and the consensus is a weighted Bradley–Terry fit of the
procedural scores (weight 1) and each judge's scores (weight from the meta-referee).

- procedural score: the mean of four metrics mapped to [0, 1] by saturating curves (branching
  factor in bits, outcome spread relative to the payoff scale, skill signal in standard errors,
  and length: best between 6 and 60 turns);
- a judge's score for a game: the mean of its game-quality rubric dimensions, each normalised to
  [0, 1] (`LLMJudge.score_game` on the spec and one scripted sample episode);
- the meta-referee (`referees.meta.assess`): judges' agreement with the procedural truth and with
  each other → weights; optionally an LLM meta-judge scores the judges' rankings too.
"""

from __future__ import annotations

import copy
import math
import statistics

from pydantic import BaseModel, Field

from ..agents.baseline import ScriptedAgent
from ..engine import GameEngine
from ..referees.aggregate import consensus
from ..referees.judge import LLMJudge, Ranking
from ..referees.meta import MetaReport, assess, meta_judge_scores
from ..referees.rubric import Rubric
from ..spec import GameSpec
from ..trajectory import Episode, PlayerInfo
from .playtest import ProceduralMetrics, agent_chooser

SET_ID = "generated"
QUESTION = (
    "Which of these generated games is most worth playing for training and evaluating AI agents "
    "(rich decisions, challenge, general skills, ethical tension, clear rules)?"
)


class JudgeScore(BaseModel):
    judge: str
    status: str
    quality: float | None = None  # mean normalised rubric score in [0, 1]
    dimensions: dict[str, float | None] = Field(default_factory=dict)
    error: str | None = None


class RankEntry(BaseModel):
    candidate: str
    procedural: float
    procedural_parts: dict[str, float]
    judges: list[JudgeScore] = Field(default_factory=list)
    judge_quality: float | None = None  # judges' scores, weighted by the meta-referee
    consensus: float = 0.0  # Bradley–Terry strength (procedural + judges)
    rank: int = 0
    of: int = 0


class RankReport(BaseModel):
    entries: dict[str, RankEntry]
    meta: MetaReport | None = None


def procedural_parts(m: ProceduralMetrics) -> dict[str, float]:
    length = min(1.0, m.mean_length / 6) * min(1.0, 60 / m.mean_length) if m.mean_length > 0 else 0.0
    return {
        "branching": 1 - math.exp(-math.log2(max(m.branching_factor, 1.0)) / 4),  # 16 moves -> 0.63
        "outcome_spread": min(1.0, m.outcome_std / 0.3),
        "skill": 1 - math.exp(-max(m.skill_z, 0.0) / 5),  # 5 s.e. -> 0.63
        "length": length,
    }


def procedural_score(m: ProceduralMetrics) -> float:
    return statistics.fmean(procedural_parts(m).values())


def sample_episode(spec: GameSpec, seed: int = 0) -> Episode:
    """One scripted self-play episode as a trajectory record, for the judges to read."""
    engine = GameEngine(spec)
    engine.reset(seed)
    players = list(engine.players)
    initial = copy.deepcopy({"state": engine.state, "players": engine.pstate})
    agents = {p: agent_chooser(ScriptedAgent(spec, seed=i)) for i, p in enumerate(players)}
    while not engine.done:
        engine.tick({p: agents[p](engine, p) for p in engine.current_actors()})
    return Episode(
        episode_id=f"{spec.id}-sample-{seed}",
        game=spec.id,
        spec_hash=spec.spec_hash(),
        seed=seed,
        n_players=len(players),
        players=[
            PlayerInfo(player=p, agent="scripted", role=engine.role[p], team=engine.team[p]) for p in players
        ],
        status="truncated" if engine.truncated else "complete",
        end_reason=engine.end_reason,
        payoffs=engine.payoffs,
        best=engine.best,
        outcomes=dict(engine.outcomes),
        initial_state=initial,
        flags=list(engine.flags),
        events=list(engine.events),
    )


def _quality(verdict_scores: dict[str, float | None], rubric: Rubric) -> float | None:
    vals = [rubric.dimension(d).normalise(v) for d, v in verdict_scores.items() if v is not None]
    return statistics.fmean(vals) if vals else None


async def rank_games(
    games: dict[str, tuple[GameSpec, ProceduralMetrics]],
    judges: list[LLMJudge],
    rubric: Rubric | None,
    meta_judge: LLMJudge | None = None,
) -> RankReport:
    """Rank candidates (id -> spec and play-test metrics); judges may be empty (procedural only)."""
    ids = list(games)
    truth = {c: procedural_score(games[c][1]) for c in ids}
    entries = {
        c: RankEntry(candidate=c, procedural=truth[c], procedural_parts=procedural_parts(games[c][1]))
        for c in ids
    }
    rankings: list[Ranking] = []
    if judges and rubric is not None:
        samples = {c: [sample_episode(games[c][0])] for c in ids}
        for j in judges:
            ranking = Ranking(judge=j.id, set_id=SET_ID, scores={})
            statuses = []
            for c in ids:
                verdict = await j.score_game(games[c][0], rubric, samples[c])
                dims = {d: s.score for d, s in verdict.scores.get("game", {}).items()}
                q = _quality(dims, rubric) if verdict.status == "ok" else None
                entries[c].judges.append(
                    JudgeScore(
                        judge=j.id, status=verdict.status, quality=q, dimensions=dims, error=verdict.error
                    )
                )
                ranking.scores[c] = q
                ranking.reasoning[c] = "; ".join(
                    f"{d}: {s.reasoning}" for d, s in verdict.scores.get("game", {}).items() if s.reasoning
                )[:400]
                statuses.append(verdict.status)
            ranking.status = "ok" if all(s == "ok" for s in statuses) else "incomplete"
            rankings.append(ranking)
    meta: MetaReport | None = None
    weights: dict[str, float] = {}
    if rankings:
        meta_scores = None
        ok = [r for r in rankings if r.ok]
        if meta_judge is not None and len(ok) >= 2:
            meta_scores = await meta_judge_scores(meta_judge, SET_ID, QUESTION, ok)
        meta = assess({SET_ID: rankings}, {SET_ID: dict(truth)}, meta_scores)
        weights = {r.judge: r.weight for r in meta.judges}
        for c in ids:
            scored = [
                (s.quality, weights.get(s.judge, 0.0)) for s in entries[c].judges if s.quality is not None
            ]
            total = sum(w for _, w in scored)
            if scored and total > 0:
                entries[c].judge_quality = sum(q * w for q, w in scored) / total
    score_maps: list[dict[str, float | None]] = [dict(truth)]
    w = [1.0]
    for r in rankings:
        if any(v is not None for v in r.scores.values()):
            score_maps.append(dict(r.scores))
            w.append(weights.get(r.judge, 0.0))
    strength = consensus(score_maps, w) if len(ids) > 1 else dict.fromkeys(ids, 0.0)
    order = sorted(ids, key=lambda c: (-strength.get(c, 0.0), -truth[c], c))
    for i, c in enumerate(order):
        entries[c].consensus = round(strength.get(c, 0.0), 4)
        entries[c].rank, entries[c].of = i + 1, len(ids)
    return RankReport(entries=entries, meta=meta)
