"""Runner throughput against a fixed-latency test server, beside the bare openai client in the same run.

For each concurrency the runner plays N negotiation episodes with LLM agents on the fault server
(no faults, a fixed per-call latency): in one process, and with `--ray` also on Ray actors
(`--actors`, default 2, on a local Ray started once); then the bare `openai` async client makes the
same calls at the same concurrency: every request the runner sent, rebuilt from its trajectories
(the same messages, so the same bytes on the wire and the same prompt growth; the first turn's
action schema and the profile's sampling).

    ideal = calls x latency / concurrency        eff = ideal / achieved

`run eff` leaves out the Ray actors' start-up (`start s`, inside `actual s`): a pool is started once
and then serves as many episodes as the run has, so the start-up is printed apart and the run is
judged without it (`eff` keeps it).
`steady` is the efficiency from the first episode's start until the last episode (call) started:
it leaves out the run's start (reading the file; starting Ray actors) and its end, a tail of long
episodes finishing with fewer than `concurrency` in flight, which no runner avoids and a long run
hardly sees; the bare client has neither. The figure that matters is the runner's efficiency as a
share of the bare client's (target >= 0.90), printed for both. On a small machine every client ends
up capped by its own CPU per call (`cpu ms`: this process's; for Ray rows the driver's only, the
actors' own CPU is on other processes). The server runs in its own process, so its CPU is not
charged to the client. Ray's start-up (connecting or starting Ray once; starting the actors, per
row and inside its time) is printed. Then tokens per episode against turn count (the fault server
counts ~4 characters per token): prompt growth.

    python scripts/bench_runner.py [--episodes 600] [--latency 0.1] [--concurrency 32 64 128 256]
                                   [--ray] [--actors 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import openai
from pydantic import BaseModel

from rsi_env.agents.factory import AgentFactory
from rsi_env.agents.llm_agent import LLMAgent, conversation
from rsi_env.agents.profiles import EndpointOverride
from rsi_env.catalog import load_game
from rsi_env.env import GameParallelEnv
from rsi_env.llm import _httpx
from rsi_env.runner import Runner, plan
from rsi_env.spec import GameSpec
from rsi_env.testing.fault_server import FaultConfig, FaultServerProcess
from rsi_env.trajectory import Episode
from rsi_env.trajectory_store import read_episodes

MODEL = "fault-test-model"
AGENT = "local"  # the default profile; --base-url style override points it at the test server


def cpu_time() -> float:
    """CPU seconds of this process and of its finished children (worker processes, once waited for;
    the fault server is still running, so it is not counted)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def server_requests(base_url: str) -> int:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=10) as r:
        return int(json.load(r)["requests"])


class Timing(BaseModel):
    """One row's timing. `steady` covers the run until its last unit of work started (the queue was
    empty from then on): a finite run of episodes ends with a tail of long episodes finishing with
    fewer than `concurrency` in flight, which no runner can avoid and a long run does not see."""

    elapsed: float
    steady_s: float
    steady_calls: int
    start_s: float = 0.0  # of `elapsed`: starting the Ray actors (a pool started once serves many runs)


async def run_runner(
    spec: GameSpec, base_url: str, episodes: int, concurrency: int, actors: int, out: Path
) -> Timing:
    """One runner row (`actors` 0: one process), the actors' start-up included and counted apart."""
    factory = AgentFactory([AGENT], spec, EndpointOverride(base_url=base_url, model=MODEL))
    kw: dict[str, Any] = {"ray": "auto", "workers": actors} if actors else {}
    runner = Runner(spec, factory, out, concurrency=concurrency, progress=False, **kw)
    jobs = plan(spec, factory, episodes)
    t0 = time.perf_counter()
    try:
        stats = await runner.run(jobs)
    finally:
        await factory.aclose()
    elapsed = time.perf_counter() - t0
    # When each request completed, from the record: an episode's calls follow one another from its
    # start (the few ms between them are left out, so this errs early, i.e. against the runner).
    eps = list(read_episodes(out))
    first_start = min(ep.started_at for ep in eps)
    last_start = max(ep.started_at for ep in eps)
    steady_calls = 0
    for ep in eps:
        t = ep.started_at
        for turn in ep.turns:
            for c in (*turn.failed_calls, turn.call):
                t += c.latency_s
                steady_calls += (1 + c.retries) * (t <= last_start)
    return Timing(
        elapsed=elapsed,
        steady_s=last_start - first_start,
        steady_calls=steady_calls,
        start_s=stats.ray_start_s,
    )


