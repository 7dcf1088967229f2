"""GRPO against a game: environment steps/s and rollouts/s of TRL's `environment_factory` loop, beside
plain play of the same episodes in the same run.

The learner is a tiny Llama built here and taught to call a tool (`rsi_env.testing.tiny_lm`); the
other seats are `--opponents` (default `local`: the embedded SmolLM2-135M on llama.cpp). Measured:

    grpo      GRPOTrainer.train() for --steps steps: rollouts (episodes) and environment steps (engine
              ticks, every seat's) per second of training, the time spent inside the environment
              (reset, tool calls, get_reward: where the opponents play), the learner's tool calls
    replay    the same episodes again by the runner alone (the learner's recorded moves replayed, the
              opponents rebuilt with the same seeds): what the game and the opponents cost without
              TRL and the session; GRPO's time inside the environment against it is the tool path's
    session   the learner's seat driven through SeatSession by a scripted policy (no learner model),
              beside the same games through PettingZoo's env.step: the session machinery's overhead

The embedded model is started before anything is timed, and each phase's opponent model calls are
summed (calls, decoded tokens, prompt tokens and the part the server's prefix cache reused, seconds
waited): replay sends the very prompts GRPO sent, so its calls may reuse more of the cache, and
the ratio of time per opponent call says how much of the difference is the model's.

Figures on a shared machine are noisy: read the ratios, measured in one run.

    python scripts/bench_grpo.py [--game negotiation] [--opponents local] [--steps 4] [--generations 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from rsi_env.agents.base import TurnReport
from rsi_env.agents.baseline import ScriptedAgent
from rsi_env.agents.factory import AgentFactory
from rsi_env.catalog import load_game
from rsi_env.env import GameParallelEnv, make_parallel
from rsi_env.integrations.session import SeatSession
from rsi_env.integrations.trl import dataset, environment
from rsi_env.runner import build_agents, continue_episode, new_episode
from rsi_env.testing.tiny_lm import tool_calling_model
from rsi_env.trajectory import CallInfo, Episode

REPLIES = {
    "negotiation": [{"name": "propose", "arguments": {"books": 1, "hats": 1, "balls": 1}}],
    "ultimatum": [{"name": "say", "arguments": {"message": "hello"}}],
}


class Counts:
    rollouts = 0
    ticks = 0
    tool_calls = 0
    env_s = 0.0  # time inside the environment: reset, tool calls, get_reward (the opponents' turns)
    episodes: ClassVar[list[Episode]] = []


def counted(base: type) -> type:
    """The environment class with counters and timers (TRL takes the class as the factory)."""

    def reset(self: Any, **row: Any) -> str:
        t0 = time.perf_counter()
        try:
            return base.reset(self, **row)
        finally:
            Counts.env_s += time.perf_counter() - t0

    def _play(self: Any, move: Any) -> str:
        Counts.tool_calls += 1
        t0 = time.perf_counter()
        try:
            return base._play(self, move)
        finally:
            Counts.env_s += time.perf_counter() - t0

    def get_reward(self: Any) -> float | None:
        t0 = time.perf_counter()
        reward = base.get_reward(self)
        Counts.env_s += time.perf_counter() - t0
        Counts.episodes.append(self.session.episode)
        Counts.rollouts += 1
        Counts.ticks += self.session.env.engine.tick_no
        return reward

    return type(base.__name__, (base,), {"reset": reset, "_play": _play, "get_reward": get_reward})


def bench_grpo(args: argparse.Namespace, out: Path) -> dict[str, float]:
    import datasets
    import torch
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(2)
    factory = counted(environment(args.game, opponents=args.opponents))
    rows = dataset(args.game, args.steps * args.batch // args.generations, seed=args.seed)
    model, tok = tool_calling_model([(factory(), rows[0])], REPLIES.get(args.game, REPLIES["ultimatum"]))
    config = GRPOConfig(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch,
        num_generations=args.generations, max_completion_length=48, max_tool_calling_iterations=4,
        logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", shuffle_dataset=False,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, processing_class=tok, args=config, train_dataset=datasets.Dataset.from_list(list(rows)),
        environment_factory=factory,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.train()
    dt = time.perf_counter() - t0
    return {
        "seconds": dt,
        "rollouts": Counts.rollouts,
        "ticks": Counts.ticks,
        "tool_calls": Counts.tool_calls,
        "env_s": Counts.env_s,
    }


class ReplayAgent:
    """Replies with one seat's recorded moves, in order (the learner's, taken from a GRPO rollout)."""

    def __init__(self, raws: list[str]) -> None:
        self.name = "replay"
        self.raws = list(raws)
        self.last: TurnReport | None = None

    async def act(self, observation: Any, info: dict[str, Any]) -> str:
        raw = self.raws.pop(0) if self.raws else ""
        self.last = TurnReport(raw=raw)
        return raw


def model_calls(episodes: list[Episode]) -> dict[str, float]:
    """The opponents' model calls of `episodes`, summed (the learner's turns are not model calls)."""
    calls: list[CallInfo] = []
    for ep in episodes:
        agent = {p.player: p.agent for p in ep.players}
        calls += [t.call for t in ep.turns if agent[t.player] != "learner" and t.call.latency_s > 0]
    return {
        "calls": len(calls),
        "decoded": sum(c.completion_tokens for c in calls),
        "prompt": sum(c.prompt_tokens for c in calls),
        "cached": sum(c.cached_tokens or 0 for c in calls),
        "wait_s": sum(c.latency_s for c in calls),
    }


def bench_replay(args: argparse.Namespace, episodes: list[Episode]) -> dict[str, Any]:
    """The GRPO rollouts' very episodes again, by the runner alone: the learner's seat replays its
    recorded moves, the opponents are rebuilt with the same seeds (an LLM samples the same calls)."""
    spec = load_game(args.game)

    replayed: list[Episode] = []

    async def run() -> tuple[int, int]:
        ticks = same = 0
        for ep in episodes:
            names = [p.agent for p in ep.players]
            learner = next(p.player for p in ep.players if p.agent == "learner")
            factory = AgentFactory(sorted({n for n in names if n != "learner"}), spec)
            env = GameParallelEnv(spec, n_players=ep.n_players)
            env.restart(ep.seed)
            build = ["random" if n == "learner" else n for n in names]
            agents = build_agents(factory, env, build, ep.seed)
            agents[learner] = ReplayAgent([t.raw for t in ep.turns if t.player == learner])
            again = new_episode(f"replay-{ep.episode_id}", "", spec, env, names, agents, ep.seed)
            again = await continue_episode(again, env, agents)
            replayed.append(again)
            ticks += env.engine.tick_no
            same += again.payoffs == ep.payoffs and [t.raw for t in again.turns] == [t.raw for t in ep.turns]
            await factory.aclose()
        return ticks, same

    t0 = time.perf_counter()
    ticks, same = asyncio.run(run())
    return {
        "seconds": time.perf_counter() - t0,
        "rollouts": len(episodes),
        "ticks": ticks,
        "identical": same,
        "model": model_calls(replayed),
    }


def bench_session(game: str, episodes: int) -> dict[str, float]:
    """Scripted moves through SeatSession (scripted opponents) vs the same games through env.step."""
    spec = load_game(game)
    session = SeatSession(spec, opponents="scripted")
    t0 = time.perf_counter()
    moves = 0
    for seed in range(episodes):
        turn = session.reset(seed=seed)
        learner = ScriptedAgent(spec, seed * 1000)
        while not turn.done:
            turn = session.move(learner.choose(session.info or {}))
            moves += 1
    session_s = time.perf_counter() - t0
    env = make_parallel(spec)
    t0 = time.perf_counter()
    steps = 0
    for seed in range(episodes):
        _obs, infos = env.reset(seed=seed)
        agents = {p: ScriptedAgent(spec, seed * 1000 + i) for i, p in enumerate(env.possible_agents)}
        while env.agents:
            _obs, _r, _t, _tr, infos = env.step(
                {p: agents[p].choose(infos[p]) for p in env.agents if infos[p]["is_turn"]}
            )
            steps += 1
    return {"session_s": session_s, "moves": moves, "env_s": time.perf_counter() - t0, "env_steps": steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", default="negotiation")
    ap.add_argument("--opponents", default="local", help="agent for the other seats (local = embedded model)")
    ap.add_argument("--steps", type=int, default=4, help="GRPO steps")
    ap.add_argument("--batch", type=int, default=4, help="per-device batch (rollouts per step)")
    ap.add_argument("--generations", type=int, default=4, help="rollouts per prompt (a GRPO group)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--session-episodes", type=int, default=50)
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    args = ap.parse_args(argv)
    if args.batch % args.generations:
        ap.error("--batch must be a multiple of --generations")

    import tempfile

    if "local" in args.opponents.split(","):
        # The embedded model's start (seconds of loading) is not an environment step of either phase.
        from rsi_env.local_model import ensure_local_endpoint

        ensure_local_endpoint()
    with tempfile.TemporaryDirectory() as tmp:
        grpo = bench_grpo(args, Path(tmp))
    grpo["model"] = model_calls(Counts.episodes)
    play = bench_replay(args, Counts.episodes)
    session = bench_session(args.game, args.session_episodes)

    def rate(d: dict[str, Any], key: str) -> float:
        return d[key] / d["seconds"] if d["seconds"] > 0 else float("nan")

    print(f"game {args.game}, opponents {args.opponents}, {args.steps} GRPO steps x {args.batch} rollouts")
    print(f"{'':7} {'seconds':>8} {'rollouts':>9} {'rollouts/s':>11} {'env steps':>10} {'steps/s':>8}")
    for name, d in (("grpo", grpo), ("replay", play)):
        print(
            f"{name:7} {d['seconds']:8.2f} {d['rollouts']:9d} {rate(d, 'rollouts'):11.3f} "
            f"{d['ticks']:10d} {rate(d, 'ticks'):8.2f}"
        )
    in_env = grpo["ticks"] / grpo["env_s"] if grpo["env_s"] else float("nan")
    print(
        f"grpo: {grpo['env_s']:.1f} s of {grpo['seconds']:.1f} s inside the environment "
        f"({grpo['env_s'] / grpo['seconds']:.0%}), {in_env:.2f} env steps/s there; "
        f"learner tool calls {grpo['tool_calls']}"
    )
    print(
        f"replay: the same {play['rollouts']} episodes by the runner alone ({play['identical']} identical "
        f"move for move); grpo env time / replay time {grpo['env_s'] / play['seconds']:.2f}, "
        f"grpo/replay rollouts/s {rate(grpo, 'rollouts') / rate(play, 'rollouts'):.2f}"
    )
    for name, d in (("grpo", grpo), ("replay", play)):
        m = d["model"]
        if m["calls"]:
            print(
                f"{name} opponent model calls: {m['calls']}, {m['wait_s'] / m['calls']:.2f} s per call, "
                f"{m['decoded'] / m['calls']:.0f} decoded and {m['prompt'] / m['calls']:.0f} prompt tokens "
                f"per call, {m['cached'] / max(m['prompt'], 1):.0%} of them from the prefix cache"
            )
    g, r = grpo["model"], play["model"]
    if g["calls"] and r["calls"]:
        print(
            f"s per opponent call grpo/replay {g['wait_s'] / g['calls'] / (r['wait_s'] / r['calls']):.2f}; "
            f"environment time outside opponent calls: grpo {grpo['env_s'] - g['wait_s']:.1f} s, "
            f"replay {play['seconds'] - r['wait_s']:.1f} s"
        )
    s = session
    print(
        f"session: {s['moves'] / s['session_s']:.0f} learner moves/s (scripted opponents) vs "
        f"env.step {s['env_steps'] / s['env_s']:.0f} steps/s; time per episode session/env.step "
        f"{s['session_s'] / s['env_s']:.2f}x"
    )
    if args.json:
        print(json.dumps({"grpo": grpo, "play": play, "session": session}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
