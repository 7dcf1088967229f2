"""`python -m rsi_env.serve`: one seat of a game as an OpenEnv server (HTTP + WebSocket).

    python -m rsi_env.serve --game negotiation --seat 0 --opponents scripted --port 8000

Clients play the seat over `/ws` (`rsi_env.integrations.openenv.GameClient`, or any OpenEnv
`EnvClient`); the other seats are played inside by `--opponents` (agent names cycled: `scripted`,
`random` or LLM profiles such as `local`). `/schema` gives the action, observation and state JSON
Schemas, `/health` the server's health. For `uvicorn rsi_env.serve:app` (OpenEnv's
`openenv.yaml`, the Dockerfile) the same options come from `RSI_ENV_GAME`, `RSI_ENV_SEAT`,
`RSI_ENV_OPPONENTS`, `RSI_ENV_REWARD`, `RSI_ENV_N_PLAYERS`, `RSI_ENV_MAX_SESSIONS` and `RSI_ENV_RUNS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

REWARDS = ("payoff", "normalised", "objective")


def _seat(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog or "python -m rsi_env.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", required=True, help="game id or spec file")
    ap.add_argument("--seat", type=_seat, default=0, help="the seat clients play: index or player id")
    ap.add_argument("--opponents", default="scripted", help="agents for the other seats, comma-separated")
    ap.add_argument("--reward", choices=REWARDS, default="objective", help="the reward at the end")
    ap.add_argument("--n-players", type=int, help="players (within the spec's range)")
    ap.add_argument("--max-sessions", type=int, default=8, help="WebSocket sessions served at once")
    ap.add_argument("--runs", help="a directory of recorded runs clients may start from a decision of")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    return ap


def make_app(
    game: str,
    seat: int | str = 0,
    opponents: str = "scripted",
    reward: str = "objective",
    n_players: int | None = None,
    max_sessions: int = 8,
    runs: str | None = None,
) -> Any:
    from .integrations.openenv import create_app

    names = [a.strip() for a in opponents.split(",") if a.strip()]
    return create_app(
        game,
        seat=seat,
        opponents=names or None,
        reward=reward,  # type: ignore[arg-type]
        n_players=n_players,
        max_sessions=max_sessions,
        runs=runs,
    )


def app_from_environment() -> Any:
    """The app `uvicorn rsi_env.serve:app` serves, configured by `RSI_ENV_*` variables."""
    env = os.environ
    n = env.get("RSI_ENV_N_PLAYERS")
    return make_app(
        env.get("RSI_ENV_GAME", "negotiation"),
        seat=_seat(env.get("RSI_ENV_SEAT", "0")),
        opponents=env.get("RSI_ENV_OPPONENTS", "scripted"),
        reward=env.get("RSI_ENV_REWARD", "objective"),
        n_players=int(n) if n else None,
        max_sessions=int(env.get("RSI_ENV_MAX_SESSIONS", "8")),
        runs=env.get("RSI_ENV_RUNS") or None,
    )


def __getattr__(name: str) -> Any:
    # `uvicorn rsi_env.serve:app`: built on first access, so importing the CLI costs nothing.
    if name == "app":
        app = app_from_environment()
        globals()["app"] = app
        return app
    raise AttributeError(name)


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.max_sessions < 1:
        print("error: --max-sessions must be at least 1", file=sys.stderr)
        return 2
    from .agents.profiles import ProfileError
    from .spec import SpecError

    try:
        import uvicorn

        app = make_app(
            args.game, args.seat, args.opponents, args.reward, args.n_players, args.max_sessions, args.runs
        )
    except ImportError as exc:
        print(f"error: the OpenEnv server needs the `openenv` extra ({exc.name} is missing): "
              "pip install 'rsi_env[openenv]'", file=sys.stderr)  # fmt: skip
        return 2
    except (SpecError, ProfileError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