def first_turn_request(spec: GameSpec) -> dict[str, Any]:
    """The request an LLM agent sends on its first turn of seed 0, as ChatClient would send it."""
    env = GameParallelEnv(spec)
    env.reset(seed=0)
    # Never called (this only builds the request): a loopback URL, which needs no API key.
    factory = AgentFactory([AGENT], spec, EndpointOverride(base_url="http://127.0.0.1:9/v1", model=MODEL))
    player = next(p for p in env.agents if env.agent_info(p)["is_turn"])
    agent = factory.build(AGENT, player, 0)
    assert isinstance(agent, LLMAgent)
    info = env.agent_info(player)
    _prompt, messages = agent.messages_for(info)
    s = agent.profile.sampling
    return {
        "model": MODEL,
        "messages": messages,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "action", "schema": info["action_schema"], "strict": False},
        },
    }


def recorded_requests(episodes: list[Episode]) -> list[list[dict[str, str]]]:
    """The message lists of every call the runner made, rebuilt from the trajectories the way the
    agent builds them (system prompt, its earlier exchanges within its window, this turn's prompt)."""
    out = []
    for ep in episodes:
        seats = {p.player: p for p in ep.players}
        exchanges: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for turn in ep.turns:
            seat = seats[turn.player]
            if turn.prompt is None or seat.system is None:
                continue
            out.append(conversation(seat.system, exchanges[turn.player], turn.prompt, seat.window or 8))
            exchanges[turn.player].append((turn.prompt, turn.raw))
    return out


async def run_bare(
    base_url: str, concurrency: int, request: dict[str, Any], messages: list[list[dict[str, str]]]
) -> Timing:
    """The bare openai async client: one call per message list, at most `concurrency` in flight."""
    http = openai.DefaultAsyncHttpxClient(
        limits=_httpx.Limits(max_connections=256, max_keepalive_connections=256)
    )
    # 60 s for every phase, connecting included: on a busy machine 256 fresh connections to a starved
    # server can take longer than the default 5 s to connect.
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-bench", max_retries=0, timeout=60.0, http_client=http
    )
    sem = asyncio.Semaphore(concurrency)
    starts: list[float] = []
    ends: list[float] = []

    async def one(i: int) -> bool:
        async with sem:
            starts.append(time.perf_counter())
            r = await client.chat.completions.create(**{**request, "messages": messages[i]}, seed=i)
            ends.append(time.perf_counter())
            return bool(r.choices[0].message.content)

    t0 = time.perf_counter()
    try:
        ok = await asyncio.gather(*(one(i) for i in range(len(messages))))
    finally:
        await client.close()
    elapsed = time.perf_counter() - t0
    if not all(ok):
        raise RuntimeError("the bare client got empty replies from a fault-free server")
    last_start = max(starts)
    return Timing(elapsed=elapsed, steady_s=last_start - t0, steady_calls=sum(e <= last_start for e in ends))


def tokens_by_turns(episodes: list[Episode]) -> None:
    by_turns: dict[int, list[Episode]] = defaultdict(list)
    for ep in episodes:
        by_turns[len(ep.turns)].append(ep)
    print("\ntokens per episode against turn count (prompt grows with the history each call carries)")
    print(
        f"{'turns':>5}{'episodes':>10}{'prompt/ep':>11}{'compl/ep':>10}{'tokens/ep':>11}{'tokens/turn':>13}"
    )
    for n in sorted(by_turns):
        eps = by_turns[n]
        pt = statistics.mean(e.usage.prompt_tokens for e in eps)
        ct = statistics.mean(e.usage.completion_tokens for e in eps)
        print(f"{n:>5}{len(eps):>10}{pt:>11.0f}{ct:>10.0f}{pt + ct:>11.0f}{(pt + ct) / max(1, n):>13.0f}")
    at: dict[int, list[int]] = defaultdict(list)
    for ep in episodes:
        for k, t in enumerate(ep.turns, 1):
            at[k].append(t.call.prompt_tokens)
    row = "  ".join(f"{k}:{statistics.mean(v):.0f}" for k, v in sorted(at.items()))
    print(f"prompt tokens of the k-th turn of an episode (mean): {row}")


class Effs(BaseModel):
    """A row's efficiencies: over the whole run, the run without the actors' start-up, the steady state."""

    whole: float
    run: float
    steady: float

    def over(self, bare: Effs) -> Effs:
        return Effs(whole=self.whole / bare.whole, run=self.run / bare.run, steady=self.steady / bare.steady)


