"""A `for_each` whose items cannot see each other's writes runs in one evaluation (`compiled.Batch`):
it must give what running its items one by one gives (writes, announcements, errors, budget units),
and must not be used where an item reads what an earlier one wrote."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

import rsi_env
from rsi_env import engine as engine_module
from rsi_env.agents.baseline import RandomAgent
from rsi_env.engine import GameEngine
from rsi_env.expr_budget import Limits
from rsi_env.spec import parse_spec

HEAD = """
id: t
name: T
rules: r
ethics: {fair_play: [x], violations: [y]}
players: {min: 2, max: 2}
actions:
  wait: {}
phases:
  - name: main
    actions: [wait]
end: {when: 'false', turn_limit: 2}
payoffs: {value: '0'}
"""


def engine_of(text: str, limits: Limits | None = None) -> GameEngine:
    """An engine of the spec, its setup run (again under `limits`, when given)."""
    eng = GameEngine(parse_spec(yaml.safe_load(HEAD + text), "t"))
    if limits is not None:
        eng.budget.limits = limits
        eng.reset(0)
    return eng


def one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `for_each` item by item, as before batches."""
    monkeypatch.setattr(engine_module, "BATCH_MAX", 1)


def batches_run(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """A spy on `_run_batch` (a test double around the real method): what each call returned."""
    seen: list[bool] = []
    real = GameEngine._run_batch

    def spy(self: GameEngine, *args: Any) -> bool:
        seen.append(real(self, *args))
        return seen[-1]

    monkeypatch.setattr(GameEngine, "_run_batch", spy)
    return seen


def both_ways(
    monkeypatch: pytest.MonkeyPatch, spec: str, limits: Limits | None = None
) -> tuple[GameEngine, GameEngine, list[bool]]:
    """An engine of `spec` with its `for_each` run item by item, one with batches, and what each of
    the latter's batches returned."""
    with monkeypatch.context() as m:
        one_by_one(m)
        before = engine_of(spec, limits)
    seen = batches_run(monkeypatch)
    return before, engine_of(spec, limits), seen


def play(game: str, seed: int) -> dict[str, Any]:
    """A random-play episode of the AEC env: its events, final state, payoffs, and the budget units
    spent at every step."""
    env = rsi_env.make(game)
    env.reset(seed=seed)
    eng = env.unwrapped.engine
    agents: dict[str, RandomAgent] = {}
    units = []
    for agent in env.agent_iter():
        _obs, _r, term, trunc, info = env.last()
        if agent not in agents:
            agents[agent] = RandomAgent(seed + len(agents))
        act = None if term or trunc else agents[agent].choose(info)
        env.step(act)
        units.append(eng.budget.tick_used)
    return {
        "events": [e.model_dump() for e in eng.events],
        "state": json.loads(json.dumps(eng.state)),
        "payoffs": eng.payoffs,
        "errors": list(eng.errors),
        "units": units,
    }


@pytest.mark.parametrize("game", ["diplomacy", "codenames", "coalition"])
def test_batched_effects_play_as_item_by_item(game: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        one_by_one(m)
        before = [play(game, seed) for seed in range(3)]
    seen = batches_run(monkeypatch)
    after = [play(game, seed) for seed in range(3)]
    assert seen and all(seen), "the built-in game's batches ran"
    for b, a in zip(before, after, strict=True):
        assert a["errors"] == b["errors"] == []
        assert a["events"] == b["events"]
        assert a["state"] == b["state"]
        assert a["payoffs"] == b["payoffs"]
        assert a["units"] == b["units"]  # the budget charged the same units, step by step


def test_an_item_that_reads_what_an_earlier_one_wrote_runs_item_by_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = batches_run(monkeypatch)
    eng = engine_of("""
state:
  seen: {type: map}
  copy: {type: map}
setup:
  - for_each: '["a", "b", "c"]'
    set: 'state.seen[x]'
    value: 'size(state.seen)'
  - for_each: '["a", "b", "c"]'
    set: 'state.copy[x]'
    value: 'size(state.seen) + size(x)'
""")
    effects = eng.game.setup
    assert effects[0].batch is None  # it reads `state.seen`, which it writes
    assert effects[1].batch is not None
    assert eng.state["seen"] == {"a": 0, "b": 1, "c": 2}
    assert eng.state["copy"] == {"a": 4, "b": 4, "c": 4}
    assert seen == [True]


def test_a_failing_item_fails_where_it_would_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = """
state:
  q: {type: map}
setup:
  - for_each: '[1, 0, 2]'
    set: 'state.q[string(x)]'
    value: '10 / x'
  - for_each: '[1, 2]'
    announce: '"item " + string(x)'
"""
    before, after, seen = both_ways(monkeypatch, spec)
    assert seen == [False, True]  # the first batch failed, and ran item by item
    assert after.state["q"] == before.state["q"] == {"1": 10, "2": 5}
    assert after.errors == before.errors
    assert len(after.errors) == 1 and "setup[0]" in after.errors[0] and "10 / x" in after.errors[0]
    assert [e.text for e in after.events] == [e.text for e in before.events]
    assert [e.text for e in after.events if e.text.startswith("item")] == ["item 1", "item 2"]
    assert after.budget.tick_used == before.budget.tick_used


def test_a_batch_over_one_evaluation_s_limit_runs_item_by_item(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each item's value walks 30 items (~100 units); the ten together would walk 300 in one evaluation.
    spec = """
state:
  n: {type: map}
setup:
  - for_each: 'lists.range(10)'
    set: 'state.n[string(x)]'
    value: 'size(lists.range(30).filter(i, i > x))'
"""
    before, after, seen = both_ways(monkeypatch, spec, Limits(eval_units=400))
    assert seen == [True, False]  # setup at construction, then again under the tighter limit
    assert after.game_error is None and before.game_error is None
    assert after.state["n"] == before.state["n"] == {str(i): 29 - i for i in range(10)}
    assert after.budget.tick_used == before.budget.tick_used
