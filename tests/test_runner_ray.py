"""The runner on Ray actors (the `ray` extra), against the fault server over real loopback HTTP.

- 200 episodes on 2 actors (`ray.init(num_cpus=2)`): each recorded exactly once, the same records
  one process writes, and a callback that follows turns gets one episode at a time.
- An actor killed mid-run (SIGKILL of its process) loses nothing: its episodes go back to the queue.
- A profile's `max_parallel: 2` holds at the server while 4 actors play (the server counts requests
  in flight).
- `play --ray --workers 2 --live` through the CLI.

A two-node cluster losing a node mid-run: tests/test_runner_ray_cluster.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from rsi_env.agents.factory import AgentFactory  # noqa: E402
from rsi_env.agents.profiles import EndpointOverride  # noqa: E402
from rsi_env.catalog import load_game  # noqa: E402
from rsi_env.runner import RunCallback, Runner, RunStats, plan  # noqa: E402
from rsi_env.spec import GameSpec  # noqa: E402
from rsi_env.testing.fault_server import FaultConfig, FaultServer  # noqa: E402
from rsi_env.trajectory import Episode, Turn  # noqa: E402
from rsi_env.trajectory_store import read_episodes  # noqa: E402

from .test_runner import GAME, MODEL, REPO, comparable, deterministic_responder, raw_lines, write_profile  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def spec() -> GameSpec:
    return load_game(GAME)


def play(runner: Runner, n: int) -> RunStats:
    async def go() -> RunStats:
        try:
            return await runner.run(plan(runner.spec, runner.factory, n))
        finally:
            await runner.factory.aclose()

    return asyncio.run(go())


class FollowTurns(RunCallback):
    """Records every turn it is given, as a live view would see them."""

    follows_turns = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []  # (episode id, turns so far)

    def on_turn(self, ep: Episode, turn: Turn) -> None:
        assert ep.turns[-1] == turn
        self.seen.append((ep.episode_id, len(ep.turns)))


def test_two_hundred_episodes_on_two_actors_each_recorded_once(
    tmp_path: Path, spec: GameSpec, local_ray: None
) -> None:
    with FaultServer(FaultConfig(latency_s=0.002), responder=deterministic_responder) as srv:
        agent = write_profile(tmp_path, srv.base_url)
        factory = AgentFactory([agent, "random"], spec, EndpointOverride(base_url=srv.base_url, model=MODEL))
        follow = FollowTurns()
        runner = Runner(
            spec, factory, tmp_path / "ray", concurrency=32, progress=False, callbacks=[follow],
            ray="auto", workers=2,
        )  # fmt: skip
        stats = play(runner, 200)
        # The same plan's first episodes in one process: the same records.
        factory = AgentFactory([agent, "random"], spec, EndpointOverride(base_url=srv.base_url, model=MODEL))
        play(Runner(spec, factory, tmp_path / "one", concurrency=8, progress=False), 10)
    jobs = plan(spec, factory, 200)
    ids = [d["episode_id"] for d in raw_lines(tmp_path / "ray")]
    assert len(ids) == len(set(ids)) == 200 and set(ids) == {j.episode_id for j in jobs}
    assert stats.done == 200 and stats.actors == 2 and stats.requeued == 0
    on_ray = {ep.episode_id: ep for ep in read_episodes(tmp_path / "ray")}
    assert stats.calls == sum(ep.usage.calls for ep in on_ray.values()) > 200
    for ep in read_episodes(tmp_path / "one"):
        assert comparable(ep) == comparable(on_ray[ep.episode_id])
    # Turns stream back one episode at a time, all of it, in order.
    followed: list[str] = []
    for eid, n in follow.seen:
        if not followed or followed[-1] != eid:
            assert eid not in followed, "a followed episode's turns were interleaved with another's"
            assert n == 1
            followed.append(eid)
    counts = {eid: max(n for e, n in follow.seen if e == eid) for eid in followed}
    assert followed and all(counts[eid] == len(on_ray[eid].turns) for eid in followed)


def test_a_killed_actor_loses_nothing(tmp_path: Path, spec: GameSpec, local_ray: None) -> None:
    """SIGKILL of one actor's process after a few episodes: its episodes in flight are played again by
    a new actor; every planned episode is in the file once."""

    class KillOne(RunCallback):
        def __init__(self) -> None:
            self.pid: int | None = None

        def on_episode_end(self, ep: Episode, stats: RunStats) -> None:
            if stats.done == 5 and self.pid is None:
                name = sorted(n["name"] for n in ray.util.list_named_actors(all_namespaces=True)
                              if n["name"].startswith("rsi-env-"))[0]  # fmt: skip
                where = ray.get(ray.get_actor(name, namespace=_namespace(name)).ready.remote())
                self.pid = int(where.rsplit(":", 1)[1])
                os.kill(self.pid, signal.SIGKILL)

    with FaultServer(FaultConfig(latency_s=0.02)) as srv:
        agent = write_profile(tmp_path, srv.base_url)
        factory = AgentFactory([agent], spec, EndpointOverride(base_url=srv.base_url, model=MODEL))
        kill = KillOne()
        runner = Runner(
            spec, factory, tmp_path, concurrency=8, progress=False, callbacks=[kill], ray="auto", workers=2
        )
        stats = play(runner, 30)
    assert kill.pid is not None
    ids = [d["episode_id"] for d in raw_lines(tmp_path)]
    assert len(ids) == len(set(ids)) == 30
    assert set(ids) == {j.episode_id for j in plan(spec, factory, 30)}
    assert stats.requeued >= 1 and stats.done == 30


def _namespace(name: str) -> str | None:
    for n in ray.util.list_named_actors(all_namespaces=True):
        if n["name"] == name:
            return str(n["namespace"])
    return None


def test_max_parallel_holds_across_four_actors(tmp_path: Path, spec: GameSpec, local_ray: None) -> None:
    with FaultServer(FaultConfig(latency_s=0.03)) as srv:
        path = write_profile(tmp_path, srv.base_url)
        limited = Path(path).read_text() + "max_parallel: 2\n"
        Path(path).write_text(limited)
        factory = AgentFactory([path], spec)
        runner = Runner(spec, factory, tmp_path, concurrency=16, progress=False, ray="auto", workers=4)
        stats = play(runner, 12)
        peak = srv.max_in_flight
    assert stats.actors == 4 and stats.done == 12 and stats.calls > 12
    assert peak == 2, f"at most 2 requests at once at the server (and the limit was reached): {peak}"


def test_play_on_ray_through_the_cli_with_a_live_view(tmp_path: Path) -> None:
    """`play --ray --workers 2 --live`: a fresh interpreter starts its own Ray; the live view prints
    the followed episodes' turns and summaries, the run summary names the actors."""
    cmd = [
        sys.executable, "-m", "rsi_env.play", "--agents", "scripted,random", "--episodes", "4",
        "--out", str(tmp_path), "--ray", "--workers", "2", "--live",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=240, env=env)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert "on 2 Ray actor(s)" in out and out.count("status: complete") >= 1
    assert len(raw_lines(tmp_path)) == 4


