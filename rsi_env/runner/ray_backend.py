"""Episodes on Ray actors: the same asyncio episode loop, on as many processes and machines as Ray has.

- `workers` actors (`EpisodeActor`), each playing up to its share of the run's `concurrency` at once on
  its own event loop, with its own chat clients and reused envs. Each gets what it needs to play
  exactly as this process would — the spec, the resolved agent profiles, the endpoint override —
  and reads no file of this machine.
- Episodes are scheduled by id: this process (the driver) holds the queue and hands each actor one
  planned episode at a time, up to its share. A finished episode streams back as its record; the
  driver alone appends it to the file (`Runner.record`: the lock, compaction and exactly-once rules
  of one process hold as they are).
- A killed actor or a lost node fails the episodes it was playing with a Ray error: they go back to
  the front of the queue (`RunStats.requeued`) and a new actor takes the dead one's place. An
  episode is in exactly one place — the queue, an actor, or the file — so none is lost and none is
  written twice; a rerun resumes as always.
- A profile's `max_parallel` holds across the cluster: one `EndpointLimiter` actor per limited
  endpoint, on the driver's node, hands out its request slots to every actor (a slot is held for
  one model call, its retries included), and takes back the slots of an actor that died.
- Callbacks run in the driver: progress counts the records as they arrive; a callback that follows
  turns (`play --live`) gets the turns of one episode at a time, streamed from its actor.

Nothing here is imported without `ray=` (or `--ray`): a run in one process never loads Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from ..agents.factory import AgentFactory
from ..agents.profiles import BUILTIN_AGENTS, AgentProfile, EndpointOverride
from ..compiled import compiled
from ..env import GameParallelEnv
from ..spec import GameSpec
from ..trajectory import Episode, Turn
from .callbacks import RunStats
from .episode import play_episode
from .plan import EpisodeJob


class Driver(Protocol):
    """What this backend needs of the run that drives it (`runner.run.Runner` is one): the plan's
    inputs, and the calls that claim, follow and record episodes in the driver's process. A protocol,
    so that the driver imports this module (lazily, with `ray=`) and not the other way round."""

    spec: GameSpec
    factory: AgentFactory
    concurrency: int
    max_cycles: int | None
    workers: int | None
    ray: str | None
    run_id: str
    stats: RunStats

    @property
    def follows_turns(self) -> bool: ...

    def claim(self, job: EpisodeJob) -> bool: ...

    def turn(self, ep: Episode, turn: Turn) -> None: ...

    async def record(self, ep: Episode) -> None: ...


# An actor lost this many times more than there are workers ends the run: something kills every actor.
MAX_REPLACEMENTS_PER_WORKER = 5


def ray_module() -> Any:
    """Ray, or one clear message when the extra is missing."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'rsi_env[ray]'") from None
    return ray


