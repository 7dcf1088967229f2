"""The Runner: a plan of episodes, many at once, each recorded as it finishes, resumable.

- Each finished episode is one flushed line in `OUT/trajectories.jsonl` (see `trajectory_store`),
  written by this process alone, from one background thread (a line is fsynced: ~3 ms that would
  otherwise stall every episode in flight on the event loop).
- Rerunning the same plan with the same output skips the episodes already finished in the file and
  plays the rest, aborted ones included (`retry_failed`): see `plan.resume`. Runs sharing an output
  (two games into one `runs/`, or the same command started twice) record each episode once: the
  file's lock orders their lines, and an episode another run recorded first is neither started nor
  appended again (`TrajectoryWriter.append_new`).
- Episodes play on this process's event loop (at most `concurrency` in flight, one env reused per
  lane), or with `ray=ADDRESS` on `workers` Ray actors, each with its share of `concurrency`
  (`ray_backend`). Either way the callbacks (progress bar, live view) run here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from ..env import GameParallelEnv
from ..spec import GameSpec
from ..trajectory import Episode, Turn
from ..trajectory_store import TrajectoryWriter, resolve_path
from .callbacks import ProgressCallback, RunCallback, RunStats
from .episode import play_episode
from .plan import EpisodeJob, resume

if TYPE_CHECKING:
    from ..agents.factory import AgentFactory

# Called on each finished episode before it is written (e.g. the procedural referee's verdict).
EpisodeHook = Callable[[Episode], Awaitable[None]]


class Runner:
    """Runs a plan of episodes with at most `concurrency` in flight, writing each as it finishes.

    `ray` (an address, or "auto": `RAY_ADDRESS` or a local Ray) plays the episodes on `workers` Ray
    actors (default: one per CPU of the cluster) instead of this process; it needs LLM agents on an
    endpoint (or the built-in baselines), a plain `AgentFactory`, and the `ray` extra. Without it
    nothing imports Ray.
    """

    def __init__(
        self,
        spec: GameSpec,
        factory: AgentFactory,
        out: str | Path,
        *,
        concurrency: int = 8,
        progress: bool = True,
        retry_failed: bool = True,
        callbacks: Sequence[RunCallback] = (),
        finish: EpisodeHook | None = None,
        console: Console | None = None,
        max_cycles: int | None = None,
        workers: int | None = None,
        ray: str | None = None,
    ) -> None:
        self.spec = spec
        self.factory = factory
        self.path = resolve_path(out)
        self.concurrency = max(1, concurrency)
        self.retry_failed = retry_failed
        self.callbacks: list[RunCallback] = list(callbacks)
        if progress:
            self.callbacks.insert(0, ProgressCallback(spec.id, console))
        self.finish = finish
        self.max_cycles = max_cycles
        self.workers = workers  # Ray actors; None: one per CPU of the cluster
        self.ray = ray
        self.run_id = time.strftime("%Y%m%dT%H%M%S")
        self.stats = RunStats()
        self._writer: TrajectoryWriter | None = None
        self._write_pool: ThreadPoolExecutor | None = None
        if ray is not None:
            from .ray_backend import check_playable

            check_playable(self)
        elif (workers or 1) > 1:
            raise ValueError(
                f"workers={self.workers} means Ray actors: give ray='auto' (or an address; "
                "pip install 'rsi_env[ray]'). Without Ray one process plays every episode"
            )

    @property
    def follows_turns(self) -> bool:
        return any(cb.follows_turns for cb in self.callbacks)

    async def run(self, jobs: list[EpisodeJob]) -> RunStats:
        plan = resume(self.path, jobs, retry_failed=self.retry_failed)
        self.stats = RunStats(planned=len(jobs), skipped=plan.skipped, retried=plan.retried)
        for cb in self.callbacks:
            cb.on_run_start(self.stats, len(plan.todo))
        # One thread writes the file, in order (see the module's docstring).
        self._write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trajectory-writer")
        try:
            with TrajectoryWriter(self.path) as self._writer:
                try:
                    if self.ray is not None:
                        from .ray_backend import play_on_ray

                        await play_on_ray(self, plan.todo)
                    else:
                        await self._play_here(deque(plan.todo))
                finally:
                    # Lines already queued are written before the file closes (Ctrl-C included).
                    self._write_pool.shutdown(wait=True)
        finally:
            self._writer = None
            for cb in self.callbacks:
                cb.on_run_end(self.stats)
        return self.stats

    # -- what every backend calls, in this process --------------------------------------------------

    def claim(self, job: EpisodeJob) -> bool:
        """Whether to play `job` now: False when another run sharing the file recorded it meanwhile."""
        assert self._writer is not None
        if self._writer.holds_finished(job.episode_id):
            self._skipped(job.episode_id)
            return False
        for cb in self.callbacks:
            cb.on_episode_start(job)
        return True

    def turn(self, ep: Episode, turn: Turn) -> None:
        for cb in self.callbacks:
            if cb.follows_turns:
                cb.on_turn(ep, turn)

    async def record(self, ep: Episode) -> None:
        """Write a finished episode (unless another run wrote it first) and tell the callbacks."""
        assert self._writer is not None and self._write_pool is not None
        if self.finish is not None:
            await self.finish(ep)
        loop = asyncio.get_running_loop()
        # Shielded: a Ctrl-C while the line is queued still writes it (the pool is drained before the
        # file closes), so a finished episode is never lost.
        write = loop.run_in_executor(self._write_pool, self._writer.append_new, ep)
        # A lane cancelled while its line is queued (another lane's write failed: a full disk) no longer
        # awaits it; its error is the one already raised, so it is marked seen rather than logged at exit.
        write.add_done_callback(_mark_seen)
        written = await asyncio.shield(write)
        if not written:
            self._skipped(ep.episode_id)
            return
        self.stats.count(ep)
        for cb in self.callbacks:
            cb.on_episode_end(ep, self.stats)

    def _skipped(self, episode_id: str) -> None:
        self.stats.skipped += 1
        for cb in self.callbacks:
            cb.on_episode_skipped(episode_id, self.stats)

    # -- this process ---------------------------------------------------------------------------------

    async def _play_here(self, queue: deque[EpisodeJob]) -> None:
        """Play jobs from `queue` on this event loop: `concurrency` lanes, each one episode at a time
        on an env it reuses (building one costs more than several turns)."""
        on_turn = self.turn if self.follows_turns else None

        async def lane() -> None:
            envs: dict[int, GameParallelEnv] = {}
            while queue:
                job = queue.popleft()
                if not self.claim(job):
                    continue
                if job.n_players not in envs:
                    envs[job.n_players] = GameParallelEnv(
                        self.spec, n_players=job.n_players, max_cycles=self.max_cycles
                    )
                ep = await play_episode(
                    job,
                    self.spec,
                    self.factory,
                    run_id=self.run_id,
                    on_turn=on_turn,
                    max_cycles=self.max_cycles,
                    env=envs[job.n_players],
                )
                await self.record(ep)

        lanes = [asyncio.create_task(lane()) for _ in range(min(self.concurrency, len(queue)))]
        try:
            await asyncio.gather(*lanes)
        finally:
            for t in lanes:
                t.cancel()  # Ctrl-C: in-flight episodes are dropped, the file keeps whole lines
            # A lane that failed (a full disk) must not leave others running on the file being closed.
            await asyncio.gather(*lanes, return_exceptions=True)


def _mark_seen(write: asyncio.Future[bool]) -> None:
    if not write.cancelled():
        write.exception()
