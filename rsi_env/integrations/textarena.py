"""rsi_env games in TextArena (0.7): `register_all()`, then `textarena.make("rsi-negotiation-v0")`.

TextArena's contract (`textarena/core.py`, `state.py`, `envs/registration.py`): an `Env` with
`reset(num_players, seed)`, `step(action) -> (done, info)`, `get_observation() -> (player_id,
messages)` and `close() -> (rewards, game_info)`; its state is one of TextArena's `State` classes
(here `FFAMultiPlayerState`: per-player message queues, `current_player_id`, `rewards`,
`game_info`); ids are registered with wrappers (`register_with_versions`: the default,
`-train` and `-raw` variants), and `textarena.make` applies them. One player acts per `step`:

    import textarena as ta
    from rsi_env.integrations.textarena import register_all
    register_all()
    env = ta.make("rsi-negotiation-v0")
    env.reset(num_players=2, seed=0)
    done = False
    while not done:
        player_id, observation = env.get_observation()
        done, info = env.step(action=agents[player_id](observation))
    rewards, game_info = env.close()

The game runs in the rsi_env engine: a player on turn gets its observation as LLM agents see it
(the rules first, then what happened since its previous turn) and answers with the JSON move;
an invalid move is answered with feedback next turn, as in every rsi_env game. In a simultaneous
phase the actors answer one after another and the tick resolves after the last (as PettingZoo's
AEC env does). Rewards are the spec's payoffs.
"""

from __future__ import annotations

from typing import Any

import textarena as ta
from textarena.envs.registration import ENV_REGISTRY, register_with_versions
from textarena.wrappers import ClipCharactersActionWrapper, LLMObservationWrapper

from ..agents.baseline import RandomAgent, ScriptedAgent
from ..catalog import game_files, load_game
from ..env import GameParallelEnv
from ..spec import GameSpec
from .session import seat_prompt


def env_id(game: str) -> str:
    return f"rsi-{game}-v0"