def efficiencies(calls: int, latency: float, conc: int, timing: Timing) -> Effs:
    ideal = calls * latency / conc
    return Effs(
        whole=ideal / timing.elapsed,
        run=ideal / (timing.elapsed - timing.start_s),
        steady=timing.steady_calls * latency / conc / timing.steady_s,
    )


def row(conc: int, name: str, calls: int, latency: float, timing: Timing, cpu: float, tail: str = "") -> None:
    e = efficiencies(calls, latency, conc, timing)
    print(
        f"{conc:>4} {name:<15}{calls:>6}{calls * latency / conc:>8.2f}{timing.elapsed:>9.2f}"
        f"{timing.start_s:>8.2f}{calls / timing.elapsed:>8.1f}{e.whole:>7.2f}{e.run:>8.2f}{e.steady:>8.2f}"
        f"{cpu * 1000 / calls:>8.2f}{tail}",
        flush=True,
    )


def mark(r: float) -> str:
    return f"{r:.2f} {'ok ' if r >= 0.9 else 'LOW'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--game", default="negotiation")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--ray", action="store_true", help="add rows on Ray actors (the ray extra)")
    ap.add_argument("--actors", type=int, default=2, help="Ray actors of the Ray rows")
    ap.add_argument("--repeat", type=int, default=1, help="rows per setting (the machine may be shared)")
    ns = ap.parse_args()

    spec = load_game(ns.game)
    request = first_turn_request(spec)
    config = FaultConfig(latency_s=ns.latency)
    last_out: Path | None = None
    rows = [0, ns.actors] if ns.ray else [0]
    ratios: dict[tuple[int, str], list[Effs]] = defaultdict(list)
    with (
        FaultServerProcess("--config", config.model_dump_json()) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        url = server.base_url
        print(
            f"{spec.id}: {ns.episodes} episodes per runner row; fault server {url} in its own process, "
            f"latency {ns.latency * 1000:.0f} ms, no faults; {os.cpu_count()} CPU(s); "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        if ns.ray:
            from rsi_env.runner.ray_backend import connect

            print(f"Ray started on this machine in {connect('auto'):.2f} s (once, before the rows)")
        print(
            f"{'conc':>4} {'client':<15}{'calls':>6}{'ideal s':>8}{'actual s':>9}{'start s':>8}{'calls/s':>8}"
            f"{'eff':>7}{'run eff':>8}{'steady':>8}{'cpu ms':>8}   runner/bare: eff, run eff, steady"
        )
        for conc in ns.concurrency:
            for rep in range(ns.repeat):
                for actors in rows:
                    out = Path(tmp) / f"c{conc}-a{actors}-r{rep}"
                    before = server_requests(url)
                    cpu0 = cpu_time()
                    runner = asyncio.run(run_runner(spec, url, ns.episodes, conc, actors, out))
                    cpu = cpu_time() - cpu0
                    calls = server_requests(url) - before
                    last_out = out
                    name = f"ray {actors} actors" if actors else "one process"
                    row(conc, name, calls, ns.latency, runner, cpu)
                    # The same calls at the same concurrency, right after, on the same server.
                    cpu0 = time.process_time()
                    messages = recorded_requests(list(read_episodes(out)))
                    if len(messages) != calls:
                        raise RuntimeError(f"rebuilt {len(messages)} requests of the {calls} the server saw")
                    bare_timing = asyncio.run(run_bare(url, conc, request, messages))
                    cpu = time.process_time() - cpu0
                    r = efficiencies(calls, ns.latency, conc, runner).over(
                        efficiencies(calls, ns.latency, conc, bare_timing)
                    )
                    ratios[conc, name].append(r)
                    row(conc, "  bare openai", calls, ns.latency, bare_timing, cpu,
                        f"   {mark(r.whole)} {mark(r.run)} {mark(r.steady)}")  # fmt: skip
        print(f"\nrunner / bare client, median of {ns.repeat} pair(s) (target >= 0.90)")
        print(f"{'conc':>4} {'client':<15}{'whole':>8}{'run':>8}{'steady':>8}")
        for (conc, name), rs in ratios.items():
            med = [statistics.median(getattr(r, k) for r in rs) for k in ("whole", "run", "steady")]
            print(f"{conc:>4} {name:<15}" + "".join(f"{m:>8.2f}" for m in med))
        if last_out is not None:
            tokens_by_turns(list(read_episodes(last_out)))


if __name__ == "__main__":
    main()
