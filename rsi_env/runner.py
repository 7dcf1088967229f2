"""The episode runner: many episodes at once on asyncio, bounded concurrency, resumable JSONL.

- Each finished episode is one flushed line in `OUT/trajectories.jsonl` (see `trajectory`).
- Rerunning the same plan with the same output skips the episodes already finished in the file and
  plays the rest, aborted ones included (`retry_failed`), so a run killed at any point resumes to
  exactly the planned set. The failed attempts a rerun replaces move to a side file
  (`failed_attempts.jsonl`, see `trajectory.set_aside`) before anything is appended: each id stays
  once in the file, and no record of a failure is lost. Several runs may share an output (two games
  into the same `runs/` at once): the file's lock orders their lines and compactions (`trajectory`).
- A model call that fails for infrastructure reasons (timeout, rate limit, 5xx, connection) is
  retried as a whole turn; if it keeps failing the episode is recorded as `aborted` with that
  status and no payoffs. A model that answers badly is not a failure: its text goes to the game,
  which answers with feedback like any invalid move. A game whose payoff expressions fail at the end
  is aborted too (`game_error`), and so is an episode an agent gives up (a human closing stdin:
  `cancelled`): neither is ever scored.
- Per turn the runner renders only the acting players' observations, and each worker reuses one
  env across its episodes; lines are written (and fsynced) by one background thread. The runner's
  own work per call is small next to the HTTP client's: see scripts/bench_runner.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .agents.base import CANCELLED, Agent, TurnReport
from .agents.profiles import AgentFactory, AgentProfile, EndpointOverride
from .compiled import compiled
from .env import GameParallelEnv
from .spec import GameSpec
from .trajectory import (
    FAILURE_STATUSES,
    CallInfo,
    Episode,
    PlayerInfo,
    RecordLine,
    TrajectoryFileError,
    TrajectoryWriter,
    Turn,
    Usage,
    abort_status,
    read_lines,
    resolve_path,
    set_aside,
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
    retried: int = 0  # planned episodes recorded unfinished by an earlier run, played again
    done: int = 0
    aborted: int = 0
    aborted_by: dict[str, int] = field(default_factory=dict)  # aborted episodes by the status that ended them
    calls: int = 0
    failed_calls: int = 0
    tokens: int = 0
    worker_episodes: int = 0  # played in worker processes (Runner(workers=N))
    worker_start: str | None = None  # how they started: "fork" or "spawn"
    started: float = field(default_factory=time.perf_counter)

    @property
    def calls_per_s(self) -> float:
        return self.calls / max(1e-9, time.perf_counter() - self.started)


TurnHook = Callable[[Episode, Turn], Awaitable[None] | None]
EpisodeHook = Callable[[Episode], Awaitable[None]]

# Statuses that end an episode at once: retrying the turn cannot help.
_FINAL_STATUSES = frozenset({"context_exceeded", "client_error", CANCELLED})


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


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _copy_json(value: Any) -> Any:
    """Deep copy of a JSON-like value (the engine's state): several times cheaper than `copy.deepcopy`,
    which the runner would otherwise pay at every tick; anything unusual still goes through deepcopy."""
    t = type(value)
    if t is dict:
        return {k: _copy_json(v) for k, v in value.items()}
    if t is list:
        return [_copy_json(v) for v in value]
    if t in _SCALARS:
        return value
    return copy.deepcopy(value)


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
    stats: RunStats | None = None,
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
        spec_hash=compiled(spec).hash,  # cached: hashing the spec per episode costs ~0.2 ms
        seed=seed,
        n_players=len(env.possible_agents),
        players=players,
        status="complete",
        started_at=time.time(),
        initial_state=_copy_json({"state": e.state, "players": e.pstate}),
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
    stats: RunStats | None = None,
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
            if first_moves is not None:
                reports, failed = {p: first_moves[p] for p in actors}, {}
                first_moves = None
            else:
                reports, failed = await _ask(actors, agents, env, turn_retries, usage, stats)
            before = _copy_json(_state_of(env))
            tick, turn, phase = e.tick_no, e.turn, e.phase
            obs_before = {p: env.observe(p)["text"] for p in actors}
            env.advance({p: reports[p].raw for p in actors})
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


def _close_finished(ep: Episode, env: GameParallelEnv) -> None:
    """Status and scores of an episode played to its end. A payoff that is not a finite number (its
    expression failed: the engine gives NaN) makes the episode `aborted` with `game_error` and the
    engine's message: never a complete episode without scores."""
    e = env.engine
    payoffs = dict(e.payoffs or {})
    broken = sorted(p for p, v in payoffs.items() if not math.isfinite(v))
    if broken:
        why = next((x for x in reversed(e.errors) if "payoffs." in x), None)
        ep.status = "aborted"
        ep.abort_reason = f"game_error: payoff of {', '.join(broken)} is not a finite number" + (
            f" ({why})" if why else ""
        )
        return
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
    stats: RunStats | None,
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
                if stats is not None:
                    stats.calls += 1
                    stats.tokens += rep.prompt_tokens + rep.completion_tokens
            if rep.status in FAILURE_STATUSES:
                usage.failed_calls += 1
                if stats is not None:
                    stats.failed_calls += 1
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


def replaced_attempts(lines: list[RecordLine], replaced: set[str]) -> list[RecordLine]:
    """The aborted records that no longer stand for their episode: its id is in `replaced` (being
    played again, or finished elsewhere in the file), or a later readable line of the same id
    supersedes them (files from before compaction). Only records read as aborted episodes move: a
    finished one stays, and so does a line this version cannot read: it is no known failure (it may
    be a newer rsi_env's finished episode), and the readers skip it with a warning where it is."""
    last = {ln.episode_id: ln.no for ln in lines if ln.episode is not None}
    return [
        ln
        for ln in lines
        if ln.episode is not None
        and ln.episode.status == "aborted"
        and (ln.episode_id in replaced or ln.no != last[ln.episode_id])
    ]


class WorkerSetup(BaseModel):
    """What a worker process needs to play jobs exactly as the parent would (sent as its first line)."""

    spec: dict[str, Any]
    spec_hash: str
    names: list[str]
    profiles: dict[str, AgentProfile]
    override: EndpointOverride
    run_id: str
    max_cycles: int | None = None


class Runner:
    """Runs a plan of episodes with at most `concurrency` in flight, writing each as it finishes.

    `workers=N` (opt-in) plays the episodes in N child processes, each with its own event loop and
    chat client and at most its share of `concurrency` (never more than `concurrency` in all);
    finished episodes stream back to this process, which alone writes the file and drives the
    progress bar. It needs LLM agents on an endpoint (or local baselines) without `max_parallel`, a
    plain `AgentFactory`, and no `on_turn` hook. It pays when one event loop runs out of CPU before
    the endpoint runs out of capacity (high concurrency, fast endpoint): see scripts/bench_runner.py.
    """

    # With workers: play in this process too until the worker processes are up (a spawned one takes
    # ~1.5 s of imports), so that a short run loses no time. Off, every episode is a worker's.
    bootstrap = True

    def __init__(
        self,
        spec: GameSpec,
        factory: AgentFactory,
        out: str | Path,
        *,
        concurrency: int = 8,
        progress: bool = True,
        retry_failed: bool = True,
        on_turn: TurnHook | None = None,
        on_episode: Callable[[Episode], None] | None = None,
        finish: EpisodeHook | None = None,
        console: Console | None = None,
        max_cycles: int | None = None,
        workers: int = 1,
    ) -> None:
        self.spec = spec
        self.factory = factory
        self.path = resolve_path(out)
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self.retry_failed = retry_failed
        self.on_turn = on_turn
        self.on_episode = on_episode
        self.finish = finish
        self.console = console or Console(stderr=True)
        self.max_cycles = max_cycles
        self.workers = max(1, workers)
        self.run_id = time.strftime("%Y%m%dT%H%M%S")
        self.stats = RunStats()
        if self.workers > 1:
            self._check_workers()

    def _check_workers(self) -> None:
        f = self.factory
        if type(f) is not AgentFactory:
            raise ValueError("workers > 1 needs a plain AgentFactory (worker processes rebuild it)")
        if self.on_turn is not None or "human" in f.names:
            raise ValueError("workers > 1 cannot follow turns live or seat a human; use workers=1")
        if any(p.backend == "local" for p in f.profiles.values()):
            raise ValueError(
                "workers > 1 needs LLM agents on an endpoint (--base-url): the embedded model serves "
                "one request at a time, and each worker would start its own copy"
            )
        # The client enforces `max_parallel` per event loop: N workers (and the bootstrapping parent)
        # would send the server up to (N+1) times as many requests as it takes.
        limited = sorted(n for n, p in f.profiles.items() if p.backend == "endpoint" and p.max_parallel)
        if limited:
            raise ValueError(
                f"workers > 1 cannot keep the max_parallel of profile {', '.join(limited)} (each worker "
                "process would have its own limit); use workers=1"
            )

    def _resume(self, jobs: list[EpisodeJob]) -> tuple[list[EpisodeJob], int]:
        """The jobs still to play, and how many of them the file holds unfinished (retried).

        An episode with a finished record is done. One recorded only as aborted (or only in a line this
        version cannot read, which stays where it is) is played again, unless `retry_failed` is off
        (then a readable aborted record counts as done). Before anything is appended, the aborted
        attempts being replaced move to the side file, so the file keeps one readable line per id. A
        file with a newer rsi_env's records is left alone: TrajectoryFileError.
        """
        if not self.path.exists():
            return jobs, 0
        lines = read_lines(self.path)
        newer = next((ln for ln in lines if ln.newer), None)
        if newer is not None:
            raise TrajectoryFileError(f"{newer.problem}; play into another output directory")
        finished = {ln.episode_id for ln in lines if ln.finished}
        recorded = {ln.episode_id for ln in lines if ln.episode is not None}
        done = finished if self.retry_failed else finished | recorded
        todo = [j for j in jobs if j.episode_id not in done]
        retry = {j.episode_id for j in todo} & {ln.episode_id for ln in lines}
        moved = replaced_attempts(lines, retry | finished)
        if moved:
            set_aside(self.path, moved)
        return todo, len(retry)

    def _progress(self) -> Progress:
        return Progress(
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

    async def run(self, jobs: list[EpisodeJob]) -> RunStats:
        todo, retried = self._resume(jobs)
        self.stats = RunStats(planned=len(jobs), skipped=len(jobs) - len(todo), retried=retried)
        n = min(self.workers, len(todo), self.concurrency)
        # Worker processes first, before this run starts any thread (see _start_workers).
        procs = _start_workers(n, self._worker_setup()) if n > 1 else []
        self.stats.worker_start = procs[0].how if procs else None
        try:
            await self._run(todo, procs)
        finally:
            for w in procs:
                w.kill()  # Ctrl-C or a failure: in-flight episodes are dropped (no-op once exited)
        return self.stats

    async def _run(self, todo: list[EpisodeJob], procs: list[_Worker]) -> None:
        progress = self._progress()
        task = progress.add_task(self.spec.id, total=len(todo), aborted=0, tokens=0, rate=0.0)
        loop = asyncio.get_running_loop()
        # One thread writes the file, in order: `write` fsyncs (~3 ms on this disk), which would
        # otherwise stall every episode in flight on the event loop.
        write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trajectory-writer")
        with TrajectoryWriter(self.path) as writer, progress:

            async def record(ep: Episode) -> None:
                if self.finish is not None:
                    await self.finish(ep)
                # Shielded: a Ctrl-C while the line is queued still writes it (the pool is drained
                # below before the file closes), so a finished episode is never lost.
                await asyncio.shield(loop.run_in_executor(write_pool, writer.write, ep))
                self.stats.done += 1
                if ep.status == "aborted":
                    self.stats.aborted += 1
                    why = abort_status(ep)
                    self.stats.aborted_by[why] = self.stats.aborted_by.get(why, 0) + 1
                progress.update(
                    task,
                    advance=1,
                    aborted=self.stats.aborted,
                    tokens=self.stats.tokens,
                    rate=self.stats.calls_per_s,
                )
                if self.on_episode is not None:
                    self.on_episode(ep)

            try:
                if procs:
                    await self._run_workers(todo, record, procs)
                else:
                    await self._run_here(todo, record)
            finally:
                write_pool.shutdown(wait=True)

    def _worker_setup(self) -> WorkerSetup:
        f = self.factory
        return WorkerSetup(
            spec=self.spec.model_dump(mode="json", by_alias=True),
            spec_hash=compiled(self.spec).hash,
            names=f.names,
            profiles=f.profiles,
            override=f.override,
            run_id=self.run_id,
            max_cycles=self.max_cycles,
        )

    async def _run_here(self, todo: list[EpisodeJob], record: Callable[[Episode], Awaitable[None]]) -> None:
        await self._local_lane(deque(todo), asyncio.Semaphore(self.concurrency), record)

    async def _local_lane(
        self,
        queue: deque[EpisodeJob],
        slots: asyncio.Semaphore,
        record: Callable[[Episode], Awaitable[None]],
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        """Play jobs from `queue` in this process, one per free slot, while `active()`."""

        async def worker() -> None:
            envs: dict[tuple[int, int | None], GameParallelEnv] = {}  # reused, one episode at a time
            while queue and active():
                async with slots:
                    if not queue or not active():
                        return
                    job = queue.popleft()
                    key = (job.n_players, self.max_cycles)
                    if key not in envs:
                        envs[key] = GameParallelEnv(self.spec, n_players=key[0], max_cycles=key[1])
                    ep = await play_episode(
                        job,
                        self.spec,
                        self.factory,
                        run_id=self.run_id,
                        on_turn=self.on_turn,
                        stats=self.stats,
                        max_cycles=self.max_cycles,
                        env=envs[key],
                    )
                await record(ep)

        workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(queue)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()  # Ctrl-C: in-flight episodes are dropped, the file keeps whole lines

    async def _run_workers(
        self, todo: list[EpisodeJob], record: Callable[[Episode], Awaitable[None]], procs: list[_Worker]
    ) -> None:
        """Play in worker processes, each taking up to its share of `concurrency` (the total never
        exceeds it). Until they are up (ms when forked, ~1.5 s of imports when spawned), this process
        plays too (`bootstrap`)."""
        n = len(procs)
        share = -(-self.concurrency // n)
        queue = deque(todo)
        slots = asyncio.Semaphore(self.concurrency)
        up = 0  # worker processes ready to play

        async def lane(w: _Worker) -> None:
            nonlocal up
            jobs, episodes = await w.connect(self._worker_setup())
            if await episodes.readline() != b"READY\n":
                raise RuntimeError(f"a runner worker failed to start (exit code {await w.wait()})")
            up += 1
            mine = asyncio.Semaphore(share)
            in_flight = 0

            async def feed() -> None:
                nonlocal in_flight
                while queue:
                    await mine.acquire()
                    await slots.acquire()
                    if not queue:
                        slots.release()
                        break
                    jobs.write(queue.popleft().model_dump_json().encode() + b"\n")
                    in_flight += 1
                    await jobs.drain()
                jobs.close()  # no more jobs: the worker exits once its episodes are done

            feeder = asyncio.create_task(feed())
            try:
                while line := await episodes.readline():
                    ep = Episode.model_validate_json(line)
                    in_flight -= 1
                    mine.release()
                    slots.release()
                    # The worker's own counters stay there; the run's come from each episode's usage.
                    self.stats.worker_episodes += 1
                    self.stats.calls += ep.usage.calls
                    self.stats.failed_calls += ep.usage.failed_calls
                    self.stats.tokens += ep.usage.prompt_tokens + ep.usage.completion_tokens
                    await record(ep)
                await feeder
                code = await w.wait()
                if in_flight or code:
                    raise RuntimeError(f"a runner worker exited (code {code}) with episodes unfinished")
            finally:
                feeder.cancel()

        # A forked worker is up at once; a spawned one is worth bootstrapping for.
        bootstrap = self.bootstrap and any(w.how == "spawn" for w in procs)
        await asyncio.gather(
            self._local_lane(queue, slots, record, active=lambda: bootstrap and up < n),
            *(lane(w) for w in procs),
        )


# ---------------------------------------------------------------------------------------------------
# Worker processes (Runner(workers=N)). Two pipes each: jobs in (JSON lines; the first is the
# WorkerSetup), finished episodes out (JSON lines; the first is READY). The end of the jobs pipe (the
# parent is done, or died) ends the worker; so does finding itself orphaned.
# ---------------------------------------------------------------------------------------------------

_LINE_LIMIT = 1 << 28  # an episode line can be large (observations of every turn); this bounds memory


class _Worker:
    """A worker process, seen from the parent."""

    def __init__(self, pid: int, how: str, popen: subprocess.Popen[bytes] | None, jobs_fd: int, eps_fd: int):
        self.pid, self.how, self.popen = pid, how, popen
        self.jobs_fd, self.eps_fd = jobs_fd, eps_fd
        self.code: int | None = None

    async def connect(self, setup: WorkerSetup) -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
        loop = asyncio.get_running_loop()
        episodes = asyncio.StreamReader(limit=_LINE_LIMIT)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(episodes), os.fdopen(self.eps_fd, "rb", buffering=0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(self.jobs_fd, "wb", buffering=0)
        )
        jobs = asyncio.StreamWriter(transport, protocol, None, loop)
        jobs.write(setup.model_dump_json().encode() + b"\n")
        return jobs, episodes

    def poll(self) -> int | None:
        if self.code is None:
            if self.popen is not None:
                self.code = self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    async def wait(self) -> int:
        while (code := self.poll()) is None:
            await asyncio.sleep(0.02)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if self.popen is not None:
                self.code = self.popen.wait()
            else:
                self.code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def _can_fork() -> bool:
    # A forked child is ready in milliseconds (a spawned one spends ~1.5 s importing), but forking a
    # process with other threads can deadlock the child on a lock one of them held: fork only when
    # this is the only thread (the play CLI); otherwise start a fresh interpreter.
    return hasattr(os, "fork") and threading.active_count() == 1


def _start_workers(n: int, setup: WorkerSetup) -> list[_Worker]:
    """Start n workers. Synchronous on purpose: a fork must not be interleaved with anything."""
    pipes = [(*os.pipe(), *os.pipe()) for _ in range(n)]  # jobs_r, jobs_w, eps_r, eps_w
    every_fd = [fd for p in pipes for fd in p]
    fork = _can_fork()
    workers = []
    for jobs_r, jobs_w, eps_r, eps_w in pipes:
        if fork:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _forked_worker(jobs_r, eps_w, [fd for fd in every_fd if fd not in (jobs_r, eps_w)])
            popen = None
        else:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"from rsi_env.runner import worker_main; worker_main({jobs_r}, {eps_w})",
                ],
                pass_fds=(jobs_r, eps_w),
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the terminal reaches the parent only, which decides.
                start_new_session=True,
            )
            pid = popen.pid
        workers.append(_Worker(pid, "fork" if fork else "spawn", popen, jobs_w, eps_r))
    for jobs_r, _, _, eps_w in pipes:
        os.close(jobs_r)
        os.close(eps_w)
    return workers


def _forked_worker(jobs_fd: int, eps_fd: int, others: list[int]) -> NoReturn:
    """The child side of a fork: it must never return into the parent's stack (or its atexit hooks)."""
    code = 70
    try:
        os.setsid()  # a Ctrl-C in the terminal reaches the parent only, which decides
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)  # the parent loop's, inherited
        for fd in others:  # other workers' pipe ends: holding them would keep their pipes open
            os.close(fd)
        asyncio._set_running_loop(None)  # forked from inside the parent's running loop
        _worker_process(jobs_fd, eps_fd, os.getppid())
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def worker_main(jobs_fd: int, eps_fd: int) -> None:
    """Entry point of a spawned worker process (`python -c`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_process(jobs_fd, eps_fd, os.getppid())


def _worker_process(jobs_fd: int, eps_fd: int, parent: int) -> None:
    out = os.fdopen(eps_fd, "wb")
    with contextlib.suppress(BrokenPipeError):
        asyncio.run(_worker_loop(os.fdopen(jobs_fd, "rb", buffering=0), out, parent))


async def _orphan_watch(parent: int) -> None:
    """A worker whose parent died (SIGKILL) stops at once instead of finishing its episodes."""
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    os._exit(0)


async def _worker_loop(jobs_pipe: Any, out: Any, parent: int) -> None:
    loop = asyncio.get_running_loop()
    watch = asyncio.create_task(_orphan_watch(parent))
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), jobs_pipe)
    setup = WorkerSetup.model_validate_json(await reader.readline())
    spec = GameSpec.model_validate(setup.spec)
    if compiled(spec).hash != setup.spec_hash:
        raise RuntimeError("worker: the game spec changed in transit")
    factory = AgentFactory(setup.names, spec, setup.override)
    factory.profiles = dict(setup.profiles)  # exactly the parent's, whatever the files say now
    out.write(b"READY\n")
    out.flush()
    idle: list[GameParallelEnv] = []
    tasks: set[asyncio.Task[None]] = set()

    async def play(job: EpisodeJob) -> None:
        try:
            env = next((e for e in idle if len(e.possible_agents) == job.n_players), None)
            if env is None:
                env = GameParallelEnv(spec, n_players=job.n_players, max_cycles=setup.max_cycles)
            else:
                idle.remove(env)
            ep = await play_episode(
                job, spec, factory, run_id=setup.run_id, max_cycles=setup.max_cycles, env=env
            )
            out.write(ep.model_dump_json().encode() + b"\n")
            out.flush()
            idle.append(env)
        except BrokenPipeError:
            os._exit(0)  # the parent is gone
        except Exception:
            # A bug, not a model failure (those end up in the episode): stop, and the parent's run
            # fails as it would in one process.
            traceback.print_exc()
            os._exit(70)

    try:
        while line := await reader.readline():
            t = asyncio.create_task(play(EpisodeJob.model_validate_json(line)))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        watch.cancel()
        for t in tasks:
            t.cancel()
        await factory.aclose()