class RsiGameEnv(ta.Env):
    """One rsi_env game as a TextArena environment (players are ids 0..n-1 = seats)."""

    def __init__(self, game: str | GameSpec, max_action_chars: int = 4000) -> None:
        self.spec = load_game(game)
        self.max_action_chars = max_action_chars
        self.game: GameParallelEnv | None = None
        self._players: list[str] = []
        self._queue: list[str] = []  # this tick's actors still to answer
        self._moves: dict[str, str] = {}
        self._last_tick: dict[str, int | None] = {}

    # -- TextArena API --

    def reset(self, num_players: int, seed: int | None = None) -> None:
        p = self.spec.players
        if not p.min <= num_players <= p.max:
            raise ValueError(f"{self.spec.id} takes {p.min} to {p.max} players, not {num_players}")
        self.game = GameParallelEnv(self.spec, n_players=num_players)
        self.game.restart(seed)
        self._players = list(self.game.possible_agents)
        self._last_tick = dict.fromkeys(self._players)
        # No seed here: TextArena's State reseeds the global `random`, the engine has its own.
        self.state = ta.FFAMultiPlayerState(num_players=num_players, max_turns=None)
        e = self.game.engine
        self.state.reset(
            game_state={"game": self.spec.id, "seed": seed},
            role_mapping={i: f"Player {i}" for i in range(num_players)},
            secret_roles={i: e.role[q] for i, q in enumerate(self._players)},
        )
        self._begin_tick()
        if not self.state.done:
            self._turn_to(self._queue[0])

    def step(self, action: str) -> tuple[bool, dict[str, Any]]:
        assert self.game is not None, "call reset() first"
        if self.state.done:
            raise RuntimeError(f"{env_id(self.spec.id)}: the game is over; call close() or reset()")
        pid = self.state.current_player_id
        player = self._players[pid]
        action = str(action)[: self.max_action_chars]
        self.state.add_observation(
            from_id=pid, to_id=pid, message=action, observation_type=ta.ObservationType.PLAYER_ACTION
        )
        self._moves[player] = action
        self._queue.remove(player)
        info: dict[str, Any] = {}
        if not self._queue:  # the tick's last actor answered: it resolves
            e = self.game.engine
            self.game.advance(self._moves)
            results = {p: r for p, r in e.last_results.items() if p in self._moves}
            info["results"] = {p: {"valid": r.valid, "feedback": r.feedback} for p, r in results.items()}
            for p, r in results.items():
                if not r.valid:
                    self.state.game_info[self._players.index(p)]["invalid_move"] = True
            self._moves = {}
            if e.done:
                self._finish()
            else:
                self._begin_tick()
        # TextArena's own bookkeeping (turn counts) for the player who just answered, then the next.
        done, step_info = self.state.step(rotate_player=False)
        if not done:
            self._turn_to(self._queue[0])
        return done, {**step_info, **info}

    def seat_info(self, player_id: int | None = None) -> dict[str, Any]:
        """The rsi_env info (view, action schema, ...) of a player now: for non-LLM agents."""
        assert self.game is not None, "call reset() first"
        pid = self.state.current_player_id if player_id is None else player_id
        return self.game.agent_info(self._players[pid])

    # -- internals --

    def _begin_tick(self) -> None:
        assert self.game is not None
        e = self.game.engine
        while True:
            self._queue = [p for p in self._players if p in e.current_actors() and p in self.game.agents]
            if self._queue or e.done or not self.game.agents:
                break
            self.game.advance({})  # a tick nobody acts in (the engine's tick cap bounds this)
        if not self._queue:
            self._finish()

    def _turn_to(self, player: str) -> None:
        """Make `player` the current player and queue its observation (once per tick)."""
        self.state.manually_set_current_player_id(self._players.index(player), force=True)
        assert self.game is not None
        info = self.game.agent_info(player)
        tick = info["tick"]
        if self._last_tick[player] == tick:
            return
        text = seat_prompt(self.spec, info, self._last_tick[player])
        self._last_tick[player] = tick
        self.state.add_observation(
            to_id=self._players.index(player), message=text, observation_type=ta.ObservationType.GAME_BOARD
        )

    def _finish(self) -> None:
        assert self.game is not None
        e = self.game.engine
        payoffs = dict(e.payoffs or {})
        # A result that is not a score (the runner's rule: `GameEngine.failure`) gives no rewards.
        failure = e.failure()
        reason = failure or e.end_reason or ("turn limit" if e.truncated else "game over")
        rewards = {i: (None if failure else payoffs.get(p)) for i, p in enumerate(self._players)}
        self.state.set_game_outcome(rewards, reason)  # type: ignore[arg-type]
        for i, p in enumerate(self._players):
            self.state.game_info[i].update(payoff=payoffs.get(p), invalid_count=e.invalid_total[p])
            self.state.add_observation(
                to_id=i,
                message=f"GAME OVER ({reason}). Payoffs: {payoffs}",
                observation_type=ta.ObservationType.GAME_ADMIN,
            )


class BaselineAgent(ta.Agent):
    """rsi_env's scripted policy (the spec's `policy` rules) or uniform random moves as a TextArena
    agent. It reads the seat's structured view from the env, as the scripted agent always does."""

    def __init__(self, env: Any, player_id: int, kind: str = "scripted", seed: int | None = None) -> None:
        self.env = env
        self.player_id = player_id
        spec = env.spec
        self.agent = ScriptedAgent(spec, seed) if kind == "scripted" else RandomAgent(seed)

    def __call__(self, observation: str) -> str:
        return self.agent.choose(self.env.seat_info(self.player_id))


def register_all() -> list[str]:
    """Register every game the catalogue finds (built-in and accepted generated ones), one id per game
    (`rsi-<game>-v0`, with TextArena's `-train` and `-raw` variants); returns the ids. Idempotent."""
    ids = []
    for game in sorted(game_files()):
        gid = env_id(game)
        if gid not in ENV_REGISTRY:
            register_with_versions(
                id=gid,
                entry_point=RsiGameEnv,
                wrappers={
                    "default": [LLMObservationWrapper],
                    "-train": [LLMObservationWrapper, ClipCharactersActionWrapper],  # 1000 characters
                },
                game=game,
            )
        ids.append(gid)
    return ids
