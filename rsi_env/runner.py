"""The episode runner: many episodes at once on asyncio, bounded concurrency, resumable JSONL.

- Each finished episode is one flushed line in `OUT/trajectories.jsonl` (see `trajectory`).
- Rerunning the same plan with the same output skips the episodes already in the file, so a run
  killed at any point resumes to exactly the planned set, with no duplicates.
- A model call that fails for infrastructure reasons (timeout, rate limit, 5xx, connection) is
  retried as a whole turn; if it keeps failing the episode is recorded as `aborted` with that
  status and no payoffs. A model that answers badly is not a failure: its text goes to the game,
  which answers with feedback like any invalid move.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .agents.base import Agent, TurnReport
from .agents.profiles import AgentFactory
from .env import GameParallelEnv
from .spec import GameSpec
from .trajectory import (
    FAILURE_STATUSES,
    CallInfo,
    Episode,
    PlayerInfo,
    TrajectoryWriter,
    Turn,
    Usage,
    read_episodes,
    resolve_path,
)


class EpisodeJob(BaseModel):
    """One planned episode. Its id is a function of what defines it, so reruns find it again."""

    episode_id: str
    game: str
    seed: int
    n_players: int
    agents: list[str]


def plan(
    spec: GameSpec, agents: list[str], episodes: int, seed: int = 0, n_players: int | None = None
) -> list[EpisodeJob]:
    n = n_players or spec.players.default or spec.players.min
    seats = [agents[i % len(agents)] for i in range(n)]
    tag = hashlib.sha256(json.dumps([spec.spec_hash(), seats, n]).encode()).hexdigest()[:8]
    return [
        EpisodeJob(episode_id=f"{spec.id}-{tag}-s{s}", game=spec.id, seed=s, n_players=n, agents=seats)
        for s in range(seed, seed + episodes)
    ]


@dataclass
class RunStats:
    planned: int = 0
    skipped: int = 0
    done: int = 0
    aborted: int = 0
    calls: int = 0
    failed_calls: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def calls_per_s(self) -> float:
        return self.calls / max(1e-9, time.perf_counter() - self.started)


TurnHook = Callable[[Episode, Turn], Awaitable[None] | None]


def _call_info(rep: TurnReport | None) -> CallInfo:
    if rep is None:
        return CallInfo()
    return CallInfo(
        status=rep.status,
        latency_s=rep.latency_s,
        prompt_tokens=rep.prompt_tokens,
        completion_tokens=rep.completion_tokens,
        retries=rep.retries,
        attempts=list(rep.attempts),
        error=rep.error,
    )


def _state_of(env: GameParallelEnv) -> dict[str, Any]:
    e = env.engine
    return {"state": e.state, "P": e.pstate}


def _diff(before: Any, after: Any, path: str, out: list[dict[str, Any]]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for k in before.keys() | after.keys():
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
    stats: RunStats | None = None,
    max_cycles: int | None = None,
) -> Episode:
    """Play one episode to the end and return its record (never raises for model failures)."""
    env = GameParallelEnv(spec, n_players=job.n_players, max_cycles=max_cycles)
    env.reset(seed=job.seed)
    agents = build_agents(factory, env, job.agents, job.seed)
    ep = new_episode(job.episode_id, run_id, spec, env, job.agents, agents, job.seed)
    return await continue_episode(ep, env, agents, turn_retries=turn_retries, on_turn=on_turn, stats=stats)


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
        spec_hash=spec.spec_hash(),
        seed=seed,
        n_players=len(env.possible_agents),
        players=players,
        status="complete",
        started_at=time.time(),
        initial_state=copy.deepcopy({"state": e.state, "players": e.pstate}),
    )
    ep.events = e.events  # the live log, so a live view sees events as they happen
    return ep


async def continue_episode(
    ep: Episode,
    env: GameParallelEnv,
    agents: dict[str, Agent],
    *,
    turn_retries: int = 2,
    on_turn: TurnHook | None = None,
    stats: RunStats | None = None,
    first_moves: dict[str, TurnReport] | None = None,
) -> Episode:
    """Play `env` from its current state to the end, appending turns to `ep`, then close the record.

    `first_moves` forces the replies of the first tick (a branch's candidate action).
    """
    e = env.engine
    t0 = time.perf_counter()
    usage = ep.usage
    infos = {p: env.agent_info(p) for p in env.agents}
    try:
        while env.agents:
            actors = [p for p in env.agents if infos[p]["is_turn"]]
            if first_moves is not None:
                reports, failed = {p: first_moves[p] for p in actors}, {}
                first_moves = None
            else:
                reports, failed = await _ask(actors, agents, env, infos, turn_retries, usage, stats)
            before = copy.deepcopy(_state_of(env))
            tick, turn, phase = e.tick_no, e.turn, e.phase
            obs_before = {p: env.observe(p)["text"] for p in actors}
            env.advance({p: reports[p].raw for p in actors})
            infos = {p: env.agent_info(p) for p in env.agents}
            changes: list[dict[str, Any]] = []
            _diff(before, _state_of(env), "", changes)
            for i, p in enumerate(actors):
                res = e.last_results.get(p)
                rep = reports[p]
                t = Turn(
                    tick=tick,
                    turn=turn,
                    phase=phase,
                    player=p,
                    observation=obs_before[p],
                    prompt=rep.prompt,
                    raw=rep.raw,
                    action=res.action if res and res.valid else None,
                    args=res.args if res and res.valid else None,
                    valid=bool(res and res.valid),
                    feedback=res.feedback if res else None,
                    call=_call_info(rep),
                    changes=changes if i == len(actors) - 1 else [],
                    failed_calls=failed.get(p, []),
                )
                ep.turns.append(t)
                if on_turn is not None:
                    maybe = on_turn(ep, t)
                    if maybe is not None:
                        await maybe
    except EpisodeAborted as exc:
        ep.status = "aborted"
        ep.abort_reason = f"{exc.status}: {exc.detail}" if exc.detail else exc.status
    if ep.status != "aborted":
        ep.status = "truncated" if e.truncated else "complete"
        ep.payoffs = dict(e.payoffs or {})
        ep.best = e.best
        ep.outcomes = e.outcomes
    for info in ep.players:
        info.model = getattr(agents[info.player], "model", None) or info.model
    ep.end_reason = e.end_reason
    ep.flags = e.flags
    ep.invalid_counts = dict(e.invalid_total)
    ep.events = e.events
    ep.errors = e.errors
    ep.duration_s += time.perf_counter() - t0
    return ep


async def _ask(
    actors: list[str],
    agents: dict[str, Agent],
    env: GameParallelEnv,
    infos: dict[str, Any],
    turn_retries: int,
    usage: Usage,
    stats: RunStats | None,
) -> tuple[dict[str, TurnReport], dict[str, list[CallInfo]]]:
    """Ask every actor for its move (concurrently); retry turns whose call failed for infra reasons."""
    reports: dict[str, TurnReport] = {}
    failed: dict[str, list[CallInfo]] = {}
    pending = list(actors)
    for attempt in range(turn_retries + 1):
        await asyncio.gather(*(agents[p].act(env.observe(p), infos[p]) for p in pending))
        still = []
        for p in pending:
            rep = agents[p].last or TurnReport(raw="")
            if rep.prompt is not None:  # a model call happened
                usage.calls += 1
                usage.prompt_tokens += rep.prompt_tokens
                usage.completion_tokens += rep.completion_tokens
                usage.latency_s += rep.latency_s
                if stats is not None:
                    stats.calls += 1
                    stats.tokens += rep.prompt_tokens + rep.completion_tokens
            if rep.status in FAILURE_STATUSES:
                usage.failed_calls += 1
                if stats is not None:
                    stats.failed_calls += 1
                failed.setdefault(p, []).append(_call_info(rep))
                if attempt == turn_retries or rep.status in ("context_exceeded", "client_error"):
                    raise EpisodeAborted(rep.status, rep.error)
                still.append(p)
            else:
                reports[p] = rep
        pending = still
        if not pending:
            break
    return reports, failed


class Runner:
    """Runs a plan of episodes with at most `concurrency` in flight, writing each as it finishes."""

    def __init__(
        self,
        spec: GameSpec,
        factory: AgentFactory,
        out: str | Path,
        *,
        concurrency: int = 8,
        progress: bool = True,
        retry_failed: bool = False,
        on_turn: TurnHook | None = None,
        on_episode: Callable[[Episode], None] | None = None,
        console: Console | None = None,
        max_cycles: int | None = None,
    ) -> None:
        self.spec = spec
        self.factory = factory
        self.path = resolve_path(out)
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self.retry_failed = retry_failed
        self.on_turn = on_turn
        self.on_episode = on_episode
        self.console = console or Console(stderr=True)
        self.max_cycles = max_cycles
        self.run_id = time.strftime("%Y%m%dT%H%M%S")
        self.stats = RunStats()

    def _todo(self, jobs: list[EpisodeJob]) -> list[EpisodeJob]:
        if not self.path.exists():
            return jobs
        keep = {ep.episode_id for ep in read_episodes(self.path) if ep.finished or not self.retry_failed}
        return [j for j in jobs if j.episode_id not in keep]

    async def run(self, jobs: list[EpisodeJob]) -> RunStats:
        todo = self._todo(jobs)
        self.stats = RunStats(planned=len(jobs), skipped=len(jobs) - len(todo))
        queue: asyncio.Queue[EpisodeJob] = asyncio.Queue()
        for j in todo:
            queue.put_nowait(j)
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("aborted {task.fields[aborted]}"),
            TextColumn("tokens {task.fields[tokens]}"),
            TextColumn("{task.fields[rate]:.1f} calls/s"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.progress,
        )
        task = progress.add_task(self.spec.id, total=len(todo), aborted=0, tokens=0, rate=0.0)
        with TrajectoryWriter(self.path) as writer, progress:

            async def worker() -> None:
                while True:
                    try:
                        job = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    ep = await play_episode(
                        job,
                        self.spec,
                        self.factory,
                        run_id=self.run_id,
                        on_turn=self.on_turn,
                        stats=self.stats,
                        max_cycles=self.max_cycles,
                    )
                    writer.write(ep)
                    self.stats.done += 1
                    self.stats.aborted += ep.status == "aborted"
                    progress.update(
                        task,
                        advance=1,
                        aborted=self.stats.aborted,
                        tokens=self.stats.tokens,
                        rate=self.stats.calls_per_s,
                    )
                    if self.on_episode is not None:
                        self.on_episode(ep)

            workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(todo)))]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()  # Ctrl-C: in-flight episodes are dropped, the file keeps whole lines
        return self.stats
