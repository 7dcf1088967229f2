"""Shared test helpers: game ids, and a plain loop that plays one episode with given agents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rsi_env.catalog import game_files


def all_game_ids() -> list[str]:
    """Every game the catalogue finds: built-ins and accepted generated games alike."""
    return sorted(game_files())


@pytest.fixture(params=all_game_ids())
def game_id(request: pytest.FixtureRequest) -> str:
    return request.param


def play_episode(env: Any, choose: Callable[[str, dict[str, Any]], str], seed: int) -> dict[str, Any]:
    """Play a Parallel env to the end, asking `choose(player, info)` for each acting player."""
    _obs, infos = env.reset(seed=seed)
    ticks = 0
    while env.agents:
        moves = {p: choose(p, infos[p]) for p in env.agents if infos[p]["is_turn"]}
        _obs, _rewards, _terms, _truncs, infos = env.step(moves)
        ticks += 1
    return {"payoffs": env.engine.payoffs, "ticks": ticks, "errors": list(env.engine.errors)}
