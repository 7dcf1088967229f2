"""Random-play speed of every game's AEC env, beside PettingZoo's own generated_agents_env_v0.

Two workloads per game: legal random actions (RandomAgent over the action schema) and invalid ones
(random strings sampled from the Text action space). Prints steps/s and the ratio to the reference;
the target is every game within 10x of the reference.

The reference is measured again right before each workload, and each ratio is taken against that
measurement: this machine's speed drifts by ±25% within minutes (other tenants), which a single
reference at the start turned into a ratio off by as much for the games measured last. With
`--repeat N` each pair is measured N times and the median ratio is shown.

    python scripts/bench_env.py [--seconds 3] [--repeat 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from pettingzoo.test.example_envs import generated_agents_env_v0
from rich.console import Console
from rich.table import Table

import rsi_env
from rsi_env.agents.baseline import RandomAgent
from rsi_env.catalog import game_files


def steps_per_second(make_env, choose, seconds: float, *, reference: bool = False) -> float:
    """Steps per second over whole episodes, for about `seconds`."""
    env = make_env()
    steps, spent, seed = 0, 0.0, 0
    give_up = time.perf_counter() + 10 * seconds + 5  # if nearly every reference episode were cut short
    while spent < seconds and time.perf_counter() < give_up:
        env.reset(seed=seed)
        seed += 1
        t0, n = time.perf_counter(), 0
        try:
            for agent in env.agent_iter():
                _obs, _r, term, trunc, info = env.last()
                env.step(None if term or trunc else choose(env, agent, info))
                n += 1
        except KeyError:
            # generated_agents_env_v0 (PettingZoo 1.27) sometimes reaches an agent it spawned without a
            # reward entry. Such a cut-short episode is left out: its early steps, with few agents, are
            # cheaper than a whole episode's and would flatter the reference. Our games never do this.
            if not reference:
                raise
            continue
        spent += time.perf_counter() - t0
        steps += n
    return steps / spent if spent else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--repeat", type=int, default=1, help="pairs per workload (the median ratio is shown)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    agents: dict[str, RandomAgent] = {}

    def reference() -> float:
        return steps_per_second(
            generated_agents_env_v0.env,
            lambda env, a, info: env.action_space(a).sample(),
            args.seconds,
            reference=True,
        )

    def legal(env, agent, info):
        # One agent per seat, made once: `setdefault(agent, RandomAgent(...))` would build (and seed)
        # a generator at every step, a cost of the benchmark, not of the env (~10-30 µs a step).
        if agent not in agents:
            agents[agent] = RandomAgent(len(agents))
        return agents[agent].choose(info)

    def invalid(env, agent, info):
        return env.action_space(agent).sample()

    refs: list[float] = []

    def paired(game: str, choose) -> tuple[float, float]:
        """Median steps/s of the game and median ratio to the reference measured just before."""
        speeds, ratios = [], []
        for _ in range(args.repeat):
            ref = reference()
            refs.append(ref)
            v = steps_per_second(lambda: rsi_env.make(game), choose, args.seconds)
            speeds.append(v)
            ratios.append(v / ref)
        return statistics.median(speeds), statistics.median(ratios)

    rows = []
    for game in game_files():
        v, rv = paired(game, legal)
        i, ri = paired(game, invalid)
        rows.append((game, v, rv, i, ri))
    t = Table(
        title=(
            "AEC random play, steps/s (reference generated_agents_env_v0, measured before each "
            f"workload: median {statistics.median(refs):,.0f} steps/s, {min(refs):,.0f}-{max(refs):,.0f})"
        )
    )
    for col in ("game", "legal actions", "ratio", "invalid text", "ratio", "within 10x"):
        t.add_column(col, justify="right" if col != "game" else "left")
    for game, v, rv, i, ri in rows:
        ok = rv >= 0.1 and ri >= 0.1
        t.add_row(game, f"{v:,.0f}", f"{rv:.2f}", f"{i:,.0f}", f"{ri:.2f}", "yes" if ok else "NO")
    Console().print(t)


if __name__ == "__main__":
    main()
