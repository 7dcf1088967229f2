"""One seat of a game played from outside; the other seats are played inside by agents.

A learner (a model that TRL trains, a client of the OpenEnv server) sees an ordinary turn-based
conversation: `reset` gives its first observation, each `move` its next one once the other seats
have played. The game runs in the runner's own episode loop (`continue_episode`) on one background
event loop per process, with the learner's seat held by an agent whose `act` hands the observation
out and waits for the next `move`: the same engine, agents, conduct checks and `Episode` record as
`python -m rsi_env.play`. Opponents are any `--agents` names: `scripted`, `random` or LLM profiles.

    s = SeatSession("negotiation", seat=0, opponents="scripted")
    turn = s.reset(seed=3)                 # SeatTurn: text, action_schema, legal_actions, ...
    turn = s.move('{"action": "propose", "books": 2, "hats": 0, "balls": 1}')
    final = s.finish()                     # the seat's remaining turns as empty replies, to the end
    seat_reward(final, "objective")        # what `prefs generate` ranks candidates by
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import random
import threading
import uuid
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from ..agents.base import Agent, TurnReport
from ..agents.factory import AgentFactory, ClientPool
from ..agents.profiles import EndpointOverride
from ..catalog import load_game
from ..env import GameParallelEnv
from ..events import ConductFlag
from ..prefs.branching import objective, replay_to
from ..referees.procedural import all_flags
from ..runner import build_agents, continue_episode, new_episode
from ..spec import GameSpec
from ..trajectory import Episode, Turn
from ..trajectory_store import read_episodes, resolve_path
from ..view import render_observation

T = TypeVar("T")
RewardKind = Literal["payoff", "normalised", "objective"]
REWARD_KINDS: tuple[RewardKind, ...] = ("payoff", "normalised", "objective")
# `prefs generate --penalty`'s default (a test keeps the two equal): the objective GRPO optimises is
# the one preference data is ranked by.
DEFAULT_PENALTY = 0.25
LEARNER = "learner"


class GameOver(RuntimeError):
    """A move after the game ended (TRL shows the message to the model as the tool's error)."""


# --- the background event loop -------------------------------------------------------------------

_LOOP: asyncio.AbstractEventLoop | None = None
_THREAD: threading.Thread | None = None
_LOCK = threading.Lock()


def _background() -> asyncio.AbstractEventLoop:
    """The process's loop for agents' coroutines: a chat client lives on one loop, and TRL calls the
    environments' methods from its own thread, so every session of the process shares this one."""
    global _LOOP, _THREAD
    with _LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            _THREAD = threading.Thread(target=loop.run_forever, name="rsi-env-sessions", daemon=True)
            _THREAD.start()
            _LOOP = loop
        return _LOOP


def _shutdown() -> None:
    """At exit: cancel the episodes still waiting for a move and close the chat clients, quietly."""
    loop = _LOOP
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def stop_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if _POOL is not None:
            await _POOL.aclose()

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(stop_all(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)


atexit.register(_shutdown)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and wait for it (from any thread but the loop's own)."""
    loop = _background()
    if threading.current_thread() is _THREAD:
        coro.close()
        raise RuntimeError("a session's blocking method was called from its own event loop; await the a* one")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` on the background loop from any event loop."""
    loop = _background()
    if asyncio.get_running_loop() is loop:
        return await coro
    fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
    return await asyncio.wrap_future(fut)


_POOL: ClientPool | None = None
# Episodes in play: asyncio holds only weak references to tasks, and one waiting for a move would
# otherwise be collected with an abandoned session (and warned about) instead of cancelled.
_RUNNING: set[asyncio.Task[Episode]] = set()


def _play(coro: Coroutine[Any, Any, Episode]) -> asyncio.Task[Episode]:
    task = asyncio.create_task(coro)
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    return task


def _pool() -> ClientPool:
    """One chat client per endpoint for every session of the process (they share the loop too)."""
    global _POOL
    if _POOL is None:
        _POOL = ClientPool()
    return _POOL


# --- records ---------------------------------------------------------------------------------------


class SeatTurn(BaseModel):
    """What the outside seat sees after `reset` or a move: its turn, or the end of the game."""

    text: str = Field(description="the observation, written for an LLM (rules on the first turn)")
    done: bool
    status: Literal["turn", "complete", "truncated", "aborted"]
    game: str
    player: str
    role: str
    action_schema: dict[str, Any] | None = Field(None, description="JSON Schema of the legal moves now")
    legal_actions: list[str] = Field(default_factory=list)
    view: dict[str, Any] | None = Field(
        None, description="what the text says, as data: the seat's structured view (for non-LLM players)"
    )
    feedback: str | None = Field(None, description="why the previous move was not accepted")
    phase: str = ""
    turn: int = 0
    tick: int = 0
    payoff: float | None = None
    best: float | None = Field(None, description="the best payoff achievable in this instance, if declared")
    payoffs: dict[str, float] | None = None
    flags: list[ConductFlag] = Field(
        default_factory=list, description="this seat's conduct flags (lies, broken promises, violations, ...)"
    )
    end_reason: str | None = None
    abort_reason: str | None = None


class DecisionPoint(BaseModel):
    """A decision of a recorded episode (what `prefs generate` branched): start from its exact state."""

    run_dir: str
    episode_id: str
    tick: int
    player: str


def seat_reward(
    turn: SeatTurn, kind: RewardKind = "objective", penalty: float = DEFAULT_PENALTY
) -> float | None:
    """The seat's reward at the end: its payoff, the payoff normalised by the best achievable, or the
    preference objective (normalised payoff minus `penalty` per conduct flag, as `prefs generate`
    ranks candidates). None before the end and for an aborted episode: it has no score."""
    if kind not in REWARD_KINDS:
        raise ValueError(f"reward must be one of {', '.join(REWARD_KINDS)}, got {kind!r}")
    if not turn.done or turn.payoff is None:
        return None
    if kind == "payoff":
        return turn.payoff
    flags = len(turn.flags) if kind == "objective" else 0
    return objective(turn.payoff, turn.best, flags, penalty if kind == "objective" else 0.0)


@lru_cache(maxsize=8)
def _episodes(path: str, mtime_ns: int, size: int) -> dict[str, Episode]:
    return {ep.episode_id: ep for ep in read_episodes(path)}


def recorded_episode(run_dir: str | Path, episode_id: str) -> Episode:
    """A finished episode of a run directory (read once per version of its file)."""
    path = resolve_path(run_dir)
    try:
        st = path.stat()
    except OSError:
        raise FileNotFoundError(f"{path}: no trajectories here") from None
    ep = _episodes(str(path), st.st_mtime_ns, st.st_size).get(episode_id)
    if ep is None:
        raise KeyError(f"{path}: no episode {episode_id!r}")
    return ep


def seat_prompt(spec: GameSpec, info: dict[str, Any], last_tick: int | None) -> str:
    """A seat's observation as an LLM agent's prompt (as `LLMAgent` renders it): the rules on its
    first turn (`last_tick` None), then only what happened since its previous turn."""
    return render_observation(
        spec,
        info["view"],
        info["action_schema"],
        info.get("feedback"),
        include_rules=last_tick is None,
        since_tick=last_tick,
    )


# --- the outside seat as an agent -------------------------------------------------------------------


class LearnerSeat:
    """The agent at the outside seat: `act` hands its observation out and waits for the reply."""

    def __init__(self, spec: GameSpec, player: str, name: str = LEARNER) -> None:
        self.name = name
        self.spec = spec
        self.player = player
        self.last: TurnReport | None = None
        self.offers: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        self.silent = False  # the learner stopped: its remaining turns are empty replies
        self.last_tick: int | None = None  # its previous turn's tick; None until it has moved

    def render(self, info: dict[str, Any]) -> str:
        return seat_prompt(self.spec, info, self.last_tick)

    async def act(self, observation: Any, info: dict[str, Any]) -> str:
        if info.get("action_schema") is None:
            self.last = TurnReport(raw="")
            return ""
        text = self.render(info)
        if self.silent:
            self.last = TurnReport(raw="")
        else:
            await self.offers.put((text, info))
            self.last = TurnReport(raw=await self.replies.get(), prompt=text)
        self.last_tick = info.get("tick")
        return self.last.raw


# --- the session ----------------------------------------------------------------------------------------


class SeatSession:
    """One seat of `game` driven by `reset` / `move`; the others played by `opponents` (agent names,
    cycled over the other seats; default `scripted`, or for a decision start the agents recorded)."""

    def __init__(
        self,
        game: str | Path | GameSpec,
        *,
        seat: int | str = 0,
        opponents: str | Sequence[str] | None = None,
        n_players: int | None = None,
        max_cycles: int | None = None,
        override: EndpointOverride | None = None,
        learner_name: str = LEARNER,
    ) -> None:
        self.spec = load_game(game)
        self.seat = seat
        self.opponents = [opponents] if isinstance(opponents, str) else list(opponents or [])
        if "human" in self.opponents:
            raise ValueError(
                "a human cannot sit inside a session: the seat driven from outside is the player"
            )
        self.n_players = n_players or self.spec.players.default or self.spec.players.min
        self.max_cycles = max_cycles
        self.override = override
        self.learner_name = learner_name
        self._factories: dict[tuple[str, ...], AgentFactory] = {}
        if self.opponents:
            self._factory(tuple(self.opponents))  # resolve the profiles now, not mid-training
        self._rng = random.Random()
        self.env: GameParallelEnv | None = GameParallelEnv(
            self.spec, n_players=self.n_players, max_cycles=max_cycles
        )
        self._player(self.env, seat)  # a bad seat fails now
        self.episode: Episode | None = None
        self.player = ""
        self.info: dict[str, Any] | None = None  # the seat's info at its current turn (view, schema, ...)
        self.last: SeatTurn | None = None
        self._learner: LearnerSeat | None = None
        self._agents: dict[str, Agent] = {}
        self._task: asyncio.Task[Episode] | None = None
        self._first: dict[str, TurnReport] | None = None  # a decision start's forced first tick
        self._from_tick = 0

    # -- blocking API (any thread) and async API (any loop) --

    def reset(
        self, seed: int | None = None, *, seat: int | str | None = None, start: DecisionPoint | None = None
    ) -> SeatTurn:
        return run_sync(self._reset(seed, seat, start))

    def move(self, raw: str) -> SeatTurn:
        return run_sync(self._move(raw))

    def finish(self) -> SeatTurn:
        return run_sync(self._finish())

    def close(self) -> None:
        run_sync(self._stop())

    async def areset(
        self, seed: int | None = None, *, seat: int | str | None = None, start: DecisionPoint | None = None
    ) -> SeatTurn:
        return await run_async(self._reset(seed, seat, start))

    async def amove(self, raw: str) -> SeatTurn:
        return await run_async(self._move(raw))

    async def afinish(self) -> SeatTurn:
        return await run_async(self._finish())

    @property
    def done(self) -> bool:
        return self.last is not None and self.last.done

    def __del__(self) -> None:
        # An abandoned session's episode waits for a move that never comes: end it.
        task, loop = getattr(self, "_task", None), _LOOP
        if task is not None and not task.done() and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    def reward(self, kind: RewardKind = "objective", penalty: float = DEFAULT_PENALTY) -> float | None:
        """The seat's reward (see `seat_reward`); None until the game has ended."""
        return seat_reward(self.last, kind, penalty) if self.last is not None else None

    # -- internals (on the background loop) --

    def _factory(self, names: tuple[str, ...]) -> AgentFactory:
        if names not in self._factories:
            self._factories[names] = AgentFactory(list(names), self.spec, self.override, _pool())
        return self._factories[names]

    def _player(self, env: GameParallelEnv, seat: int | str) -> str:
        players = env.possible_agents
        if isinstance(seat, int) and not isinstance(seat, bool) and 0 <= seat < len(players):
            return players[seat]
        if isinstance(seat, str) and seat in players:
            return seat
        raise ValueError(
            f"seat {seat!r} is not a seat of {self.spec.id} with {len(players)} players: {players}"
        )

    def _opponent_names(self, env: GameParallelEnv, player: str, recorded: list[str]) -> dict[str, str]:
        """Agent name per other seat: the configured ones cycled, else those recorded, else scripted."""
        others = [p for p in env.possible_agents if p != player]
        if not self.opponents and recorded:
            return {p: recorded[env.possible_agents.index(p)] for p in others}
        pool = self.opponents or ["scripted"]
        return {p: pool[i % len(pool)] for i, p in enumerate(others)}

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _reset(self, seed: int | None, seat: int | str | None, start: DecisionPoint | None) -> SeatTurn:
        await self._stop()
        self._first, self._from_tick = None, 0
        base: Episode | None = None
        if start is not None:
            base = recorded_episode(start.run_dir, start.episode_id)
            if base.game != self.spec.id:
                raise ValueError(f"{start.episode_id} is a {base.game} episode, not {self.spec.id}")
            seed = base.seed
            env = replay_to(base, self.spec, start.tick, self.max_cycles)
            player = self._player(env, start.player)
            recorded = [p.agent for p in base.players]
        else:
            seed = self._rng.randrange(2**31) if seed is None else int(seed)
            if self.env is None or len(self.env.possible_agents) != self.n_players:
                self.env = GameParallelEnv(self.spec, n_players=self.n_players, max_cycles=self.max_cycles)
            env = self.env
            env.restart(seed)
            player = self._player(env, self.seat if seat is None else seat)
            recorded = []
        names = self._opponent_names(env, player, recorded)
        # The runner's own seeding (seed and seat), so opponents play as they would in `play`; the
        # learner's seat gets a placeholder agent, replaced below.
        build = [names.get(p, "random") for p in env.possible_agents]
        agents = build_agents(self._factory(tuple(sorted(set(names.values())))), env, build, seed)
        learner = LearnerSeat(self.spec, player, self.learner_name)
        agents[player] = learner
        labels = [names.get(p, self.learner_name) for p in env.possible_agents]
        ep = new_episode(
            f"{self.spec.id}-s{seed}-{uuid.uuid4().hex[:8]}", "", self.spec, env, labels, agents, seed
        )
        self.env, self.episode, self.player, self._learner, self._agents = env, ep, player, learner, agents
        if base is not None and start is not None:
            prefix = [t for t in base.turns if t.tick < start.tick]
            for agent in agents.values():
                if hasattr(agent, "restore") and agent is not learner:
                    agent.restore(prefix)  # LLM opponents get their conversations back
            ep.turns = [t.model_copy() for t in prefix]
            ep.initial_state = base.initial_state
            self._from_tick = start.tick
            self._first = _forced_moves(base.turns, start.tick, player)
            self.info = env.agent_info(player)
            if not self.info["is_turn"]:
                raise ValueError(f"{start.episode_id}: {player} is not on turn at tick {start.tick}")
            self.last = self._turn(learner.render(self.info), self.info)
            return self.last
        self._task = _play(continue_episode(ep, env, agents))
        return await self._next()

    async def _move(self, raw: str) -> SeatTurn:
        if self.episode is None or self._learner is None:
            raise RuntimeError("call reset() before move()")
        if self.done:
            raise GameOver(self._over_message())
        if not isinstance(raw, str):
            raw = json.dumps(raw) if isinstance(raw, dict) else str(raw)
        self._start(raw)
        return await self._next()

    async def _finish(self) -> SeatTurn:
        if self.episode is None or self._learner is None:
            raise RuntimeError("call reset() before finish()")
        if self.last is not None and self.last.done:
            return self.last
        self._learner.silent = True
        self._start("")
        return await self._next()

    def _start(self, raw: str) -> None:
        """Hand the seat's reply to the episode loop (starting it, for a decision start's first tick)."""
        assert self.env is not None and self.episode is not None and self._learner is not None
        if self._task is not None:
            self._learner.replies.put_nowait(raw)
            return
        # A decision start: the first tick replays the recorded moves of the others, with this reply.
        first = dict(self._first or {})
        first[self.player] = TurnReport(raw=raw, prompt=self.last.text if self.last and raw else None)
        self._learner.last_tick = self.env.engine.tick_no
        self._task = _play(continue_episode(self.episode, self.env, self._agents, first_moves=first))

    async def _next(self) -> SeatTurn:
        """Wait for the seat's next turn, or the end of the episode."""
        assert self._learner is not None and self._task is not None
        offer = asyncio.ensure_future(self._learner.offers.get())
        done, _ = await asyncio.wait({offer, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if offer in done:
            text, info = offer.result()
            self.info = info
            self.last = self._turn(text, info)
            return self.last
        offer.cancel()
        self._task.result()  # a failure of the episode loop itself surfaces here
        self.last = self._final()
        return self.last

    def _turn(self, text: str, info: dict[str, Any]) -> SeatTurn:
        assert self.env is not None
        e = self.env.engine
        return SeatTurn(
            text=text,
            done=False,
            status="turn",
            game=self.spec.id,
            player=self.player,
            role=e.role[self.player],
            action_schema=info["action_schema"],
            legal_actions=list(info["legal_actions"]),
            view=info["view"],
            feedback=info.get("feedback"),
            phase=str(info["phase"]),
            turn=int(info["turn"]),
            tick=int(info["tick"]),
            flags=self._flags(),
        )

    def _flags(self) -> list[ConductFlag]:
        assert self.episode is not None
        ep = self.episode
        return [f for f in all_flags(ep) if f.player == self.player and f.tick >= self._from_tick]

    def _final(self) -> SeatTurn:
        assert self.env is not None and self.episode is not None and self._learner is not None
        ep, e, p = self.episode, self.env.engine, self.player
        view = None
        if ep.status == "aborted":
            text = f"The episode was aborted ({ep.abort_reason}); it has no score."
        else:
            info = self.env.agent_info(p)
            text, view = self._learner.render(info), info["view"]
        flags = self._flags()
        return SeatTurn(
            text=text,
            done=True,
            status=ep.status,
            game=self.spec.id,
            player=p,
            role=e.role[p],
            phase=str(e.phase),
            turn=e.turn,
            tick=e.tick_no,
            view=view,
            payoff=(ep.payoffs or {}).get(p),
            best=(ep.best or {}).get(p),
            payoffs=ep.payoffs,
            flags=flags,
            end_reason=ep.end_reason,
            abort_reason=ep.abort_reason,
        )

    def _over_message(self) -> str:
        last = self.last
        assert last is not None
        if last.status == "aborted":
            return f"the episode was aborted ({last.abort_reason}); no more moves"
        return (
            f"the game is over ({last.end_reason or last.status}); your payoff was {last.payoff:g}. "
            "No more moves can be made."
            if last.payoff is not None
            else f"the game is over ({last.end_reason or last.status}); no more moves can be made"
        )


def _forced_moves(turns: list[Turn], tick: int, player: str) -> dict[str, TurnReport]:
    """The recorded moves of the other players acting at `tick` (as `prefs generate` replays them)."""
    return {
        t.player: TurnReport(raw=t.raw, prompt=t.prompt, status=t.call.status)
        for t in turns
        if t.tick == tick and t.player != player
    }
