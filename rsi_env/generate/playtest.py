"""Play-testing a spec that passed its static checks: does it work, and does playing well matter?

In order, stopping at the first failure (each failure names its reason):
1. length: a game with no end condition (no `end.when`, no `goto: end`) and a turn limit above
   MAX_TURNS is an infinite game; nothing is played.
2. battery: PettingZoo's `api_test`, `parallel_api_test`, seed, max-cycles and render tests, and an
   exact snapshot/restore replay (what `tests/test_games.py` runs on every game).
3. episodes: random, scripted and noisy (30% garbage replies) self-play, at the smallest, default
   and largest player counts. Every episode must end by itself (not by the tick cap, nor still
   going after MAX_TURNS turns) with no runtime error in a spec expression; a declared end
   condition must fire in at least one episode (else it is unreachable); payoffs must vary.
4. actions: the same seeds played by different policies must not always pay the same; a game
   whose payoff ignores what players do is rejected.
5. skill: the battery's own test, with its seeds: per seat, the scripted policy (others random)
   against all-random play; the mean gain must exceed twice its standard error.
Along the way it measures the procedural metrics the ranking uses: branching factor, outcome
spread, skill signal and mean length.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from ..agents.baseline import RandomAgent, ScriptedAgent, schema_branches
from ..engine import GameEngine
from ..env import game_module
from ..expr import seeded_rng
from ..spec import GameSpec
from ..view import action_schema, player_view

MAX_TURNS = 300  # longer games are not worth an LLM's time (and a play-test must finish)
EPISODES = 40  # random and scripted self-play episodes each, at the default player count
SKILL_SEEDS = 120  # per seat, as tests/test_games.py::test_scripted_beats_random
_GAME_ENDS = {"end condition", "phase transition", "no actors left"}
_GARBAGE = ["", "pass", "{}", '{"action": "nothing"}', "I'm thinking about it.", "{{{", "null"]


class ProceduralMetrics(BaseModel):
    """What the play-test measured (inputs to the procedural ranking)."""

    episodes: int = 0
    branching_factor: float = 0.0  # geometric mean of distinct legal moves per decision
    outcome_std: float = 0.0  # std of payoffs / payoff scale, over random and scripted episodes
    payoff_scale: float = 1.0  # the spec's `best` when declared, else the largest |payoff| seen
    skill_gain: float = 0.0  # scripted minus random payoff, per seat and seed, in payoff units
    skill_stderr: float = 0.0
    skill_z: float = 0.0  # gain / standard error (capped at 99)
    mean_length: float = 0.0  # turns per episode (random self-play)
    end_reasons: dict[str, int] = Field(default_factory=dict)


class PlaytestResult(BaseModel):
    passed: bool
    reason: str | None = None  # why it failed, one line
    failed_check: str | None = None  # length | battery | episodes | actions | skill
    checks: dict[str, str] = Field(default_factory=dict)  # check -> "ok" or the failure
    metrics: ProceduralMetrics | None = None
    duration_s: float = 0.0


class PlaytestFailure(Exception):
    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check = check
        self.reason = reason


@dataclass
class EpisodeResult:
    seed: int
    n: int
    end_reason: str | None
    done: bool
    turns: int
    ticks: int
    payoffs: dict[str, float]
    best: dict[str, float | None]
    errors: list[str]
    log2_moves: list[float] = field(default_factory=list)


Chooser = Callable[[GameEngine, str], str]


def declares_end(spec: GameSpec) -> bool:
    """Whether the game can end other than by its turn limit: an `end.when` or a `goto: end`."""
    when = " ".join(spec.end.when.split())
    return when not in ("false", "") or any(t.goto == "end" for ph in spec.phases for t in ph.next)


def legal_moves(schema: dict[str, Any] | None) -> int:
    """Distinct legal moves in an action schema: per action, the product of its parameters' domain
    sizes (ints by range, enums and players by choices, bools 2; free text and floats count once)."""
    total = 0
    for b in schema_branches(schema):
        count = 1
        for k, s in b["properties"].items():
            if k in ("action", "message"):
                continue
            if "enum" in s:
                size = max(1, len(s["enum"]))
            elif s.get("type") == "integer" and "minimum" in s and "maximum" in s:
                size = max(1, int(s["maximum"]) - int(s["minimum"]) + 1)
            elif s.get("type") == "boolean":
                size = 2
            else:
                size = 1
            count *= size if k in b["required"] else size + 1
        total += min(count, 10_000)
    return max(total, 1)


def agent_chooser(agent: RandomAgent | ScriptedAgent) -> Chooser:
    def choose(engine: GameEngine, p: str) -> str:
        info: dict[str, Any] = {"action_schema": action_schema(engine, p)}
        if isinstance(agent, ScriptedAgent):
            info["view"] = player_view(engine, p)
        return agent.choose(info)

    return choose


def _noisy_chooser(seed: int) -> Chooser:
    """Random legal moves, but 30% of replies are garbage: exercises passes and default moves."""
    agent, rng = RandomAgent(seed), seeded_rng(seed + 7)
    inner = agent_chooser(agent)

    def choose(engine: GameEngine, p: str) -> str:
        if rng.random() < 0.3:
            return _GARBAGE[int(rng.integers(len(_GARBAGE)))]
        return inner(engine, p)

    return choose


def play(
    spec: GameSpec,
    seed: int,
    choosers: dict[str, Chooser],
    n_players: int | None = None,
    max_ticks: int | None = None,
    measure: bool = False,
) -> EpisodeResult:
    """One episode on the bare engine (what the Parallel env does per step, without rendering)."""
    engine = GameEngine(spec, n_players=n_players, max_ticks=max_ticks)
    engine.reset(seed)
    log2_moves: list[float] = []
    while not engine.done:
        moves = {}
        for p in engine.current_actors():
            if measure:
                log2_moves.append(math.log2(legal_moves(action_schema(engine, p))))
            moves[p] = choosers[p](engine, p)
        engine.tick(moves)
    return EpisodeResult(
        seed=seed,
        n=len(engine.players),
        end_reason=engine.end_reason,
        done=engine.done,
        turns=engine.turn,
        ticks=engine.tick_no,
        payoffs=dict(engine.payoffs or {}),
        best=dict(engine.best or {}),
        errors=list(engine.errors),
        log2_moves=log2_moves,
    )


def random_agents(players: list[str], seed: int) -> dict[str, Chooser]:
    # The battery's seeding (tests/test_games.py::_agents), so the skill verdicts are the same.
    return {p: agent_chooser(RandomAgent(seed * 31 + i)) for i, p in enumerate(players)}


def _players(spec: GameSpec, n: int | None = None) -> list[str]:
    n = n if n is not None else (spec.players.default or spec.players.min)
    return [f"player_{i}" for i in range(n)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # PettingZoo warns that Text spaces are not Box/Discrete (the design), and its tests print progress.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def check_length(spec: GameSpec) -> None:
    if not declares_end(spec) and spec.end.turn_limit > MAX_TURNS:
        raise PlaytestFailure(
            "length",
            f"infinite game: no end condition (no `end.when`, no `goto: end`) and a turn limit of "
            f"{spec.end.turn_limit} turns (the play-test cap is {MAX_TURNS})",
        )


def check_battery(spec: GameSpec) -> None:
    """PettingZoo's tests and an exact snapshot/restore replay, as the env battery runs them."""
    from pettingzoo.test import (
        api_test,
        max_cycles_test,
        parallel_api_test,
        parallel_seed_test,
        render_test,
        seed_test,
    )

    m = game_module(spec)
    tests: list[tuple[str, Callable[[], Any]]] = [
        ("api_test", lambda: api_test(m.env(), num_cycles=200)),
        ("parallel_api_test", lambda: parallel_api_test(m.parallel_env(), num_cycles=200)),
        ("seed_test", lambda: seed_test(m.env, num_cycles=40)),
        ("parallel_seed_test", lambda: parallel_seed_test(m.parallel_env, num_cycles=40)),
        ("max_cycles_test", lambda: max_cycles_test(m)),
        ("render_test", lambda: render_test(m.env)),
        ("snapshot/restore", lambda: snapshot_replay(spec)),
    ]
    for name, run in tests:
        try:
            with _quiet():
                run()
        except Exception as exc:  # any failure of a third-party test is a failed check, with its message
            raise PlaytestFailure("battery", f"PettingZoo/env test `{name}` failed: {_short(exc)}") from None


