"""Ratings of agents across episodes: a Bradley–Terry fit on the payoff ranking within episodes.

Each finished episode ranks its seats by payoff. Every pair of seats played by different agents
is one comparison: a win, a loss, or a tie (counted as half a win each, as chess counts draws).
In a k-seat episode each pair weighs 1/(k-1), so every seat contributes one comparison's worth
per episode and a 5-player game does not count as ten independent games.

Strengths are log-odds: agent a beats agent b with probability 1 / (1 + exp(-(s_a - s_b))). They
are centred (mean 0 over the rated agents) and come with a standard error from the Hessian of the
fit. A weak Gaussian prior (sd PRIOR_SD) keeps an agent that never lost finite; with a few dozen
comparisons it moves the estimates very little. The Elo column is the same scale times 400/ln 10.

Payoffs are only compared within an episode, so games whose roles differ in payoff (a proposer
versus a responder) are fair only when seats and roles rotate over the agents, as `plan` does
when each agent plays every seat across runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from .referees.aggregate import bradley_terry
from .trajectory import Episode, PlayerInfo

PRIOR_SD = 3.0
Z95 = 1.959963984540054
ELO_PER_LOGIT = 400 / math.log(10)


class Rating(BaseModel):
    rank: int
    agent: str
    strength: float  # log-odds scale, centred on the mean of the rated agents
    se: float
    lo: float  # 95% interval of the strength
    hi: float
    elo: float  # 1500 + strength * 400/ln 10
    elo_lo: float
    elo_hi: float
    wins: float  # pairwise results against other agents (unweighted counts)
    ties: float
    losses: float
    episodes: int


class RatingTable(BaseModel):
    scope: str  # a game id, or "all games"
    method: str = "Bradley-Terry on within-episode payoff ranks (ties = half wins), MAP with N(0, 3^2) prior"
    episodes: int = 0  # episodes that compared at least two different agents
    comparisons: int = 0
    ratings: list[Rating] = []
    note: str | None = None


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    score: float  # 1 = a ranked above b, 0.5 = tie, 0 = b above a
    weight: float


def agent_label(p: PlayerInfo) -> str:
    """What is rated: the agent profile, and the model when one is recorded (the same profile
    pointed at two models is two contestants)."""
    return f"{p.agent} ({p.model})" if p.model else p.agent


def comparisons(ep: Episode, label: Callable[[PlayerInfo], str] = agent_label) -> list[Comparison]:
    """Pairwise results of one episode; none for an aborted episode (no payoffs: no ranking)."""
    if not ep.finished or not ep.payoffs:
        return []
    seats = [
        (label(p), ep.payoffs[p.player])
        for p in ep.players
        if p.player in ep.payoffs and not math.isnan(ep.payoffs[p.player])
    ]
    if len(seats) < 2:
        return []
    w = 1 / (len(seats) - 1)
    out = []
    for i, (a, pa) in enumerate(seats):
        for b, pb in seats[i + 1 :]:
            if a != b:
                out.append(Comparison(a, b, 1.0 if pa > pb else 0.5 if pa == pb else 0.0, w))
    return out


def fit(
    comps: list[Comparison], names: list[str], prior_sd: float = PRIOR_SD
) -> tuple[np.ndarray, np.ndarray]:
    """MAP strengths and their standard errors (the referees' Bradley–Terry fit)."""
    strength, se = bradley_terry([(c.a, c.b, c.score, c.weight) for c in comps], names, prior_sd=prior_sd)
    return np.array([strength[a] for a in names]), np.array([se[a] for a in names])


def rate(
    episodes: Iterable[Episode], scope: str = "all games", label: Callable[[PlayerInfo], str] = agent_label
) -> RatingTable:
    """Rate every agent that met another agent in at least one finished episode."""
    comps: list[Comparison] = []
    seen: dict[str, int] = {}
    n_eps = 0
    for ep in episodes:
        c = comparisons(ep, label)
        if not c:
            continue
        n_eps += 1
        comps += c
        for a in {x for cc in c for x in (cc.a, cc.b)}:
            seen[a] = seen.get(a, 0) + 1
    table = RatingTable(scope=scope, episodes=n_eps, comparisons=len(comps))
    names = sorted(seen)
    if len(names) < 2:
        table.note = "ratings need episodes where at least two different agents played each other"
        return table
    theta, se = fit(comps, names)
    record = {a: [0.0, 0.0, 0.0] for a in names}  # wins, ties, losses
    for cmp in comps:
        k = 0 if cmp.score == 1 else 1 if cmp.score == 0.5 else 2
        record[cmp.a][k] += 1
        record[cmp.b][2 - k] += 1
    order = sorted(range(len(names)), key=lambda i: -theta[i])
    for rank, i in enumerate(order, 1):
        a, t, e = names[i], float(theta[i]), float(se[i])
        wins, ties, losses = record[a]
        table.ratings.append(
            Rating(
                rank=rank, agent=a, strength=t, se=e, lo=t - Z95 * e, hi=t + Z95 * e,
                elo=1500 + ELO_PER_LOGIT * t, elo_lo=1500 + ELO_PER_LOGIT * (t - Z95 * e),
                elo_hi=1500 + ELO_PER_LOGIT * (t + Z95 * e),
                wins=wins, ties=ties, losses=losses, episodes=seen[a],
            )
        )  # fmt: skip
    if not _connected(names, comps):
        table.note = "some agents never met, even through others: their relative ratings rest on the prior"
    return table


def _connected(names: list[str], comps: list[Comparison]) -> bool:
    parent = {a: a for a in names}

    def root(a: str) -> str:
        while parent[a] != a:
            a = parent[a]
        return a

    for c in comps:
        parent[root(c.a)] = root(c.b)
    return len({root(a) for a in names}) == 1
