"""rsi_env games as a verifiers 0.4 (`verifiers.v1`) taskset and self-play environment.

verifiers' contract (`verifiers/v1/taskset.py`, `task.py`, `env.py`, `agent.py`, and the shape of
its own `kuhn_poker` environment): a `Taskset[Task, TasksetConfig]` whose `load()` yields typed
tasks (a generator when `INFINITE`); an `Env[EnvConfig]` whose config declares each role as an
`AgentConfig` field, whose `run(task, agents)` drives the agents turn by turn
(`agents.<role>.interaction(task)`, `interaction.turn(message) -> Segment`), and whose
`finalize(task, episode)` records rewards and metrics on each agent's trace. An installable
environment is a package that exports one `Taskset` and one `Env` subclass in `__all__`: the
taskset id `rsi-games` imports `rsi_games` (`environments/rsi_games/` in this repository).

    vf-eval rsi-games --env.taskset.games '["negotiation", "trust"]' -m MODEL ...

One task is one episode of a game from a seed (the taskset is seeded and infinite). Every seat is
played by the `player` role (self-play: the run's own model, each seat its own interaction and
trace); the rsi_env runner plays the episode, so the rules, conduct checks and payoffs are the
engine's. `finalize` records on each seat's trace: the reward `normalised_payoff` (weight 1) and
`conduct_flags` (weight -penalty), whose weighted sum is the preference objective `prefs generate`
ranks by (or `payoff` alone with `reward = "payoff"`), the raw payoff as a metric, and with
`judges` set, each LLM referee dimension (normalised to 0..1) as `referee_<dimension>`
(weight `referee_weight`). An episode whose model calls failed is an error, never a zero score.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from itertools import count
from typing import Any, Literal

import verifiers.v1 as vf
from pydantic import Field

from ..agents.base import TurnReport
from ..agents.factory import ClientPool
from ..agents.llm_agent import INSTRUCTIONS
from ..agents.profiles import EndpointOverride
from ..catalog import load_game
from ..env import GameParallelEnv
from ..referees.panel import parse_judges, score_episodes
from ..referees.rubric import load_rubric
from ..runner import continue_episode, new_episode
from ..spec import GameSpec
from ..trajectory import Episode
from .session import DEFAULT_PENALTY, SeatTurn, seat_prompt, seat_reward

INFO_KEY = "rsi_env"


class GameTaskData(vf.TaskData):
    """One episode to play: the game, the reset seed, the seats."""

    game: str
    seed: int
    n_players: int | None = None


class GameTask(vf.Task[GameTaskData]):
    pass


class SeatTaskData(vf.TaskData):
    """One seat's part of an episode (what its interaction's trace records)."""

    game: str
    seed: int
    player: str
    role: str


class GamesConfig(vf.TasksetConfig):
    games: list[str] = Field(default_factory=lambda: ["negotiation"])
    """Game ids (or spec files), taken in turn."""
    seed: int = 0
    """The first reset seed; task i plays game i mod len(games) with seed `seed + i // len(games)`."""
    n_players: int | None = None
    """Seats for games with a range (default: each spec's default)."""


class GamesTaskset(vf.Taskset[GameTask, GamesConfig]):
    """Seeded, infinite: every game of `games` in turn, each seed once."""

    INFINITE = True

    def load(self) -> Iterator[GameTask]:
        games = [load_game(g).id for g in self.config.games]  # a bad id fails before any episode
        if not games:
            raise ValueError("games: name at least one game")
        for i in count():
            game, seed = games[i % len(games)], self.config.seed + i // len(games)
            yield GameTask(
                GameTaskData(
                    idx=i,
                    id=f"{game}-s{seed}",
                    name=f"{game} seed {seed}",
                    prompt=None,  # each seat converses through its own interaction
                    game=game,
                    seed=seed,
                    n_players=self.config.n_players,
                )
            )


class GamesEnvConfig(vf.EnvConfig):
    # A seat is a plain chat (the tool-less `null` harness runs no code), so a local process serves it;
    # a move is one JSON object, so a reply is capped (a small model may otherwise ramble to its context).
    player: vf.AgentConfig = vf.AgentConfig(
        harness={"id": "null"}, runtime={"type": "subprocess"}, sampling={"max_tokens": 256}
    )
    """Plays every seat (shared-policy self-play; the run's model unless pinned)."""
    reward: Literal["payoff", "normalised", "objective"] = "objective"
    penalty: float = Field(DEFAULT_PENALTY, ge=0)
    """Objective penalty per conduct flag (as `prefs generate --penalty`)."""
    judges: str = ""
    """LLM referees, rsi_env's `--judges` syntax (`local@0.2,openai`); empty for none."""
    judge_base_url: str | None = None
    """An OpenAI-compatible endpoint for the referees' profiles (rsi_env's `--base-url`)."""
    judge_model: str | None = None
    """The model there (rsi_env's `--model`)."""
    rubric: str = "ethics"
    """The rubric the referees score each seat on."""
    referee_weight: float = 0.0
    """Weight of each referee dimension in the reward (0: recorded, not counted)."""


class InteractionSeat:
    """An rsi_env agent whose moves come from a verifiers interaction: each turn sends the seat's
    observation as the user message and plays the model's reply."""

    def __init__(self, spec: GameSpec, player: str, interaction: Any) -> None:
        self.name = "verifiers"
        self.spec = spec
        self.player = player
        self.interaction = interaction
        self.last: TurnReport | None = None
        self.last_tick: int | None = None
        self.over = False  # the exchange ended (a limit): the seat's later turns are empty replies

    async def act(self, observation: Any, info: dict[str, Any]) -> str:
        if info.get("action_schema") is None:
            self.last = TurnReport(raw="")
            return ""
        prompt = seat_prompt(self.spec, info, self.last_tick)
        self.last_tick = info.get("tick")
        if self.over:
            self.last = TurnReport(raw="", prompt=prompt)
            return ""
        segment = await self.interaction.turn(prompt)
        if segment.terminated:
            self.over = True
            trace = self.interaction.trace
            if trace.errors:
                # A failed model call ends the episode with its status: no score, never zero.
                error = trace.errors[-1]
                self.last = TurnReport(
                    raw="", prompt=prompt, status="client_error", error=f"{error.type}: {error.message}"[:300]
                )
                return ""
            self.last = TurnReport(raw="", prompt=prompt)
            return ""
        self.last = TurnReport(raw=segment.last_reply, prompt=prompt)
        return self.last.raw


class GamesEnv(vf.Env[GamesEnvConfig]):
    """Self-play: one interaction per seat, the rsi_env runner between them."""

    def __init__(self, config: GamesEnvConfig) -> None:
        super().__init__(config)
        self._pool = ClientPool()
        override = EndpointOverride(base_url=config.judge_base_url, model=config.judge_model)
        self._judges = parse_judges(config.judges, self._pool, override) if config.judges else []
        self._rubric = load_rubric(config.rubric) if self._judges else None

    async def stop(self) -> None:
        await self._pool.aclose()

    async def run(self, task: vf.Task, agents: vf.Agents) -> None:
        data = task.data
        spec = load_game(data.game)
        env = GameParallelEnv(spec, n_players=data.n_players)
        env.restart(data.seed)
        seats: dict[str, InteractionSeat] = {}
        async with contextlib.AsyncExitStack() as stack:
            for p in env.possible_agents:
                seat_task = vf.Task(
                    SeatTaskData(
                        idx=data.idx,
                        prompt=None,
                        system_prompt=INSTRUCTIONS.format(game=spec.name),  # every seat alike (prefix reuse)
                        game=spec.id,
                        seed=data.seed,
                        player=p,
                        role=env.engine.role[p],
                    )
                )
                interaction = await stack.enter_async_context(agents.player.interaction(seat_task))
                seats[p] = InteractionSeat(spec, p, interaction)
            names = ["verifiers:player"] * len(seats)
            ep = new_episode(
                f"{spec.id}-s{data.seed}-{task.key[:8]}", "", spec, env, names, dict(seats), data.seed
            )
            ep = await continue_episode(ep, env, dict(seats), turn_retries=0)
            if self._judges and ep.status != "aborted":
                await score_episodes([ep], spec, self._judges, self._rubric)
            for p, seat in seats.items():
                seat.interaction.trace.info[INFO_KEY] = outcome(ep, p)

    async def finalize(self, task: vf.Task, episode: vf.Episode) -> None:
        for trace in episode.traces:
            info = trace.info.get(INFO_KEY)
            if info is None:
                raise ValueError(f"trace {trace.id} has no rsi_env outcome")
            record_rewards(trace, info, self.config)


def outcome(ep: Episode, player: str) -> dict[str, Any]:
    """What `finalize` needs of a seat: its payoff, the best achievable, conduct flags, referees."""
    from ..referees.procedural import all_flags

    referees: dict[str, list[float]] = {}
    failed = 0
    for v in ep.verdicts:
        if v.kind != "llm":
            continue
        if v.status != "ok":
            failed += 1
            continue
        for dim, score in v.scores.get(player, {}).items():
            if score.score is not None:
                referees.setdefault(dim, []).append(float(score.score))
    return {
        "episode_id": ep.episode_id,
        "game": ep.game,
        "seed": ep.seed,
        "player": player,
        "role": next(p.role for p in ep.players if p.player == player),
        "status": ep.status,
        "abort_reason": ep.abort_reason,
        "end_reason": ep.end_reason,
        "payoff": (ep.payoffs or {}).get(player),
        "best": (ep.best or {}).get(player),
        "payoffs": ep.payoffs,
        "flags": [f.model_dump() for f in all_flags(ep) if f.player == player],
        "invalid": ep.invalid_counts.get(player, 0),
        "referees": referees,
        "referee_failures": failed,
    }


def record_rewards(trace: Any, info: dict[str, Any], config: GamesEnvConfig) -> None:
    """The seat's rewards and metrics on its trace (see the module docstring)."""
    if info["status"] == "aborted" or info["payoff"] is None or not math.isfinite(info["payoff"]):
        # Validate strictly, never record a guess: the episode fails with the reason.
        raise RuntimeError(f"rsi_env episode {info['episode_id']} has no score: {info['abort_reason']}")
    turn = SeatTurn(
        text="",
        done=True,
        status=info["status"],
        game=info["game"],
        player=info["player"],
        role=info["role"],
        payoff=info["payoff"],
        best=info["best"],
        flags=info["flags"],
    )
    flags = len(info["flags"])
    if config.reward == "payoff":
        trace.record_reward("payoff", info["payoff"])
    else:
        normalised = seat_reward(turn, "normalised")
        assert normalised is not None
        trace.record_reward("normalised_payoff", normalised)
        if config.reward == "objective":
            trace.record_reward("conduct_flags", float(flags), -config.penalty)
        trace.record_metric("payoff", info["payoff"])
    trace.record_metric("conduct_flags", float(flags))
    trace.record_metric("invalid_actions", float(info["invalid"]))
    rubric = load_rubric(config.rubric) if info["referees"] else None
    for dim, scores in sorted(info["referees"].items()):
        assert rubric is not None
        mean = sum(scores) / len(scores)
        trace.record_reward(f"referee_{dim}", rubric.dimension(dim).normalise(mean), config.referee_weight)
    if info["referee_failures"]:
        trace.record_metric("referee_failures", float(info["referee_failures"]))


__all__ = ["GamesEnv", "GamesTaskset"]
