"""Playing one episode: the env, one agent per seat, and the record of every turn.

`play_episode` plays a planned episode from a fresh reset; `continue_episode` plays an env on from
wherever it is (a branch's snapshot: see `prefs.branching`). Neither raises for a model failure:

- A model call that fails for infrastructure reasons (timeout, rate limit, 5xx, connection) is
  retried as a whole turn; if it keeps failing the episode is recorded as `aborted` with that
  status and no payoffs. A model that answers badly is not a failure: its text goes to the game,
  which answers with feedback like any invalid move.
- A game whose expressions fail at run time (an effect, a default move, a payoff: any error the
  engine records) is aborted too (`game_error`, with the engine's message), and so is an episode an
  agent gives up (a human closing stdin: `cancelled`): neither is ever scored.
- A scripted agent's policy rule that fails is skipped and kept in the record's `warnings`.
- Per turn only the acting players' observations are rendered, and the state diff of each tick is
  recorded (`Turn.changes`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..agents.base import CANCELLED, Agent, TurnReport
from ..compiled import compiled
from ..env import GameParallelEnv
from ..expr import copy_plain
from ..spec import GameSpec
from ..trajectory import FAILURE_STATUSES, CallInfo, Episode, PlayerInfo, Turn, Usage, cap_reply

if TYPE_CHECKING:
    from ..agents.factory import AgentFactory
    from .plan import EpisodeJob

TurnHook = Callable[[Episode, Turn], Awaitable[None] | None]

MAX_WARNINGS = 200  # policy warnings kept per episode
# Statuses that end an episode at once: retrying the turn cannot help.
EMPTY_REPLY = "the reply was empty"  # the client's error for a reply with no content (`llm.client`)
_FINAL_STATUSES = frozenset({"context_exceeded", "client_error", CANCELLED})


def _call_info(rep: TurnReport | None) -> CallInfo:
    if rep is None:
        return CallInfo()
    return CallInfo(
        status=rep.status,
        latency_s=rep.latency_s,
        prompt_tokens=rep.prompt_tokens,
        completion_tokens=rep.completion_tokens,
        cached_tokens=rep.cached_tokens,
        retries=rep.retries,
        attempts=list(rep.attempts),
        error=rep.error,
    )


def _state_of(env: GameParallelEnv) -> dict[str, Any]:
    e = env.engine
    return {"state": e.state, "P": e.pstate}


def _actors(env: GameParallelEnv) -> list[str]:
    """Live agents on turn now, without rendering anyone's observation (only actors' are needed)."""
    acting = env.engine.current_actors()
    return [p for p in env.agents if p in acting]


def _diff(before: Any, after: Any, path: str, out: list[dict[str, Any]]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        # In key order (not set order, which varies with the process's hash seed): same episode,
        # same record, whichever process played it.
        for k in [*before, *(k for k in after if k not in before)]:
            _diff(before.get(k), after.get(k), f"{path}.{k}" if path else str(k), out)
    elif before != after:
        out.append({"path": path, "old": before, "new": after})


class EpisodeAborted(Exception):
    def __init__(self, status: str, detail: str | None) -> None:
        super().__init__(status)
        self.status = status
        self.detail = detail


async def play_episode(
    job: EpisodeJob,
    spec: GameSpec,
    factory: AgentFactory,
    *,
    run_id: str = "",
    turn_retries: int = 2,
    on_turn: TurnHook | None = None,
    max_cycles: int | None = None,
    env: GameParallelEnv | None = None,
) -> Episode:
    """Play one episode to the end and return its record (never raises for model failures).

    `env` reuses an idle env of the same game, player count and `max_cycles` (reset here): building
    one costs more than several turns, and a runner worker plays its episodes one after another.
    """
    if env is None:
        env = GameParallelEnv(spec, n_players=job.n_players, max_cycles=max_cycles)
    env.restart(seed=job.seed)
    agents = build_agents(factory, env, job.agents, job.seed)
    ep = new_episode(job.episode_id, run_id, spec, env, job.agents, agents, job.seed)
    return await continue_episode(ep, env, agents, turn_retries=turn_retries, on_turn=on_turn)


def build_agents(
    factory: AgentFactory, env: GameParallelEnv, names: list[str], seed: int
) -> dict[str, Agent]:
    """One agent per seat; seeds depend on the episode seed and the seat only (rollouts reuse them)."""
    return {
        p: factory.build(name, p, seed * 1000 + i)
        for i, (p, name) in enumerate(zip(env.possible_agents, names, strict=False))
    }


def new_episode(
    episode_id: str,
    run_id: str,
    spec: GameSpec,
    env: GameParallelEnv,
    names: list[str],
    agents: dict[str, Agent],
    seed: int,
) -> Episode:
    """The record of an episode about to be played from `env`'s freshly reset state."""
    e = env.engine
    players = [
        PlayerInfo(
            player=p,
            agent=names[i],
            role=e.role[p],
            team=e.team[p],
            model=getattr(agents[p], "model", None),
            system=getattr(agents[p], "system", None),
            window=getattr(getattr(agents[p], "profile", None), "window", None),
        )
        for i, p in enumerate(env.possible_agents)
    ]
    ep = Episode(
        episode_id=episode_id,
        run_id=run_id,
        game=spec.id,
        spec_hash=compiled(spec).hash,  # cached: hashing the spec per episode costs ~0.2 ms
        options=spec.option_values(),
        seed=seed,
        n_players=len(env.possible_agents),
        players=players,
        status="complete",
        started_at=time.time(),
        initial_state=copy_plain({"state": e.state, "players": e.pstate}),
    )
    # The live logs, so a live view sees events and conduct flags as they happen.
    ep.events = e.events
    ep.flags = e.flags
    return ep


