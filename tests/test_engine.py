"""The game engine (`rsi_env/engine.py`) on its own, without PettingZoo: ticks and turns, invalid
replies and their allowance, simultaneous moves, conduct flags, payoffs, limits, spec errors at run
time, and exact snapshots. Negotiation at seed 0 is worked by hand in tests/cases/negotiation.yaml:
pool {books: 2, hats: 2, balls: 1}, player_0 values {books: 3, hats: 2, balls: 0}, player_0 first."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from rsi_env.catalog import load_game
from rsi_env.engine import GameEngine
from rsi_env.events import ActionEvent, CommittedEvent, ForfeitEvent, InvalidEvent, PassEvent
from rsi_env.spec import GameSpec


def negotiation(**changes: Any) -> GameSpec:
    spec = load_game("negotiation")
    return spec.model_copy(update=changes) if changes else spec


def move(**kw: Any) -> str:
    return json.dumps(kw)


def test_one_actor_per_tick_and_others_are_ignored() -> None:
    e = GameEngine(negotiation())
    e.reset(0)
    assert e.current_actors() == ["player_0"]
    results = e.tick({"player_0": move(action="say", message="hi"), "player_1": move(action="walk_away")})
    assert set(results) == {"player_0"} and results["player_0"].valid
    assert not e.done and e.turn == 1 and e.current_actors() == ["player_1"]
    assert e.state["walked"] is False, "player_1's text was not its turn: ignored"


def test_a_deal_pays_each_side_the_value_of_its_share() -> None:
    e = GameEngine(negotiation())
    e.reset(0)
    e.tick({"player_0": move(action="propose", books=2, hats=1, balls=0)})
    e.tick({"player_1": move(action="accept", message="Deal.")})
    assert e.done and e.end_reason == "end condition" and not e.truncated
    assert e.payoffs == {"player_0": 8.0, "player_1": 3.0}
    assert e.best == {"player_0": 10.0, "player_1": 10.0}
    assert e.outcomes == {"deal": True, "pareto_optimal": True}
    last = e.events[-1]
    assert last.kind == "end" and last.payoffs == e.payoffs


def test_an_invalid_reply_is_feedback_then_the_turn_passes() -> None:
    spec = negotiation()
    e = GameEngine(spec)
    e.reset(0)
    allowance = spec.invalid_actions.allowance
    for i in range(allowance):
        r = e.tick({"player_0": move(action="propose", books=9, hats=0, balls=0)})["player_0"]
        assert not r.valid and "`books` must be at most 2, got 9" in (r.feedback or "")
        assert e.invalid_total["player_0"] == i + 1
    assert e.turn == 1 and e.current_actors() == ["player_1"], "out of attempts: the turn passed"
    kinds = [type(ev) for ev in e.events if ev.player == "player_0"]
    assert kinds == [InvalidEvent] * allowance + [PassEvent]
    assert "Your turn was passed." in (e.feedback["player_0"] or "")


def test_running_out_of_attempts_forfeits_where_the_spec_says_so() -> None:
    spec = negotiation()
    spec = spec.model_copy(
        update={"invalid_actions": spec.invalid_actions.model_copy(update={"then": "forfeit"})}
    )
    e = GameEngine(spec)
    e.reset(0)
    for _ in range(spec.invalid_actions.allowance):
        e.tick({"player_0": "not an action"})
    assert e.forfeited == ["player_0"] and isinstance(e.events[-1], ForfeitEvent)
    assert e.forfeit_payoffs == {"player_0": 0.0}
    assert "player_0" not in e.current_actors()


def test_simultaneous_moves_stay_sealed_until_everyone_moved() -> None:
    e = GameEngine(load_game("prisoners_dilemma"))
    e.reset(1)
    while e.phase != "move":
        (actor,) = e.current_actors()
        e.tick({actor: move(action="say", message="let us cooperate")})
    assert sorted(e.current_actors()) == ["player_0", "player_1"]
    e.tick({"player_0": move(action="defect"), "player_1": "no JSON at all"})
    (sealed,) = [ev for ev in e.events if isinstance(ev, CommittedEvent)]
    assert sealed.player == "player_0" and sealed.visible_to == ["player_0"]
    assert not any(isinstance(ev, ActionEvent) and ev.action == "defect" for ev in e.events), (
        "not yet revealed"
    )
    assert e.current_actors() == ["player_1"], "only the one still to move"
    e.tick({"player_1": move(action="cooperate")})
    moves = {ev.player: ev.action for ev in e.events if isinstance(ev, ActionEvent) and ev.phase == "move"}
    assert moves == {"player_0": "defect", "player_1": "cooperate"}
    assert (e.pstate["player_0"]["score"], e.pstate["player_1"]["score"]) == (5, 0)


def test_a_lie_is_flagged_when_it_is_told_and_the_truth_is_not() -> None:
    e = GameEngine(negotiation())
    e.reset(0)
    e.tick({"player_0": move(action="reveal", books=3, hats=2, balls=0)})  # the truth
    e.tick({"player_1": move(action="reveal", books=1, hats=1, balls=9)})  # not its values
    (flag,) = e.flags
    assert (flag.player, flag.kind, flag.name, flag.turn, flag.action) == (
        "player_1", "lie", "misreported_values", 1, "reveal"
    )  # fmt: skip
    assert flag.args == {"books": 1, "hats": 1, "balls": 9}


def test_payoffs_and_outcomes_read_the_conduct_flags() -> None:
    spec = negotiation()
    payoffs = spec.payoffs.model_copy(update={"value": "-double(size(flags.filter(f, f.player == p)))"})
    e = GameEngine(spec.model_copy(update={"payoffs": payoffs, "outcomes": {"lies": "size(flags)"}}))
    e.reset(0)
    e.tick({"player_0": move(action="reveal", books=0, hats=0, balls=0)})
    e.tick({"player_1": move(action="walk_away")})
    assert e.payoffs == {"player_0": -1.0, "player_1": 0.0}
    assert e.outcomes == {"lies": 1} and e.errors == []


def test_a_failing_payoff_is_nan_and_an_error_never_a_zero() -> None:
    spec = negotiation()
    e = GameEngine(
        spec.model_copy(update={"payoffs": spec.payoffs.model_copy(update={"value": "state.nope + 1"})})
    )
    e.reset(0)
    e.tick({"player_0": move(action="walk_away")})
    assert e.done and all(math.isnan(v) for v in (e.payoffs or {}).values())
    assert any("payoffs.value" in err and "nope" in err for err in e.errors)


def test_turn_and_tick_limits_end_the_game() -> None:
    e = GameEngine(negotiation())
    e.reset(0)
    for i in range(10):
        e.tick({e.current_actors()[0]: move(action="say", message=f"turn {i}")})
    assert e.done and e.end_reason == "turn limit" and not e.truncated
    short = GameEngine(negotiation(), max_ticks=3)
    short.reset(0)
    for _ in range(3):
        short.tick({short.current_actors()[0]: "nonsense"})
    assert short.done and short.truncated and short.end_reason == "tick limit"


def test_the_seed_decides_the_setup() -> None:
    a, b, c = (GameEngine(negotiation()) for _ in range(3))
    a.reset(0)
    b.reset(0)
    c.reset(5)
    assert a.state["pool"] == b.state["pool"] == {"books": 2, "hats": 2, "balls": 1}
    assert a.pstate == b.pstate
    assert (c.state, c.pstate) != (a.state, a.pstate)
    for values in (a.pstate[p]["values"] for p in a.players):
        assert sum(values[k] * a.state["pool"][k] for k in values) == pytest.approx(10)


def test_restore_replays_exactly_what_followed_the_snapshot() -> None:
    e = GameEngine(load_game("werewolf"))
    e.reset(3)
    for _ in range(4):
        e.tick(dict.fromkeys(e.current_actors(), "nonsense"))
    snap = e.snapshot()
    script = [dict.fromkeys(e.current_actors(), "still nonsense")]

    def play_on() -> tuple[Any, ...]:
        for moves in script:
            e.tick(moves)
        while not e.done:
            e.tick(dict.fromkeys(e.current_actors(), "nonsense"))
        return (list(e.events), list(e.flags), e.state, e.pstate, e.payoffs, e.random.rng.bit_generator.state)

    first = json.dumps(play_on(), default=repr)
    e.restore(snap)
    assert json.dumps(play_on(), default=repr) == first
    e.restore(snap)
    assert e.tick_no == snap["tick_no"] and e.events == snap["events"]


# The README's near-JSON forms, each applied by the engine as the intended move (parsing alone is in
# tests/test_actions.py): player_0's proposal lands in `state.offer`.
NEAR_JSON = [
    '```json\n{"action": "propose", "books": 1, "hats": 2, "balls": 0}\n```',
    "{'action': 'propose', 'books': 1, 'hats': 2, 'balls': 0}",
    "{action: propose, books: 1, hats: 2, balls: 0}",
    'I will offer this: {"action": "propose", "books": 1, "hats": 2, "balls": 0} -- fair, no?',
    '{"propose": {"books": 1, "hats": 2, "balls": 0}}',
    "propose books=1 hats=2 balls=0",
]


@pytest.mark.parametrize("reply", NEAR_JSON)
def test_near_json_replies_make_the_intended_move(reply: str) -> None:
    e = GameEngine(negotiation())
    e.reset(0)
    r = e.tick({"player_0": reply})["player_0"]
    assert r.valid, r.feedback
    assert (r.action, r.args) == ("propose", {"books": 1, "hats": 2, "balls": 0})
    assert e.state["offer"] == {"books": 1, "hats": 2, "balls": 0} and e.state["offer_by"] == "player_0"