def snapshot_replay(spec: GameSpec) -> None:
    """Random moves for three ticks, a snapshot, scripted play to the end; after `restore` the same
    moves give exactly the same steps (observations, rewards, infos). The env test battery runs it too."""
    from ..env import make_parallel

    env = make_parallel(spec)
    _obs, infos = env.reset(seed=7)
    agents = {p: RandomAgent(i) for i, p in enumerate(env.possible_agents)}
    for _ in range(3):
        if not env.agents:
            break
        *_, infos = env.step({p: agents[p].choose(infos[p]) for p in env.agents})
    snap = env.snapshot()
    scripted = {p: ScriptedAgent(spec, seed=3) for p in env.possible_agents}
    first, log = [], []
    while env.agents:
        moves = {p: scripted[p].choose(infos[p]) for p in env.agents}
        log.append(moves)
        step = env.step(moves)
        infos = step[4]
        first.append(step)
    env.restore(snap)
    if [env.step(m) for m in log] != first:
        raise AssertionError("replaying the same moves after restore() gave different results")
    if not env.engine.done:
        raise AssertionError("the replayed episode did not end where the first one did")


def _episodes(spec: GameSpec, n_episodes: int) -> dict[str, list[EpisodeResult]]:
    cap = None
    if spec.end.turn_limit > MAX_TURNS:
        cap = MAX_TURNS * (spec.invalid_actions.allowance + 1) + 10
    players = _players(spec)
    out: dict[str, list[EpisodeResult]] = {"random": [], "scripted": [], "noisy": [], "sizes": []}
    for seed in range(n_episodes):
        out["random"].append(
            play(spec, 10_000 + seed, random_agents(players, seed), max_ticks=cap, measure=True)
        )
        scripted = {p: agent_chooser(ScriptedAgent(spec, seed=seed * 31 + i)) for i, p in enumerate(players)}
        out["scripted"].append(play(spec, 10_000 + seed, scripted, max_ticks=cap))
    for seed in range(max(4, n_episodes // 4)):
        noisy = {p: _noisy_chooser(seed * 31 + i) for i, p in enumerate(players)}
        out["noisy"].append(play(spec, 20_000 + seed, noisy, max_ticks=cap))
    for n in sorted({spec.players.min, spec.players.max} - {len(players)}):
        ps = _players(spec, n)
        for seed in range(max(4, n_episodes // 8)):
            out["sizes"].append(
                play(spec, 30_000 + seed, random_agents(ps, seed), n_players=n, max_ticks=cap)
            )
    return out


def check_episodes(spec: GameSpec, eps: dict[str, list[EpisodeResult]]) -> None:
    every = [e for group in eps.values() for e in group]
    m = len(every)
    with_errors = [e for e in every if e.errors]
    if with_errors:
        raise PlaytestFailure(
            "episodes",
            f"runtime errors in {len(with_errors)}/{m} episodes, e.g. (n={with_errors[0].n}, seed "
            f"{with_errors[0].seed}): {with_errors[0].errors[0][:200]}",
        )
    over = [e for e in every if e.turns >= MAX_TURNS and e.end_reason not in _GAME_ENDS]
    if spec.end.turn_limit > MAX_TURNS and over:
        raise PlaytestFailure(
            "episodes",
            f"infinite game: {len(over)}/{m} episodes had not ended after {MAX_TURNS} turns "
            f"(turn limit {spec.end.turn_limit})",
        )
    stuck = [e for e in every if e.end_reason == "tick limit"]
    if stuck:
        raise PlaytestFailure(
            "episodes",
            f"episodes do not terminate within the turn limit: {len(stuck)}/{m} were cut off at the "
            f"tick cap after {stuck[0].turns} of {spec.end.turn_limit} turns (a phase that never ends?)",
        )
    reasons = Counter(e.end_reason for e in every)
    if declares_end(spec) and not any(r in _GAME_ENDS for r in reasons):
        raise PlaytestFailure(
            "episodes",
            f"end condition never reached: {reasons.get('turn limit', 0)}/{m} episodes hit the turn limit "
            f"(random, scripted and noisy play; `end.when: {' '.join(spec.end.when.split())[:80]}`)",
        )
    bad = [e for e in every if any(not math.isfinite(v) for v in e.payoffs.values())]
    if bad:
        raise PlaytestFailure("episodes", f"payoff is not a finite number in {len(bad)}/{m} episodes")
    values = {round(v, 9) for e in every for v in e.payoffs.values()}
    if len(values) < 2:
        raise PlaytestFailure(
            "episodes", f"payoffs never vary: every player in all {m} episodes got {next(iter(values), 0):g}"
        )


def check_actions_matter(spec: GameSpec, seeds: int = 20) -> None:
    """Same seeds, different policies: if every payoff is always the same, actions do not matter."""
    players = _players(spec)
    for seed in range(seeds):
        outcomes = {
            json.dumps(play(spec, seed, random_agents(players, seed)).payoffs, sort_keys=True),
            json.dumps(play(spec, seed, random_agents(players, seed + 1000)).payoffs, sort_keys=True),
        }
        for i, p in enumerate(players):
            agents = random_agents(players, seed)
            agents[p] = agent_chooser(ScriptedAgent(spec, seed=seed * 31 + i))
            outcomes.add(json.dumps(play(spec, seed, agents).payoffs, sort_keys=True))
        if len(outcomes) > 1:
            return
    raise PlaytestFailure(
        "actions",
        f"payoff ignores actions: scripted and random agents get identical payoff distributions "
        f"(the same payoffs for every policy on each of {seeds} seeds)",
    )


def skill_signal(spec: GameSpec, seeds: int = SKILL_SEEDS) -> tuple[float, float]:
    """Mean gain of the scripted policy over random, seat by seat on the same seeds, and its s.e."""
    players = _players(spec)
    gains = []
    for seat in players:
        for seed in range(seeds):
            agents = random_agents(players, seed)
            agents[seat] = agent_chooser(ScriptedAgent(spec, seed=seed))
            a = play(spec, seed, agents)
            b = play(spec, seed, random_agents(players, seed))
            if a.errors or b.errors:
                raise PlaytestFailure(
                    "skill", f"runtime error while measuring skill: {(a.errors or b.errors)[0]}"
                )
            gains.append(a.payoffs[seat] - b.payoffs[seat])
    arr = np.array(gains, dtype=float)
    stderr = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    return float(arr.mean()), stderr


def playtest(spec: GameSpec, episodes: int = EPISODES, skill_seeds: int = SKILL_SEEDS) -> PlaytestResult:
    """Run every check in order; the first failure is the result's reason."""
    t0 = time.monotonic()
    checks: dict[str, str] = {}
    metrics = ProceduralMetrics()
    try:
        check_length(spec)
        checks["length"] = "ok"
        check_battery(spec)
        checks["battery"] = "ok"
        eps = _episodes(spec, episodes)
        _measure(spec, eps, metrics)
        check_episodes(spec, eps)
        checks["episodes"] = "ok"
        check_actions_matter(spec)
        checks["actions"] = "ok"
        gain, stderr = skill_signal(spec, skill_seeds)
        metrics.skill_gain, metrics.skill_stderr = gain, stderr
        metrics.skill_z = min(99.0, gain / stderr) if stderr > 0 else (99.0 if gain > 0 else 0.0)
        if not (gain > 2 * stderr if stderr > 0 else gain > 0):
            raise PlaytestFailure(
                "skill",
                f"no skill signal: the scripted policy gains {gain:+.3g} ± {stderr:.2g} per episode over "
                f"random play (needs more than 2 standard errors)",
            )
        checks["skill"] = "ok"
    except PlaytestFailure as f:
        checks[f.check] = f.reason
        return PlaytestResult(
            passed=False,
            reason=f.reason,
            failed_check=f.check,
            checks=checks,
            metrics=metrics if metrics.episodes else None,
            duration_s=time.monotonic() - t0,
        )
    return PlaytestResult(passed=True, checks=checks, metrics=metrics, duration_s=time.monotonic() - t0)


def _measure(spec: GameSpec, eps: dict[str, list[EpisodeResult]], m: ProceduralMetrics) -> None:
    rnd, scr = eps["random"], eps["scripted"]
    every = [e for group in eps.values() for e in group]
    m.episodes = len(every)
    m.end_reasons = dict(Counter(str(e.end_reason) for e in every))
    logs = [x for e in rnd for x in e.log2_moves]
    m.branching_factor = float(2 ** np.mean(logs)) if logs else 1.0
    m.mean_length = float(np.mean([e.turns for e in rnd])) if rnd else 0.0
    bests = [b for e in rnd + scr for b in e.best.values() if isinstance(b, int | float) and b > 0]
    pays = [v for e in rnd + scr for v in e.payoffs.values() if math.isfinite(v)]
    scale = float(np.mean(bests)) if bests else max([abs(v) for v in pays] + [0.0])
    m.payoff_scale = scale if scale > 0 else 1.0
    m.outcome_std = float(np.std(pays) / m.payoff_scale) if pays else 0.0
