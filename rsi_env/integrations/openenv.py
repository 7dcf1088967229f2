"""rsi_env games as an OpenEnv environment (openenv 0.10), served over HTTP and WebSocket.

OpenEnv's contract (`openenv/core/env_server/interfaces.py`, `types.py`, `http_server.py`): an
`Environment[Action, Observation, State]` with `reset(seed, episode_id, **kw)`, `step(action)` and a
`state` property, and async twins the server awaits when overridden; pydantic `Action`,
`Observation` (`done`, `reward`, `metadata`) and `State` (`episode_id`, `step_count`) models with
extra fields forbidden; `create_app(factory, Action, Observation, state_cls=...)` serves `/ws` (one
environment per WebSocket session: multi-step play), `/reset` and `/step` (stateless: a fresh
environment per request, so a game needs `/ws`), `/state`, `/schema`, `/metadata` and `/health`. An
`EnvClient` subclass talks `/ws`.

    python -m rsi_env.serve --game negotiation --seat 0 --opponents scripted --port 8000

    from rsi_env.integrations.openenv import GameAction, GameClient
    with GameClient(base_url="http://127.0.0.1:8000").sync() as env:
        result = env.reset(seed=3)
        while not result.done:
            result = env.step(GameAction(move={"action": "accept"}))   # or GameAction(text=reply)
        print(result.observation.payoffs, result.reward)

The server's seat is played by the client; the other seats by `--opponents` inside the server, as
in `SeatSession`. `GameObservation` carries the text observation, the action JSON Schema, the
structured view, payoffs and conduct flags; the reward is None until the game ends, then the
configured kind (`objective` by default, as `prefs generate` ranks).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from openenv.core import EnvClient
from openenv.core.client_types import StepResult
from openenv.core.env_server.http_server import create_app as openenv_create_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, EnvironmentMetadata, Observation, State
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from .. import __version__
from ..catalog import load_game
from ..spec import GameSpec
from .session import (
    DEFAULT_PENALTY,
    REWARD_KINDS,
    DecisionPoint,
    RewardKind,
    SeatSession,
    SeatTurn,
    seat_reward,
)


class GameAction(Action):
    """One move of the served seat: an object of the observation's action schema, or raw text (a
    model's reply, read as forgivingly as any player's). An invalid move is answered with feedback
    in the next observation, never an error."""

    move: dict[str, Any] | None = Field(None, description='the move, e.g. {"action": "propose", "books": 1}')
    text: str | None = Field(None, max_length=20_000, description="or the move as a model wrote it")

    @model_validator(mode="after")
    def _one(self) -> GameAction:
        if (self.move is None) == (self.text is None):
            # A PydanticCustomError, not a ValueError: OpenEnv puts the errors in a JSON 422 reply,
            # and a ValueError inside the error's context cannot be serialised.
            raise PydanticCustomError("one_move", "give exactly one of `move` (an object) and `text`")
        return self

    def raw(self) -> str:
        return self.text if self.text is not None else json.dumps(self.move, ensure_ascii=False)


class GameObservation(SeatTurn, Observation):
    """What the seat sees (`SeatTurn`: text, action schema, view, payoffs, flags) with OpenEnv's
    `done`, `reward` (None until the end) and `metadata`."""


class GameState(State):
    """The episode as the server sees it (OpenEnv's `episode_id` and `step_count`, plus the game)."""

    game: str = ""
    player: str = ""
    seed: int | None = None
    turn: int = 0
    tick: int = 0
    status: str = "not started"
    payoffs: dict[str, float] | None = None


class GameEnvironment(Environment[GameAction, GameObservation, GameState]):
    """One seat of one game per instance (one per WebSocket session); `environment_class` binds the
    game and options."""

    SUPPORTS_CONCURRENT_SESSIONS = True  # every session has its own SeatSession
    game: ClassVar[str | GameSpec]
    session_options: ClassVar[dict[str, Any]]
    reward_kind: ClassVar[RewardKind]
    penalty: ClassVar[float]
    runs: ClassVar[Path | None] = None  # where decision starts may read recorded runs (None: refused)

    def __init__(self) -> None:
        super().__init__()
        self.session = SeatSession(self.game, **self.session_options)
        self._state = GameState(game=self.session.spec.id)

    # -- OpenEnv API --

    def reset(
        self,
        seed: int | None = None,
        episode_id: str | None = None,
        seat: int | str | None = None,
        start: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> GameObservation:
        return self._begun(self.session.reset(seed, seat=seat, start=self._start(start)), seed, episode_id)

    async def reset_async(
        self,
        seed: int | None = None,
        episode_id: str | None = None,
        seat: int | str | None = None,
        start: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> GameObservation:
        point = self._start(start)
        return self._begun(await self.session.areset(seed, seat=seat, start=point), seed, episode_id)

    def step(self, action: GameAction, timeout_s: float | None = None, **kwargs: Any) -> GameObservation:
        return self._stepped(self.session.move(_action(action).raw()))

    async def step_async(
        self, action: GameAction, timeout_s: float | None = None, **kwargs: Any
    ) -> GameObservation:
        return self._stepped(await self.session.amove(_action(action).raw()))

    @property
    def state(self) -> GameState:
        return self._state

    def get_metadata(self) -> EnvironmentMetadata:
        spec = self.session.spec
        return EnvironmentMetadata(
            name=f"rsi_env/{spec.id}",
            description=f"{spec.name}: {spec.summary}",
            version=__version__,
            readme_content=spec.rules,
        )

    def close(self) -> None:
        if self.session.episode is not None and not self.session.done:
            self.session.close()

    # -- internals --

    def _start(self, start: dict[str, Any] | None) -> DecisionPoint | None:
        """A client's decision start, read only from under the server's `--runs` directory: a client
        must not make the server read files wherever it names."""
        if start is None:
            return None
        if self.runs is None:
            raise ValueError("decision starts are off on this server (start it with --runs DIR)")
        point = DecisionPoint.model_validate(start)
        root = self.runs.resolve()
        run_dir = (root / point.run_dir).resolve()
        if not run_dir.is_relative_to(root):
            raise ValueError(f"run_dir {point.run_dir!r} is outside the server's runs directory")
        return point.model_copy(update={"run_dir": str(run_dir)})

    def _begun(self, turn: SeatTurn, seed: int | None, episode_id: str | None) -> GameObservation:
        ep = self.session.episode
        assert ep is not None
        self._state = GameState(
            episode_id=episode_id or ep.episode_id,
            game=turn.game,
            player=turn.player,
            seed=ep.seed,
        )
        return self._observed(turn)

    def _stepped(self, turn: SeatTurn) -> GameObservation:
        self._state.step_count += 1
        return self._observed(turn)

    def _observed(self, turn: SeatTurn) -> GameObservation:
        s = self._state
        s.turn, s.tick, s.status, s.payoffs = turn.turn, turn.tick, turn.status, turn.payoffs
        reward = seat_reward(turn, self.reward_kind, self.penalty) if turn.done else None
        return GameObservation(**turn.model_dump(), reward=reward, metadata={"reward_kind": self.reward_kind})


def _action(action: Any) -> GameAction:
    return action if isinstance(action, GameAction) else GameAction.model_validate(action)


def environment_class(
    game: str | Path | GameSpec,
    *,
    seat: int | str = 0,
    opponents: str | Sequence[str] | None = None,
    reward: RewardKind = "objective",
    penalty: float = DEFAULT_PENALTY,
    n_players: int | None = None,
    max_cycles: int | None = None,
    runs: str | Path | None = None,
) -> type[GameEnvironment]:
    """The `Environment` class for one game and seat (checked now: game, seat, opponents). `runs`: the
    directory whose recorded runs clients may start from a decision of (`reset(start=...)`)."""
    if reward not in REWARD_KINDS:
        raise ValueError(f"reward must be one of {', '.join(REWARD_KINDS)}, got {reward!r}")
    spec = load_game(game)
    options: dict[str, Any] = {
        "seat": seat,
        "opponents": opponents,
        "n_players": n_players,
        "max_cycles": max_cycles,
    }
    SeatSession(spec, **options)
    name = "".join(p.capitalize() for p in spec.id.split("_")) + "Environment"
    members = {
        "game": spec,
        "session_options": options,
        "reward_kind": reward,
        "penalty": penalty,
        "runs": None if runs is None else Path(runs),
    }
    return type(name, (GameEnvironment,), {**members, "__module__": __name__})


def create_app(game: str | Path | GameSpec, *, max_sessions: int = 8, **options: Any) -> Any:
    """The FastAPI app serving one game's seat (OpenEnv's `create_app` over `environment_class`)."""
    cls = environment_class(game, **options)
    return openenv_create_app(
        cls,
        GameAction,
        GameObservation,
        env_name=f"rsi_env-{cls.game.id if isinstance(cls.game, GameSpec) else cls.game}",
        max_concurrent_envs=max_sessions,
        state_cls=GameState,
    )


class GameClient(EnvClient[GameAction, GameObservation, GameState]):
    """OpenEnv client of an rsi_env server (`/ws`): `await client.reset(seed=...)`, `.step(GameAction)`,
    or `.sync()` for blocking calls."""

    def _step_payload(self, action: GameAction) -> dict[str, Any]:
        return action.model_dump(exclude_none=True, exclude={"metadata"})

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[GameObservation]:
        obs = dict(payload.get("observation", {}))
        obs.update(done=payload.get("done", False), reward=payload.get("reward"))
        observation = GameObservation.model_validate(obs)
        return StepResult(
            observation=observation,
            reward=observation.reward,
            done=observation.done,
            metadata=payload.get("metadata"),
        )

    def _parse_state(self, payload: dict[str, Any]) -> GameState:
        return GameState.model_validate(payload)


# --- TRL over the server -------------------------------------------------------------------------------


class RemoteSession:
    """`SeatSession`'s interface over an OpenEnv server, for `remote_environment`'s TRL classes."""

    def __init__(self, base_url: str, game: str | Path | GameSpec) -> None:
        self.spec = load_game(game)
        self.client = GameClient(base_url=base_url).sync()
        self.last: SeatTurn | None = None

    @property
    def done(self) -> bool:
        return self.last is not None and self.last.done

    @property
    def episode(self) -> None:
        return None  # the episode record stays on the server

    def reset(self, seed: int | None = None, *, seat: int | str | None = None, start: Any = None) -> SeatTurn:
        kwargs: dict[str, Any] = {"seed": seed}
        if seat is not None:
            kwargs["seat"] = seat
        if start is not None:
            kwargs["start"] = start.model_dump()
        self.last = self.client.reset(**kwargs).observation
        if self.last.game != self.spec.id:
            raise ValueError(f"the server plays {self.last.game}, not {self.spec.id}")
        return self.last

    def move(self, raw: str) -> SeatTurn:
        self.last = self.client.step(GameAction(text=raw)).observation
        return self.last

    def finish(self) -> SeatTurn:
        """Empty replies until the end (what `SeatSession.finish` does server-side)."""
        while not self.done:
            self.move("")
        assert self.last is not None
        return self.last

    def reward(self, kind: RewardKind = "objective", penalty: float = DEFAULT_PENALTY) -> float | None:
        return seat_reward(self.last, kind, penalty) if self.last is not None else None


def remote_environment(base_url: str, game: str | Path | GameSpec, **options: Any) -> type:
    """A TRL `environment_factory` class whose episodes run on an rsi_env OpenEnv server: the same
    tools and rewards as `rsi_env.integrations.trl.environment(game, **options)`; the server's own
    `--seat` and `--opponents` decide who plays the other seats."""
    from .trl import environment

    local = environment(game, **options)

    def __init__(self: Any) -> None:
        self.session = RemoteSession(base_url, game)

    return type(f"Remote{local.__name__}", (local,), {"__init__": __init__, "__module__": __name__})