def connect(address: str = "auto") -> float:
    """Join a Ray cluster, or start one on this machine; returns the seconds it took (0 when this
    process is connected already). `auto`: the cluster at `RAY_ADDRESS` if set, else a local Ray;
    anything else is an address as `ray.init` takes it (`host:6379`, `ray://host:10001`)."""
    ray = ray_module()
    if ray.is_initialized():
        return 0.0
    t0 = time.perf_counter()
    target = (os.environ.get("RAY_ADDRESS") or None) if address == "auto" else address
    try:
        ray.init(address=target, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:  # an address nobody answers at, a version mismatch: one message
        raise RuntimeError(f"--ray {address}: cannot join or start Ray: {exc}") from None
    return time.perf_counter() - t0


def check_playable(runner: Driver) -> None:
    """What Ray actors cannot do, as one ValueError each (before anything runs)."""
    ray_module()
    f = runner.factory
    if type(f) is not AgentFactory:
        raise ValueError("Ray actors need a plain AgentFactory (each actor rebuilds it from the profiles)")
    if "human" in f.names:
        raise ValueError("a human plays in this terminal: not on Ray actors; drop --ray")
    if any(p.backend == "local" for p in f.profiles.values()):
        raise ValueError(
            "Ray actors need LLM agents on an endpoint (--base-url): the embedded model serves one "
            "request at a time, and each actor would start its own copy"
        )


# --- the actors' side --------------------------------------------------------------------------------


class ActorSetup(BaseModel):
    """What an actor needs to play jobs exactly as the driver would."""

    spec: dict[str, Any]
    spec_hash: str
    names: list[str]
    profiles: dict[str, AgentProfile]
    override: EndpointOverride
    run_id: str
    max_cycles: int | None = None
    holder: str  # this actor's name at the limiters


class LimitedChat:
    """A chat client whose calls take a slot of the endpoint's cluster-wide limiter first."""

    def __init__(self, inner: Any, limiter: Any, holder: str) -> None:
        self.inner, self.limiter, self.holder = inner, limiter, holder

    async def chat(self, *args: Any, **kwargs: Any) -> Any:
        await self.limiter.acquire.remote(self.holder)
        try:
            return await self.inner.chat(*args, **kwargs)
        finally:
            self.limiter.release.remote(self.holder)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ShippedFactory(AgentFactory):
    """The driver's factory rebuilt in an actor from resolved profiles (no profile file is read: a
    profile given as a path exists on the driver's machine only), with the cluster's limiters."""

    def __init__(self, setup: ActorSetup, spec: GameSpec, limiters: dict[str, Any]) -> None:
        super().__init__([n for n in setup.names if n in BUILTIN_AGENTS], spec, setup.override)
        self.names = list(setup.names)
        self.profiles = dict(setup.profiles)
        self.limiters = limiters
        self.holder = setup.holder
        self._limited: dict[str, LimitedChat] = {}

    def client(self, profile: AgentProfile) -> Any:
        limiter = self.limiters.get(str(profile.base_url)) if profile.max_parallel else None
        if limiter is None:
            return super().client(profile)
        # The cluster's limiter replaces the client's own (per event loop) one.
        inner = super().client(profile.model_copy(update={"max_parallel": None}))
        key = str(profile.base_url)
        if key not in self._limited or self._limited[key].inner is not inner:
            self._limited[key] = LimitedChat(inner, limiter, self.holder)
        return self._limited[key]


class EpisodeActor:
    """Plays planned episodes on its own event loop (a Ray async actor: calls run concurrently)."""

    def __init__(self, setup_json: str, limiters: dict[str, Any]) -> None:
        setup = ActorSetup.model_validate_json(setup_json)
        self.spec = GameSpec.model_validate(setup.spec)
        if compiled(self.spec).hash != setup.spec_hash:
            raise RuntimeError("the game spec changed in transit")
        self.setup = setup
        self.factory = ShippedFactory(setup, self.spec, limiters)
        self.idle: dict[int, list[GameParallelEnv]] = {}

    def ready(self) -> str:
        return f"{os.uname().nodename}:{os.getpid()}"

    async def play(self, job_json: str) -> str:
        """One episode, its record as JSON."""
        return (await self._play(EpisodeJob.model_validate_json(job_json), None)).model_dump_json()

    async def follow(self, job_json: str) -> Any:
        """One episode as a stream: ("turn", the episode so far) after each turn, then ("episode",
        the record); for a callback that follows turns (`play --live`)."""
        updates: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        def on_turn(ep: Episode, _turn: Any) -> None:
            updates.put_nowait(("turn", ep.model_dump_json()))

        task = asyncio.create_task(self._play(EpisodeJob.model_validate_json(job_json), on_turn))
        task.add_done_callback(lambda t: updates.put_nowait(("end", "")))
        try:
            while (item := await updates.get())[0] != "end":
                yield item
            yield ("episode", task.result().model_dump_json())
        finally:
            task.cancel()

    async def _play(self, job: EpisodeJob, on_turn: Any) -> Episode:
        envs = self.idle.setdefault(job.n_players, [])
        env = envs.pop() if envs else None
        if env is None:
            env = GameParallelEnv(self.spec, n_players=job.n_players, max_cycles=self.setup.max_cycles)
        ep = await play_episode(
            job,
            self.spec,
            self.factory,
            run_id=self.setup.run_id,
            on_turn=on_turn,
            max_cycles=self.setup.max_cycles,
            env=env,
        )
        envs.append(env)
        return ep

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """`await fn(spec, factory, *args)` here: work of a caller above the runner (a branch's
        rollouts) with this actor's game and agents; `fn` is a module-level function (Ray ships it by
        reference) and its arguments and result are records, never live envs."""
        return await fn(self.spec, self.factory, *args)

    async def aclose(self) -> None:
        await self.factory.aclose()


class EndpointLimiter:
    """The request slots of one endpoint (`max_parallel`), for every actor of the cluster. Slots are
    counted per holder, so the driver can take back those of an actor that died (`forget`)."""

    def __init__(self, slots: int) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.held: dict[str, int] = {}
        self.dead: set[str] = set()

    async def acquire(self, holder: str) -> None:
        await self.slots.acquire()
        if holder in self.dead:  # died while waiting: the slot was never its
            self.slots.release()
            return
        self.held[holder] = self.held.get(holder, 0) + 1

    async def release(self, holder: str) -> None:
        if self.held.get(holder, 0) > 0:
            self.held[holder] -= 1
            self.slots.release()

    async def forget(self, holder: str) -> int:
        self.dead.add(holder)
        n = self.held.pop(holder, 0)
        for _ in range(n):
            self.slots.release()
        return n


# --- the driver's side -------------------------------------------------------------------------------


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """The errors that mean an actor or its node is gone (not a bug in an episode)."""
    e = ray.exceptions
    return (e.RayActorError, e.WorkerCrashedError, e.NodeDiedError, e.ObjectLostError, e.LocalRayletDiedError)


def _limiters(ray: Any, factory: AgentFactory) -> dict[str, Any]:
    """One limiter actor per endpoint some profile limits, on this (the driver's) node: a node that is
    lost must not take the limits with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    cls = ray.remote(EndpointLimiter)
    limits: dict[str, int] = {}
    for p in factory.profiles.values():
        if p.backend == "endpoint" and p.max_parallel:
            # The first profile's limit is the server's, as in one process (`llm.client._server_slot`).
            limits.setdefault(str(p.base_url), p.max_parallel)
    return {url: cls.options(num_cpus=0, scheduling_strategy=here).remote(n) for url, n in limits.items()}


class _Actor:
    """An actor as the driver sees it: its handle, name, and the items it is working on."""

    def __init__(self, handle: Any, holder: str) -> None:
        self.handle, self.holder = handle, holder
        self.in_flight = 0
        self.alive = True


Item = TypeVar("Item")
Result = TypeVar("Result")


class RayPool:
    """`workers` EpisodeActors for one game and one set of agents, and a scheduler over them.

    `map` hands each actor one item at a time, up to its share of `concurrency`; an item whose actor
    (or node) is lost goes back to the front of the queue, and a new actor takes the lost one's
    place. Results come back to the caller here, one at a time, as they finish: the caller alone
    writes them. `call(actor_handle, item)` makes the remote call: `play`, `follow`, or `run` (any
    module-level coroutine function `fn(spec, factory, *args)`, e.g. a branch's rollouts).
    """

    def __init__(
        self,
        spec: GameSpec,
        factory: AgentFactory,
        *,
        address: str = "auto",
        workers: int | None = None,
        concurrency: int = 8,
        run_id: str = "",
        max_cycles: int | None = None,
    ) -> None:
        if type(factory) is not AgentFactory:
            raise ValueError("Ray actors need a plain AgentFactory (each actor rebuilds it from profiles)")
        self.spec, self.factory, self.address = spec, factory, address
        self.workers, self.concurrency = workers, max(1, concurrency)
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%S")
        self.max_cycles = max_cycles
        self.name = f"rsi-env-{self.run_id}-{uuid.uuid4().hex[:6]}"  # runs may share a cluster
        self.actors: list[_Actor] = []
        self.limiters: dict[str, Any] = {}
        self.started = 0
        self.requeued = 0
        self.start_s = 0.0

    async def start(self, items: int) -> None:
        """Connect (or start Ray) and start the actors, at most one per item."""
        t0 = time.perf_counter()
        ray = ray_module()
        connect(self.address)
        self._ray = ray
        self._total_cpus = float(ray.cluster_resources().get("CPU", 1))
        self.n = max(1, min(self.workers or int(self._total_cpus), items, self.concurrency))
        self.share = -(-self.concurrency // self.n)  # in flight per actor; `concurrency` in all at most
        self.limiters = _limiters(ray, self.factory)
        self._cls = ray.remote(EpisodeActor)
        self.actors = [self._start_actor() for _ in range(self.n)]
        try:
            await asyncio.gather(*(a.handle.ready.remote() for a in self.actors))
        except ray.exceptions.RayActorError as exc:  # e.g. a node without rsi_env installed
            self.close()
            raise RuntimeError(f"Ray actors failed to start: {str(exc)[:2000]}") from None
        self.start_s = time.perf_counter() - t0

    def _start_actor(self, replacement: bool = False) -> _Actor:
        holder = f"{self.name}-a{self.started}"  # its name at the limiters, and in `ray list actors`
        self.started += 1
        f = self.factory
        setup = ActorSetup(
            spec=self.spec.model_dump(mode="json", by_alias=True),
            spec_hash=compiled(self.spec).hash,
            names=f.names,
            profiles=f.profiles,
            override=f.override,
            run_id=self.run_id,
            max_cycles=self.max_cycles,
            holder=holder,
        )
        handle = self._cls.options(
            # Up to a core each, less when there are more actors than cores (they mostly wait on I/O).
            # A replacement asks for none: after a node is lost the cores left may all be taken, and
            # an actor that cannot be placed would hold its items forever.
            num_cpus=0 if replacement else min(1.0, self._total_cpus / self.n),
            max_concurrency=self.share + 4,
            scheduling_strategy="SPREAD",
            name=holder,
        ).remote(setup.model_dump_json(), self.limiters)
        return _Actor(handle, holder)

    def _lose(self, actor: _Actor, why: BaseException) -> None:
        """An actor died (or its node): take back its slots, and start another in its place."""
        if not actor.alive:
            return
        actor.alive = False
        with contextlib.suppress(Exception):
            self._ray.kill(actor.handle, no_restart=True)
        for lim in self.limiters.values():
            lim.forget.remote(actor.holder)
        if self.started >= self.n * (1 + MAX_REPLACEMENTS_PER_WORKER):
            raise RuntimeError(
                f"Ray actors keep dying ({self.started - self.n} replaced); the last: {str(why)[:500]}"
            )
        self.actors.append(self._start_actor(replacement=True))

    async def map(
        self,
        items: list[Item],
        call: Callable[[Any, Item], Awaitable[Result]],
        done: Callable[[Item, Result], Awaitable[None]],
        claim: Callable[[Item], bool] = lambda _: True,
    ) -> None:
        """`call` every item on an actor (`claim` may skip one as it comes up), `done` with each result
        here as it arrives. A bug in `call` (RayTaskError) ends the map, as it would in one process."""
        lost = _lost_errors(self._ray)
        queue = deque(items)
        wake = asyncio.Event()  # a slot freed, or an item came back

        async def one(actor: _Actor, item: Item) -> None:
            try:
                result = await call(actor.handle, item)
            except lost as exc:
                queue.appendleft(item)  # done again, by another actor
                self.requeued += 1
                self._lose(actor, exc)
                return
            finally:
                actor.in_flight -= 1
                wake.set()
            await done(item, result)

        tasks: set[asyncio.Task[None]] = set()
        try:
            while queue or tasks:
                for actor in [a for a in self.actors if a.alive]:
                    while queue and actor.in_flight < self.share and len(tasks) < self.concurrency:
                        item = queue.popleft()
                        if not claim(item):
                            continue
                        actor.in_flight += 1
                        tasks.add(asyncio.create_task(one(actor, item)))
                if not tasks:
                    break
                wake.clear()
                woken = asyncio.create_task(wake.wait())
                waiting: list[asyncio.Task[Any]] = [*tasks, woken]
                finished, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                for t in finished:
                    if t in tasks:
                        tasks.discard(t)
                        t.result()
        finally:
            for t in tasks:
                t.cancel()

    def close(self) -> None:
        """Stop the actors and limiters (the cluster stays up)."""
        for a in self.actors:
            with contextlib.suppress(Exception):
                self._ray.kill(a.handle, no_restart=True)
        for lim in self.limiters.values():
            with contextlib.suppress(Exception):
                self._ray.kill(lim, no_restart=True)
        self.actors, self.limiters = [], {}


async def play_on_ray(runner: Driver, todo: list[EpisodeJob]) -> None:
    """Play `todo` on `runner.workers` Ray actors; every record is written by `runner` here. A callback
    that follows turns gets those of one episode at a time, streamed from its actor."""
    stats = runner.stats
    if not todo:
        return
    pool = RayPool(
        runner.spec, runner.factory, address=runner.ray or "auto", workers=runner.workers,
        concurrency=runner.concurrency, run_id=runner.run_id, max_cycles=runner.max_cycles,
    )  # fmt: skip
    following: list[str] = []  # the episode whose turns stream back (one at a time)

    async def call(actor: Any, job: EpisodeJob) -> Episode:
        if not runner.follows_turns or following:
            return Episode.model_validate_json(await actor.play.remote(job.model_dump_json()))
        following.append(job.episode_id)
        try:
            record = None
            async for ref in actor.follow.options(num_returns="streaming").remote(job.model_dump_json()):
                kind, data = await ref
                ep = Episode.model_validate_json(data)
                if kind == "turn":
                    runner.turn(ep, ep.turns[-1])
                else:
                    record = ep
            assert record is not None
            return record
        finally:
            following.clear()

    async def done(job: EpisodeJob, ep: Episode) -> None:
        await runner.record(ep)

    try:
        await pool.start(len(todo))
        stats.actors, stats.ray_start_s = pool.n, pool.start_s
        await pool.map(todo, call, done, claim=runner.claim)
    finally:
        stats.requeued = pool.requeued
        pool.close()


async def remote_task(fn: Callable[..., Any], *args: Any, address: str = "auto") -> Any:
    """`fn(*args)` as one Ray task on a core of the cluster, awaited: CPU-bound work off this process
    (a generated game's play-test). A task whose worker or node is lost is retried by Ray (the
    function is pure: running it twice writes nothing twice)."""
    ray = ray_module()
    connect(address)
    return await ray.remote(num_cpus=1, max_retries=3)(fn).remote(*args)


async def run_on(actor: Any, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """`await fn(spec, factory, *args)` on an actor (for `RayPool.map`'s `call`)."""
    return await actor.run.remote(fn, *args)
