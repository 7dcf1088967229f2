"""rsi_env: social games and open-ended tasks as PettingZoo environments, turned into preference data."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["make", "make_parallel"]


def make(game: Any, **kw: Any) -> Any:
    """AEC env for a game id, spec path or GameSpec (see `rsi_env.env`)."""
    from .env import make as _make

    return _make(game, **kw)


def make_parallel(game: Any, **kw: Any) -> Any:
    """Parallel env for a game id, spec path or GameSpec (see `rsi_env.env`)."""
    from .env import make_parallel as _make_parallel

    return _make_parallel(game, **kw)