def test_what_ray_actors_cannot_do(tmp_path: Path, spec: GameSpec) -> None:
    with pytest.raises(ValueError, match="human"):
        Runner(spec, AgentFactory(["human", "random"], spec), tmp_path, ray="auto")
    with pytest.raises(ValueError, match="endpoint"):
        Runner(spec, AgentFactory(["local"], spec), tmp_path, ray="auto")


def test_prefs_generate_branches_on_ray_actors_as_in_one_process(tmp_path: Path, local_ray: None) -> None:
    """`prefs generate --ray`: the episodes and the branches' rollouts play on actors (they get the
    recorded episodes, never live envs), the judges rank here; the sets are those one process makes."""
    from rsi_env.prefs.__main__ import main as prefs_main
    from rsi_env.prefs.candidates import read_sets

    def generate(url: str, out: Path, *extra: str) -> None:
        code = prefs_main(
            [
                "generate", "--game", "negotiation", "--agents", "local,scripted", "--episodes", "2",
                "--branch", "2", "--decisions", "2", "--judges", "local@0.2", "--out", str(out),
                "--base-url", url, "--model", MODEL, "--quiet", *extra,
            ]
        )  # fmt: skip
        assert code == 0

    # One server for both (its URL is part of the episode ids); replies depend on the request only.
    with FaultServer(FaultConfig(latency_s=0.002), responder=deterministic_responder) as srv:
        generate(srv.base_url, tmp_path / "ray", "--ray", "--workers", "2")
        generate(srv.base_url, tmp_path / "one")
    on_ray = {bs.set_id: bs for bs in read_sets(tmp_path / "ray")}
    here = {bs.set_id: bs for bs in read_sets(tmp_path / "one")}
    assert on_ray and set(on_ray) == set(here)
    for set_id, bs in on_ray.items():
        assert [c.model_dump() for c in bs.candidates] == [c.model_dump() for c in here[set_id].candidates]
        assert [j.model_dump() for j in bs.judges] == [j.model_dump() for j in here[set_id].judges] != []


def test_games_generate_play_tests_on_ray_as_in_one_process(tmp_path: Path, local_ray: None) -> None:
    """`games generate --ray`: a generated game's play-test runs as a Ray task; its result is the one
    this process computes (the play-test is seeded)."""
    from rsi_env.generate.pipeline import RunConfig

    from .test_generate import RecordedLLM, _run, fixture_text

    reports = {}
    for where, address in (("ray", "auto"), ("here", None)):
        config = RunConfig(
            n=1, seed=3, out_dir=tmp_path / where, log_path=tmp_path / f"{where}.jsonl", profile="recorded",
            episodes=8, skill_seeds=20, ray=address,
        )  # fmt: skip
        reports[where], _ = _run(config, RecordedLLM(fixture_text("jury")))
    (on_ray,), (here,) = reports["ray"].attempts, reports["here"].attempts
    assert on_ray.playtest is not None and here.playtest is not None
    assert on_ray.playtest.model_dump(exclude={"duration_s"}) == here.playtest.model_dump(
        exclude={"duration_s"}
    )
    assert on_ray.decision == here.decision == "accepted"