async def continue_episode(
    ep: Episode,
    env: GameParallelEnv,
    agents: dict[str, Agent],
    *,
    turn_retries: int = 2,
    on_turn: TurnHook | None = None,
    first_moves: dict[str, TurnReport] | None = None,
) -> Episode:
    """Play `env` from its current state to the end, appending turns to `ep`, then close the record.

    `first_moves` forces the replies of the first tick (a branch's candidate action).
    """
    e = env.engine
    t0 = time.perf_counter()
    usage = ep.usage
    try:
        while env.agents:
            # Only the actors' observations are rendered: a waiting player's would be thrown away.
            actors = _actors(env)
            failed: dict[str, list[CallInfo]]
            if first_moves is not None:
                reports, failed = {p: first_moves[p] for p in actors}, {}
                first_moves = None
            else:
                reports, failed = await _ask(actors, agents, env, turn_retries, usage)
            before = copy_plain(_state_of(env))
            tick, turn, phase = e.tick_no, e.turn, e.phase
            obs_before = {p: env.observe(p)["text"] for p in actors}
            env.advance({p: reports[p].raw for p in actors})
            changes: list[dict[str, Any]] = []
            _diff(before, _state_of(env), "", changes)
            for i, p in enumerate(actors):
                res = e.last_results.get(p)
                rep = reports[p]
                raw, dropped = cap_reply(rep.raw)
                t = Turn(
                    tick=tick,
                    turn=turn,
                    phase=phase,
                    player=p,
                    observation=obs_before[p],
                    prompt=rep.prompt,
                    raw=raw,
                    raw_dropped=dropped,
                    action=res.action if res and res.valid else None,
                    args=res.args if res and res.valid else None,
                    valid=bool(res and res.valid),
                    feedback=res.feedback if res else None,
                    call=_call_info(rep),
                    changes=changes if i == len(actors) - 1 else [],
                    failed_calls=failed.get(p, []),
                )
                ep.turns.append(t)
                if rep.warnings:
                    ep.warnings += [f"tick {tick}: {w}" for w in rep.warnings][
                        : MAX_WARNINGS - len(ep.warnings)
                    ]
                if on_turn is not None:
                    maybe = on_turn(ep, t)
                    if maybe is not None:
                        await maybe
    except EpisodeAborted as exc:
        ep.status = "aborted"
        ep.abort_reason = f"{exc.status}: {exc.detail}" if exc.detail else exc.status
    if ep.status != "aborted":
        _close_finished(ep, env)
    for info in ep.players:
        info.model = getattr(agents[info.player], "model", None) or info.model
    ep.end_reason = e.end_reason
    ep.flags = e.flags
    ep.invalid_counts = dict(e.invalid_total)
    ep.events = e.events
    ep.errors = e.errors
    ep.duration_s += time.perf_counter() - t0
    return ep


def _every_call_empty(ep: Episode) -> bool:
    """Whether the episode had model calls and each one got an empty reply after its retries: a
    server that answers with nothing is an infrastructure failure, not a player making invalid moves
    (its turns stay recorded, with their status and error)."""
    calls = [t.call for t in ep.turns if t.prompt is not None]
    return bool(calls) and all(
        c.status == "invalid_output" and (c.error or "").startswith(EMPTY_REPLY) for c in calls
    )


def _close_finished(ep: Episode, env: GameParallelEnv) -> None:
    """Status and scores of an episode played to its end. A game whose payoffs are not a score
    (`GameEngine.failure`: a spec error stopped it, a payoff is NaN, an expression failed while it
    ran) is `aborted` with `game_error` and the engine's message: never a complete episode."""
    e = env.engine
    if _every_call_empty(ep):
        ep.status = "aborted"
        ep.abort_reason = "empty_reply: every model call got an empty reply (after its retries)"
        return
    failure = e.failure()
    if failure is not None:
        ep.status = "aborted"
        ep.abort_reason = failure
        return
    payoffs = dict(e.payoffs or {})
    ep.status = "truncated" if e.truncated else "complete"
    ep.payoffs = payoffs
    ep.best = e.best
    ep.outcomes = e.outcomes


async def _ask(
    actors: list[str],
    agents: dict[str, Agent],
    env: GameParallelEnv,
    turn_retries: int,
    usage: Usage,
) -> tuple[dict[str, TurnReport], dict[str, list[CallInfo]]]:
    """Ask every actor for its move (concurrently); retry turns whose call failed for infra reasons."""
    reports: dict[str, TurnReport] = {}
    failed: dict[str, list[CallInfo]] = {}
    pending = list(actors)
    for attempt in range(turn_retries + 1):
        if len(pending) == 1:  # most turns: no task to create, no extra trip through a busy loop
            p = pending[0]
            await agents[p].act(env.observe(p), env.agent_info(p))
        else:
            await asyncio.gather(*(agents[p].act(env.observe(p), env.agent_info(p)) for p in pending))
        still = []
        for p in pending:
            rep = agents[p].last or TurnReport(raw="")
            if rep.status == CANCELLED:  # the agent left (a human closed stdin): not a failed call
                raise EpisodeAborted(rep.status, rep.error)
            if rep.prompt is not None:  # a model call happened
                usage.calls += 1
                usage.prompt_tokens += rep.prompt_tokens
                usage.completion_tokens += rep.completion_tokens
                usage.latency_s += rep.latency_s
            if rep.status in FAILURE_STATUSES:
                usage.failed_calls += 1
                failed.setdefault(p, []).append(_call_info(rep))
                if attempt == turn_retries or rep.status in _FINAL_STATUSES:
                    raise EpisodeAborted(rep.status, rep.error)
                still.append(p)
            else:
                reports[p] = rep
        pending = still
        if not pending:
            break
    return reports, failed
