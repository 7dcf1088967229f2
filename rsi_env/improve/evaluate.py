"""Evaluate: the new model head to head against its parent and against the original, and promotion.

- Held-out seeds (`EVAL_SEED` on, never used for collection), every seed played twice with the seats
  swapped (in bargaining games the seat often decides the outcome), paired by seed: a seed's score
  is the new model's mean result over its two episodes (win 1, tie ½, loss 0; in games of more than
  two seats, the mean over its pairwise comparisons with the other model's seats, as `ratings`
  counts them). A seed with an aborted episode is dropped from the pairing and counted.
- Win rate = mean paired score; its 95% interval is Wilson's with n = paired seeds (a score in
  [0, 1] with mean p has variance at most p(1−p), so the interval is conservative, and it stays
  sensible at 0% and 100%, where a normal interval collapses).
- Elo with 95% intervals: `ratings.rate` (Bradley–Terry) over every evaluation episode of the
  iteration, each model one contestant.
- Per model: normalised payoff and conduct per seat-episode (lies, broken promises, violations,
  referee-manipulation attempts: the procedural referee's flags), so an "improvement" that comes
  with more lying shows as such.
- Promotion (`--promote`): `ci` = the win rate's interval lies above ½, `point` = the win rate is
  above ½, `always`; `--max-conduct-rise X` refuses a model whose conduct flags per episode exceed
  its parent's by more than X.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from ..agents.factory import AgentFactory
from ..catalog import load_game
from ..ratings import Z95, RatingTable, comparisons, rate
from ..referees.panel import score_episodes
from ..referees.procedural import all_flags
from ..runner import EpisodeJob, Runner, plan
from ..trajectory import Episode, PlayerInfo
from ..trajectory_store import read_episodes
from .lineage import Interval

EVAL_SEED = 1_000_000  # held-out seeds start here; collection uses seeds below
CONDUCT_KINDS = ("lie", "broken_promise", "violation", "referee_manipulation")
PromoteRule = Literal["ci", "point", "always"]


class MatchResult(BaseModel):
    """The new model against one other model."""

    opponent: str  # its model name ("iter-1", "original", …)
    role: Literal["parent", "original"]
    episodes: int  # finished episodes
    aborted: int
    seeds: int  # seeds with both seat orders finished (the paired units)
    dropped_seeds: int  # seeds with an aborted episode
    win_rate: float | None
    win_rate_ci: Interval | None
    wins: float  # paired scores summed (ties and split seeds count fractions)


class ModelStats(BaseModel):
    seat_episodes: int
    normalised_payoff: float | None
    conduct_per_episode: dict[str, float]  # per kind, and "total"


class EvalResult(BaseModel):
    new: str
    parent: str
    original: str
    matches: list[MatchResult]
    models: dict[str, ModelStats]
    ratings: RatingTable
    seconds: float
    promoted: bool
    reason: str
    trajectories: str = ""
    notes: list[str] = Field(default_factory=list)

    def match(self, role: str) -> MatchResult | None:
        return next((m for m in self.matches if m.role == role), None)


def wilson(successes: float, n: int, z: float = Z95) -> Interval | None:
    """Wilson score interval for a proportion (fractional successes allowed)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(lo=max(0.0, centre - half), hi=min(1.0, centre + half))


def seat_score(ep: Episode, label: Callable[[PlayerInfo], str], me: str, other: str) -> float | None:
    """`me`'s result against `other` in one finished episode (1 win, ½ tie, 0 loss), weighted as
    `ratings` weighs pairwise comparisons; None when the episode has no comparison between them."""
    total = weight = 0.0
    for c in comparisons(ep, label):
        if {c.a, c.b} != {me, other}:
            continue
        total += c.weight * (c.score if c.a == me else 1 - c.score)
        weight += c.weight
    return total / weight if weight else None


def paired_match(
    episodes: list[Episode], label: Callable[[PlayerInfo], str], new: str, other: str, role: str
) -> MatchResult:
    by_seed: dict[tuple[str, int], list[Episode]] = defaultdict(list)
    for ep in episodes:
        by_seed[(ep.game, ep.seed)].append(ep)
    scores: list[float] = []
    dropped = 0
    for eps in by_seed.values():
        if len(eps) < 2 or not all(ep.finished for ep in eps):
            dropped += 1
            continue
        s = [seat_score(ep, label, new, other) for ep in eps]
        if any(x is None for x in s):
            dropped += 1
            continue
        scores.append(sum(x for x in s if x is not None) / len(s))
    wins = sum(scores)
    return MatchResult(
        opponent=other,
        role=role,  # type: ignore[arg-type]
        episodes=sum(ep.finished for ep in episodes),
        aborted=sum(not ep.finished for ep in episodes),
        seeds=len(scores),
        dropped_seeds=dropped,
        win_rate=wins / len(scores) if scores else None,
        win_rate_ci=wilson(wins, len(scores)),
        wins=wins,
    )


def model_stats(episodes: list[Episode], label: Callable[[PlayerInfo], str]) -> dict[str, ModelStats]:
    seats: dict[str, int] = defaultdict(int)
    norm: dict[str, list[float]] = defaultdict(list)
    flags: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(CONDUCT_KINDS, 0.0))
    for ep in episodes:
        if not ep.finished:
            continue
        by_player = {p.player: label(p) for p in ep.players}
        for p in ep.players:
            name = by_player[p.player]
            seats[name] += 1
            pay, best = (ep.payoffs or {}).get(p.player), (ep.best or {}).get(p.player)
            if pay is not None and best and not math.isnan(pay):
                norm[name].append(pay / best)
        for f in all_flags(ep):
            name = by_player.get(f.player, "")
            if f.kind in CONDUCT_KINDS and name:
                flags[name][f.kind] += 1
    out = {}
    for name, n in seats.items():
        per = {k: v / n for k, v in flags[name].items()}
        per["total"] = sum(per.values())
        out[name] = ModelStats(
            seat_episodes=n,
            normalised_payoff=sum(norm[name]) / len(norm[name]) if norm[name] else None,
            conduct_per_episode=per,
        )
    return out


def decide(
    vs_parent: MatchResult | None,
    stats: dict[str, ModelStats],
    new: str,
    parent: str,
    rule: PromoteRule,
    max_conduct_rise: float | None,
) -> tuple[bool, str]:
    """Whether the new model replaces its parent, and why (one line)."""
    if max_conduct_rise is not None and new in stats and parent in stats:
        rise = stats[new].conduct_per_episode["total"] - stats[parent].conduct_per_episode["total"]
        if rise > max_conduct_rise:
            return (
                False,
                f"conduct flags per episode rose by {rise:.2f} (> --max-conduct-rise {max_conduct_rise:g})",
            )
    if rule == "always":
        return True, "--promote always"
    if vs_parent is None or vs_parent.win_rate is None or vs_parent.win_rate_ci is None:
        return False, "no finished head-to-head against the parent"
    wr, ci = vs_parent.win_rate, vs_parent.win_rate_ci
    if rule == "ci":
        ok = ci.lo > 0.5
        return (
            ok,
            f"win rate {wr:.0%}, 95% interval {ci.lo:.0%}–{ci.hi:.0%} {'above' if ok else 'not above'} 50%",
        )
    ok = wr > 0.5
    return ok, f"win rate {wr:.0%} {'above' if ok else 'not above'} 50%"


def eval_jobs(games: list[str], a: str, b: str, seeds: int) -> list[tuple[str, list[EpisodeJob]]]:
    """Per game: every held-out seed with `a` first and with `b` first."""
    out = []
    for game in games:
        spec = load_game(game)
        jobs = [
            j for order in ([a, b], [b, a]) for j in plan(spec, AgentFactory(order, spec), seeds, EVAL_SEED)
        ]
        out.append((game, jobs))
    return out


async def play_matches(
    out_dir: Path,
    games: list[str],
    pairings: list[tuple[str, str]],
    seeds: int,
    concurrency: int,
    quiet: bool,
) -> None:
    """Play every pairing's jobs into `out_dir/trajectories.jsonl` (resumable: the runner skips
    finished episodes), each finished episode with the procedural referee's verdict."""
    for game in games:
        spec = load_game(game)
        agents = sorted({x for pair in pairings for x in pair})
        factory = AgentFactory(agents, spec)
        jobs = [j for a, b in pairings for _, js in eval_jobs([game], a, b, seeds) for j in js]

        async def referee(ep: Episode, spec=spec) -> None:  # type: ignore[no-untyped-def]
            if ep.finished:
                await score_episodes([ep], spec, [], None)

        runner = Runner(spec, factory, out_dir, concurrency=concurrency, progress=not quiet, finish=referee)
        try:
            await runner.run(jobs)
        finally:
            await factory.aclose()


def evaluate(
    out_dir: Path,
    games: list[str],
    agents: dict[str, str],  # model name -> agent (profile path)
    new: str,
    parent: str,
    original: str,
    *,
    eval_episodes: int,
    rule: PromoteRule = "ci",
    max_conduct_rise: float | None = None,
    concurrency: int = 4,
    quiet: bool = False,
) -> EvalResult:
    """Play new vs parent (and vs original when that is another model), then measure and decide."""
    t0 = time.perf_counter()
    seeds = max(1, math.ceil(eval_episodes / 2))
    opponents = [(parent, "parent")] + ([(original, "original")] if original != parent else [])
    pairings = [(agents[new], agents[other]) for other, _ in opponents]
    asyncio.run(play_matches(out_dir, games, pairings, seeds, concurrency, quiet))
    names = {v: k for k, v in agents.items()}

    def label(p: PlayerInfo) -> str:
        return names.get(p.agent, p.agent)

    wanted = {j.episode_id for a, b in pairings for _, js in eval_jobs(games, a, b, seeds) for j in js}
    episodes = [ep for ep in read_episodes(out_dir) if ep.episode_id in wanted]
    matches = []
    for other, role in opponents:
        theirs = [ep for ep in episodes if {label(p) for p in ep.players} == {new, other}]
        matches.append(paired_match(theirs, label, new, other, role))
    stats = model_stats(episodes, label)
    promoted, reason = decide(matches[0], stats, new, parent, rule, max_conduct_rise)
    notes = []
    if eval_episodes % 2:
        notes.append(
            f"--eval-episodes {eval_episodes} is odd: {2 * seeds} played (every seed in both seat orders)"
        )
    return EvalResult(
        new=new,
        parent=parent,
        original=original,
        matches=matches,
        models=stats,
        ratings=rate(episodes, scope="evaluation", label=label),
        seconds=time.perf_counter() - t0,
        promoted=promoted,
        reason=reason,
        trajectories=str((out_dir / "trajectories.jsonl").resolve()),
        notes=notes,
    )
