"""Spec language v2, one feature at a time, each on a small game written for the test: list
parameters, named expressions, state-dependent legal moves, free talk and group channels,
out-of-turn reactions, iterated resolution, game options, policies (weights, optional arguments,
failures as warnings). The v1 language is covered by the ten games' battery, unchanged."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import yaml

import rsi_env
from rsi_env.agents.baseline import RandomAgent, ScriptedAgent, fits, sample_action
from rsi_env.engine import GameEngine
from rsi_env.spec import GameSpec, SpecError, parse_spec, spec_json_schema
from rsi_env.spec_check import check_spec
from rsi_env.view import action_schema, player_view, render_observation

HEAD = """
id: t
name: T
rules: r
ethics: {fair_play: [x], violations: [y]}
"""


def spec_of(text: str) -> GameSpec:
    return parse_spec(yaml.safe_load(HEAD + text), "t")


def problems_of(text: str, dry_run: bool = True) -> list[str]:
    try:
        check_spec(spec_of(text), "t", dry_run=dry_run)
    except SpecError as exc:
        return exc.problems
    return []


def move(engine: GameEngine, **moves: Any) -> dict[str, Any]:
    """One tick; `player_0={...}` as keyword arguments (dicts sent as JSON)."""
    out = engine.tick({p: json.dumps(m) if isinstance(m, dict) else m for p, m in moves.items()})
    return {p: r for p, r in out.items()}


# --- 1. list parameters -----------------------------------------------------------------------------

TEAM = """
players: {min: 4, max: 4}
state:
  size: {type: int, init: '2'}
  team: {type: list}
actions:
  propose:
    params:
      team:
        type: list
        items: {type: player, candidates: players}
        min_items: state.size
        max_items: state.size
        unique: true
    effects: [{set: state.team, value: args.team}]
phases: [{name: a, actions: [propose]}]
end: {when: 'size(state.team) > 0', turn_limit: 4}
payoffs: {value: 'p in state.team ? 1 : 0'}
policy: [{action: propose, args: {team: '[me, players.filter(q, q != me)[0]]'}}]
"""


def test_a_list_parameter_is_in_the_schema_with_its_bounds() -> None:
    engine = GameEngine(spec_of(TEAM))
    schema = action_schema(engine, "player_0")
    assert schema is not None
    team = schema["properties"]["team"]
    assert team["type"] == "array" and team["minItems"] == 2 and team["maxItems"] == 2
    assert team["uniqueItems"] is True
    assert team["items"]["enum"] == engine.players


@pytest.mark.parametrize(
    ("team", "says"),
    [
        (["player_1", "player_1"], "must not repeat an item"),
        (["player_1"], "must have exactly 2 items, got 1"),
        (["player_1", "nobody"], "item 2 must be one of"),
        ("player_1", "must have exactly 2 items"),
    ],
)
def test_a_list_parameter_is_validated_item_by_item(team: Any, says: str) -> None:
    engine = GameEngine(spec_of(TEAM))
    r = move(engine, player_0={"action": "propose", "team": team})["player_0"]
    assert not r.valid and says in (r.feedback or "")


def test_a_list_may_come_as_text_and_the_example_shown_is_a_legal_move() -> None:
    engine = GameEngine(spec_of(TEAM))
    view = player_view(engine, "player_0")
    example = view["example"]
    assert len(set(example["team"])) == 2  # the schema-only example would repeat player_0
    text = render_observation(engine.spec, view, action_schema(engine, "player_0"))
    assert (
        json.dumps(example) in text
        and "list of 2 (player_0|player_1|player_2|player_3, all different)" in text
    )
    r = move(engine, player_0='propose team="player_2, player_3"')["player_0"]
    assert r.valid and r.args == {"team": ["player_2", "player_3"]}


def test_random_and_scripted_agents_produce_legal_lists() -> None:
    engine = GameEngine(spec_of(TEAM))
    schema = action_schema(engine, "player_0")
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = sample_action(schema, rng)
        assert a is not None and fits(a, schema) and engine.accepts("player_0", a)
    scripted = ScriptedAgent(engine.spec, seed=0)
    raw = scripted.choose({"action_schema": schema, "view": player_view(engine, "player_0")})
    assert json.loads(raw) == {"action": "propose", "team": ["player_0", "player_1"]}


def test_the_example_shown_is_a_legal_move_at_every_turn_of_every_game() -> None:
    """Every built-in game, two random episodes: whenever a player is to move, the example its
    observation shows is a move the game accepts (codenames' clue must be a word of letters that is
    no board word: the placeholder "..." is not one)."""
    from rsi_env.catalog import game_files

    for game in sorted(game_files()):
        shown = 0
        for seed in range(2):
            env = rsi_env.make_parallel(game)
            _obs, infos = env.reset(seed=seed)
            agents = {p: RandomAgent(seed * 7 + i) for i, p in enumerate(env.possible_agents)}
            while env.agents:
                for p in env.engine.current_actors():
                    if action_schema(env.engine, p) is not None:
                        example = player_view(env.engine, p)["example"]
                        assert env.engine.accepts(p, example), (game, env.engine.phase, example)
                        shown += 1
                moves = {p: agents[p].choose(infos[p]) for p in env.agents if infos[p]["is_turn"]}
                _obs, _rewards, _terms, _truncs, infos = env.step(moves)
        assert shown > 0, game


ORDERS = """
players: {min: 2, max: 2}
state:
  log: {type: list}
actions:
  orders:
    params:
      orders:
        type: list
        max_items: '2'
        items:
          type: object
          fields:
            unit: {type: enum, values: [a, b]}
            to: {type: int, min: 0, max: 3}
            note: {type: text, optional: true}
    effects: [{set: state.log, value: args.orders}]
phases: [{name: a, actions: [orders]}]
end: {when: 'size(state.log) > 0', turn_limit: 4}
payoffs: {value: '0'}
policy: [{action: orders, args: {orders: '[{"unit": "a", "to": 1}]'}}]
"""


def test_a_list_of_objects_checks_every_field() -> None:
    engine = GameEngine(spec_of(ORDERS))
    schema = action_schema(engine, "player_0")
    item = schema["properties"]["orders"]["items"]
    assert item["required"] == ["unit", "to"] and item["additionalProperties"] is False
    bad = move(engine, player_0={"action": "orders", "orders": [{"unit": "a", "to": 9}]})["player_0"]
    assert "`orders` item 1 `to` must be at most 3, got 9" in (bad.feedback or "")
    ok = move(
        engine, player_0={"action": "orders", "orders": [{"unit": "b", "to": 2}, {"unit": "a", "to": 0}]}
    )
    assert ok["player_0"].valid and engine.state["log"] == [{"unit": "b", "to": 2}, {"unit": "a", "to": 0}]


# --- 2. named expressions -----------------------------------------------------------------------------

LETS = """
players: {min: 3, max: 3}
let:
  alive: 'players.filter(q, P[q].alive)'
  n_alive: 'size(alive)'
state:
  draws: {type: list}
player_state:
  alive: {type: bool, init: 'true'}
actions:
  kill:
    let:
      r: 'randint(1, 1000000)'
      others: 'alive.filter(q, q != me)'
    params:
      who: {type: player, candidates: others}
    valid_if: [{expr: 'n_alive > 2', message: too few left}]
    effects:
      - set: P[args.who].alive
        value: 'false'
      - set: state.draws
        value: '[r, r]'
phases:
  - name: a
    let:
      first: 'alive[0]'
    first: first
    actions: [kill]
end: {when: 'n_alive < 3', turn_limit: 4}
payoffs: {value: 'P[p].alive ? n_alive : 0'}
policy: [{action: kill, args: {who: 'alive.filter(q, q != me)[0]'}}]
"""


def test_lets_are_readable_below_their_level_and_computed_once_per_evaluation() -> None:
    assert problems_of(LETS) == []
    engine = GameEngine(spec_of(LETS))
    engine.reset(3)
    schema = action_schema(engine, "player_0")
    assert schema["properties"]["who"]["enum"] == ["player_1", "player_2"]
    assert move(engine, player_0={"action": "kill", "who": "player_2"})["player_0"].valid
    a, b = engine.state["draws"]
    assert a == b  # one draw, bound by name, read twice
    assert engine.done and engine.payoffs == {"player_0": 2.0, "player_1": 2.0, "player_2": 0.0}


def test_a_let_is_only_readable_where_its_names_exist() -> None:
    # A phase's let is not visible inside an action (actions are not below a phase).
    bad = LETS.replace("value: '[r, r]'", "value: '[first]'")
    problems = problems_of(bad, dry_run=False)
    assert any(p.startswith("actions.kill.effects[1].value: unknown name(s) ['first']") for p in problems), (
        problems
    )
    bad = LETS.replace("  n_alive: 'size(alive)'", "  n_alive: 'size(alive) + size(args.who)'")
    problems = problems_of(bad, dry_run=False)
    assert any(
        "end.when: reads let `n_alive`, which reads ['args']: not available here" in p for p in problems
    )


def test_let_names_order_and_use_are_checked() -> None:
    text = LETS.replace(
        "  alive: 'players", "  players: '1'\n  unused: '2'\n  later: 'n_alive'\n  alive: 'players"
    )
    problems = problems_of(text, dry_run=False)
    assert "let.players: `players` is a name the game already provides; choose another" in problems
    assert "let.unused: never read (a named expression no expression uses)" in problems
    assert any(p.startswith("let.later: reads ['n_alive'], declared at or after it") for p in problems)


# --- 3. state-dependent legal moves ------------------------------------------------------------------

POKER = """
players: {min: 2, max: 2}
state:
  bet: {type: int}
  done: {type: bool}
player_state:
  put: {type: int}
actions:
  check:
    available_if: 'state.bet == my.put'
  bet:
    available_if: 'state.bet == 0'
    effects: [{set: state.bet, value: '1'}, {set: my.put, value: '1'}]
  call:
    available_if: 'state.bet > my.put'
    effects: [{set: my.put, value: state.bet}, {set: state.done, value: 'true'}]
  fold:
    effects: [{set: state.done, value: 'true'}]
phases:
  - name: a
    actions: [check, bet, call, fold]
    available_if: {fold: 'state.bet > my.put'}
end: {when: state.done, turn_limit: 6}
payoffs: {value: 'P[p].put'}
policy: [{action: check}]
"""


def test_only_available_actions_are_legal_shown_and_accepted() -> None:
    engine = GameEngine(spec_of(POKER))
    assert engine.legal_actions("player_0") == ["check", "bet"]  # fold: the phase's condition
    assert move(engine, player_0={"action": "bet"})["player_0"].valid
    assert engine.legal_actions("player_1") == ["call", "fold"]
    schema = action_schema(engine, "player_1")
    assert [b["properties"]["action"]["const"] for b in schema["anyOf"]] == ["call", "fold"]
    text = render_observation(engine.spec, player_view(engine, "player_1"), schema)
    assert "- call()" in text and "- check()" not in text
    r = move(engine, player_1={"action": "check"})["player_1"]
    assert not r.valid and "`check` is not available now; legal actions: ['call', 'fold']" in (
        r.feedback or ""
    )


# --- 4. free talk and group channels ---------------------------------------------------------------

TALK = """
players: {min: 4, max: 4}
roles:
  - {name: red, team: red, count: '2'}
  - {name: blue, team: blue}
state:
  said: {type: int}
channels:
  groups:
    reds: 'players.filter(q, team[q] == "red")'
    everyone_but_0: 'players.filter(q, q != "player_0")'
actions:
  say:
    message: required
    effects: [{add: state.said, value: '1'}]
  huddle:
    message: required
    visibility: group
    group: args.channel
    params:
      channel: {type: enum, values: [reds, everyone_but_0]}
  whisper:
    message: required
    visibility: recipient
    recipient: to
    params:
      to: {type: list, items: {type: player}, min_items: '1', max_items: '2', unique: true}
  done: {}
phases:
  - name: talk
    mode: free
    actions: [say, huddle, whisper, done]
    pass_action: done
    budget: '5'
  - name: over
    actions: [done]
end: {when: 'phase == "over"', turn_limit: 20}
payoffs: {value: state.said}
policy: [{action: done}]
"""


def test_a_free_phase_lets_everyone_talk_until_a_round_of_passes() -> None:
    engine = GameEngine(spec_of(TALK))
    assert engine.current_actors() == engine.players
    say = {"action": "say", "message": "hi"}
    done = {"action": "done"}
    move(engine, player_0=say, player_1=done, player_2=done, player_3=say)
    assert engine.phase == "talk" and engine.state["said"] == 2 and engine.turn == 1
    move(engine, player_0=done, player_1=done, player_2=done, player_3=done)
    assert engine.phase == "over"


def test_a_free_phase_ends_when_its_budget_is_spent() -> None:
    engine = GameEngine(spec_of(TALK))
    say = {"action": "say", "message": "hi"}
    move(engine, player_0=say, player_1=say, player_2=say, player_3={"action": "done"})
    assert engine.phase == "talk"
    move(engine, player_0=say, player_1=say, player_2={"action": "done"}, player_3={"action": "done"})
    assert engine.phase == "over" and engine.state["said"] == 5


def test_group_channels_and_lists_of_recipients_limit_who_sees_a_message() -> None:
    engine = GameEngine(spec_of(TALK))
    done = {"action": "done"}
    out = move(
        engine,
        player_0={"action": "huddle", "channel": "reds", "message": "red plan"},
        player_1={"action": "whisper", "to": ["player_2", "player_3"], "message": "psst"},
        player_2={"action": "huddle", "channel": "reds", "message": "let me in"},
        player_3=done,
    )
    assert out["player_0"].valid and out["player_1"].valid
    assert not out["player_2"].valid and "not a member of that group" in (out["player_2"].feedback or "")
    seen = {e.message: e.visible_to for e in engine.events if e.kind == "action"}
    assert seen["red plan"] == ["player_0", "player_1"]
    assert seen["psst"] == ["player_1", "player_2", "player_3"]


# --- 5. reactions ---------------------------------------------------------------------------------

CLAIMS = """
players: {min: 3, max: 3}
state:
  gold: {type: map, init: '{"player_0": 0, "player_1": 0, "player_2": 0}'}
  events: {type: list}
player_state:
  duke: {type: bool, init: 'p == "player_0"', visibility: private}
actions:
  tax:
    description: claim the duke and take 3
    effects: [{set: 'state.gold[me]', value: 'state.gold[me] + 3'}]
    reactions:
      actions: [challenge, block, allow]
      pass: allow
  block:
    description: claim the duke to block
    effects:
      - cancel: 'true'
      - set: state.events
        value: 'state.events + ["blocked by " + me]'
    reactions:
      by: 'players.filter(q, q != me)'
      actions: [challenge, allow]
      pass: allow
  challenge:
    effects:
      - cancel: '!P[pending.player].duke'
      - set: state.events
        value: >-
          state.events + [me + " challenges " + pending.player + "'s " + pending.action]
  allow: {}
  wait: {}
phases: [{name: a, actions: [tax, wait]}]
end: {when: 'turn >= 2', turn_limit: 4}
payoffs: {value: 'state.gold[p]'}
policy: [{action: allow}, {action: tax}]
"""


def test_a_move_waits_for_reactions_and_stands_when_nobody_reacts() -> None:
    engine = GameEngine(spec_of(CLAIMS))
    move(engine, player_0={"action": "tax"})
    assert engine.current_actors() == ["player_1", "player_2"] and engine.turn == 0
    assert engine.legal_actions("player_1") == ["challenge", "block", "allow"]
    move(engine, player_1={"action": "allow"}, player_2={"action": "allow"})
    assert engine.state["gold"]["player_0"] == 3 and engine.turn == 1
    assert engine.current_actors() == ["player_1"]


def test_reactions_resolve_in_order_and_a_successful_challenge_cancels() -> None:
    engine = GameEngine(spec_of(CLAIMS))
    move(engine, player_0={"action": "wait"})
    move(engine, player_1={"action": "tax"})  # player_1 is no duke
    # Both challenge: only the first in seat order after the mover (player_2) takes effect.
    move(engine, player_0={"action": "challenge"}, player_2={"action": "challenge"})
    assert engine.state["events"] == ["player_2 challenges player_1's tax"]
    assert engine.state["gold"]["player_1"] == 0 and engine.done


def test_a_declared_order_decides_which_reaction_counts_and_all_resolves_every_one() -> None:
    """`order` (CEL, reading the mover `me`) replaces the seats-after-the-mover default; with
    `resolve: all` every reaction runs, in that order."""
    tax_window = "      actions: [challenge, block, allow]\n      pass: allow\n"
    assert tax_window in CLAIMS
    order = "      order: 'players.filter(q, q != me)'\n"
    ordered = CLAIMS.replace(tax_window, tax_window + order)
    engine = GameEngine(spec_of(ordered))
    move(engine, player_0={"action": "wait"})
    move(engine, player_1={"action": "tax"})
    # The default order would take player_2 first (as in the test above); the declared one, seat order.
    move(engine, player_0={"action": "challenge"}, player_2={"action": "challenge"})
    assert engine.state["events"] == ["player_0 challenges player_1's tax"]
    every = ordered.replace(order, order + "      resolve: all\n")
    engine = GameEngine(spec_of(every))
    move(engine, player_0={"action": "wait"})
    move(engine, player_1={"action": "tax"})
    move(engine, player_2={"action": "challenge"}, player_0={"action": "challenge"})
    assert engine.state["events"] == [
        "player_0 challenges player_1's tax",
        "player_2 challenges player_1's tax",
    ]
    assert engine.state["gold"]["player_1"] == 0 and engine.errors == []


def test_a_reaction_can_be_reacted_to() -> None:
    engine = GameEngine(spec_of(CLAIMS))
    move(engine, player_0={"action": "tax"})
    move(engine, player_1={"action": "block"}, player_2={"action": "allow"})
    # player_1's block is itself pending: player_0 and player_2 may challenge it.
    assert sorted(engine.current_actors()) == ["player_0", "player_2"]
    move(engine, player_0={"action": "challenge"}, player_2={"action": "allow"})
    # player_1 is no duke: the block is cancelled, so the tax stands.
    assert engine.state["events"] == ["player_0 challenges player_1's block"]
    assert engine.state["gold"]["player_0"] == 3 and engine.turn == 1


def test_reactions_survive_snapshot_and_restore() -> None:
    engine = GameEngine(spec_of(CLAIMS))
    move(engine, player_0={"action": "tax"})
    snap = engine.snapshot()
    move(engine, player_1={"action": "block"}, player_2={"action": "allow"})
    engine.restore(snap)
    assert engine.current_actors() == ["player_1", "player_2"]
    move(engine, player_1={"action": "allow"}, player_2={"action": "allow"})
    assert engine.state["gold"]["player_0"] == 3


# --- 6. iterated resolution ----------------------------------------------------------------------------

LOOP = """
players: {min: 2, max: 2}
state:
  x: {type: int, init: '1'}
  passes: {type: int}
actions:
  go:
    params: {to: {type: int, min: 1, max: 200}}
    effects:
      - repeat:
          max: 10
          until: 'state.x >= args.to'
          effects:
            - {set: state.x, value: 'state.x * 2'}
            - {set: state.passes, value: 'iteration + 1'}
phases: [{name: a, actions: [go]}]
end: {when: 'turn >= 1', turn_limit: 2}
payoffs: {value: state.x}
policy: [{action: go, args: {to: '5'}}]
"""


def test_repeat_runs_until_its_condition_and_a_runaway_is_an_error() -> None:
    engine = GameEngine(spec_of(LOOP))
    assert move(engine, player_0={"action": "go", "to": 100})["player_0"].valid
    assert engine.state["x"] == 128 and engine.state["passes"] == 7 and engine.errors == []
    engine = GameEngine(spec_of(LOOP.replace("max: 10", "max: 3")))
    move(engine, player_0={"action": "go", "to": 100})
    assert engine.state["x"] == 8
    assert engine.errors == [
        "tick 0: actions.go.effects[0].repeat: `until` did not hold after 3 passes (the declared max)"
    ]


# --- 7. options ----------------------------------------------------------------------------------------

OPTIONS = """
players: {min: 3, max: 4}
options:
  rounds: {type: int, default: 2, min: 1, max: 5, description: rounds to play}
  judge: {type: bool, default: false}
roles:
  - {name: judge, count: 'options.judge ? 2 : 0'}
  - {name: player, count: 'n - 1'}
actions:
  pass: {}
phases: [{name: a, actions: [pass]}]
end: {when: 'turn >= options.rounds', turn_limit: 10}
payoffs: {value: 'options.rounds'}
policy: [{action: pass}]
"""


def test_options_are_read_in_expressions_and_chosen_at_make() -> None:
    spec = spec_of(OPTIONS)
    env = rsi_env.make_parallel(spec, options={"rounds": "4"})
    env.reset(seed=0)
    while env.agents:
        env.step({p: '{"action": "pass"}' for p in env.agents})
    assert env.engine.turn == 4 and env.engine.payoffs == {f"player_{i}": 4.0 for i in range(3)}
    assert env.spec.spec_hash() != spec.spec_hash() == spec.with_options({"rounds": 2}).spec_hash()
    # The AEC env takes them too (README: `rsi_env.make("leduc_holdem", options={"raises": 1})`).
    aec = rsi_env.make(spec, options={"rounds": 3})
    aec.reset(seed=0)
    for _agent in aec.agent_iter():
        _obs, _r, term, trunc, _info = aec.last()
        aec.step(None if term or trunc else '{"action": "pass"}')
    assert aec.unwrapped.engine.turn == 3
    assert aec.unwrapped.engine.payoffs == {f"player_{i}": 3.0 for i in range(3)}


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"rounds": 9}, "options.rounds: 9 is above the maximum 5"),
        ({"rounds": "many"}, "options.rounds: expected a whole number, got 'many'"),
        ({"speed": 1}, "options.speed: t has no such option (its options: judge, rounds)"),
        ({"judge": "maybe"}, "options.judge: expected true or false, got 'maybe'"),
    ],
)
def test_a_bad_option_is_one_clear_error(options: dict, says: str) -> None:
    with pytest.raises(SpecError) as err:
        rsi_env.make_parallel(spec_of(OPTIONS), options=options)
    assert err.value.problems == [says]


def test_an_option_whose_default_breaks_its_own_declaration_is_a_load_error() -> None:
    text = OPTIONS.replace("default: 2, min: 1", "default: 9, min: 1").replace(
        "  judge: {type: bool, default: false}",
        "  judge: {type: bool, default: false}\n  size: {type: enum, default: x, values: [a]}",
    )
    assert problems_of(text, dry_run=False) == [
        "options.rounds: default: 9 is above the maximum 5",
        "options.size: default: expected one of ['a'], got 'x'",
    ]


def test_an_option_that_breaks_the_role_counts_names_the_role_it_changed() -> None:
    problems = problems_of(OPTIONS, dry_run=False)
    assert problems == [
        "roles.judge.count: with option judge=true, roles need 4 seats (judge: 2, player: 2) but there are "
        "n=3 players; player would get fewer seats than counted (the option changes judge from 0 to 2)"
    ]
    with pytest.raises(SpecError) as err:
        rsi_env.make_parallel(spec_of(OPTIONS), options={"judge": True})
    assert err.value.problems == [
        "roles.judge.count: with options rounds=2, judge=True, roles need 4 seats (judge: 2, player: 2) but "
        "there are n=3 players; the options decide the count of judge"
    ]


def test_an_undeclared_option_is_a_static_error() -> None:
    problems = problems_of(OPTIONS.replace("options.rounds'", "options.round'"), dry_run=False)
    assert any("`options.round` is not declared under `options` (judge, rounds)" in p for p in problems)


def test_json_schema_has_every_v2_construct() -> None:
    defs = spec_json_schema()["$defs"]
    assert {"Option", "Reactions", "Repeat"} <= set(defs)
    assert {"items", "min_items", "max_items", "unique", "fields"} <= set(defs["Param"]["properties"])
    assert {"available_if", "let", "reactions", "group"} <= set(defs["Action"]["properties"])
    assert "free" in json.dumps(defs["Phase"]["properties"]["mode"])
    assert "weight" in defs["PolicyRule"]["properties"]


# --- 8. policies ---------------------------------------------------------------------------------------

MIXED = """
players: {min: 2, max: 2}
player_state:
  secret: {type: int, init: '7', visibility: private}
actions:
  pick:
    params:
      side: {type: enum, values: [left, right, middle]}
      why: {type: text, optional: true}
phases: [{name: a, actions: [pick]}]
end: {when: 'false', turn_limit: 2}
payoffs: {value: '0'}
policy:
  - {action: pick, weight: '3', args: {side: '"left"', why: 'null'}}
  - {action: pick, weight: '1', args: {side: '"right"', why: '"because"'}}
  - {action: pick, args: {side: '"middle"'}}
"""


def test_weighted_rules_are_a_mixed_choice_and_null_leaves_an_argument_out() -> None:
    engine = GameEngine(spec_of(MIXED))
    agent = ScriptedAgent(engine.spec, seed=1)
    info = {"action_schema": action_schema(engine, "player_0"), "view": player_view(engine, "player_0")}
    picks = [json.loads(agent.choose(info)) for _ in range(2000)]
    lefts = sum(p["side"] == "left" for p in picks)
    assert 0.70 < lefts / len(picks) < 0.80  # 3 : 1
    assert all("why" not in p for p in picks if p["side"] == "left")
    assert {p["side"] for p in picks} == {"left", "right"}


def test_a_failing_rule_is_a_warning_in_the_episode_record(tmp_path: Any) -> None:
    from rsi_env.agents.factory import AgentFactory
    from rsi_env.runner import Runner, plan
    from rsi_env.trajectory_store import read_episodes

    text = MIXED.replace("side: '\"left\"'", "side: 'my.secret > 0 ? state.nope : \"left\"'")
    spec = spec_of(text)
    factory = AgentFactory(["scripted"], spec)
    import asyncio

    asyncio.run(Runner(spec, factory, tmp_path, progress=False).run(plan(spec, factory, 1)))
    (ep,) = list(read_episodes(tmp_path))
    assert ep.status == "complete" and ep.warnings
    assert "policy[0].args.side failed for player_0 (turn 0, phase a)" in ep.warnings[0]
    assert ep.options == {}


def test_a_policy_that_reads_another_players_private_field_is_rejected() -> None:
    text = MIXED.replace("side: '\"middle\"'", 'side: \'P[players[1]].secret > 0 ? "middle" : "left"\'')
    problems = problems_of(text, dry_run=False)
    assert problems == [
        "policy[2].args.side: reads ['P[players[1]].secret']: another player's private field, "
        "or a hidden one, which players cannot see"
    ]
    own = MIXED.replace("side: '\"middle\"'", 'side: \'P[me].secret > 0 ? "middle" : "left"\'')
    assert problems_of(own, dry_run=False) == []


# --- errors and messages --------------------------------------------------------------------------------

DEFAULT = """
players: {min: 2, max: 2}
state:
  score: {type: int}
actions:
  bid:
    params: {amount: {type: int, min: 1, max: 3}}
    effects: [{add: state.score, value: args.amount}]
phases:
  - name: a
    mode: simultaneous
    actions: [bid]
    default_move: {action: bid, args: {amount: '0'}}
end: {when: 'turn >= 3', turn_limit: 3}
payoffs: {value: state.score}
policy: [{action: bid, args: {amount: '1'}}]
"""


def test_a_default_move_that_is_not_legal_is_an_error_the_dry_run_finds() -> None:
    problems = problems_of(DEFAULT)
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        "phases.a.default_move: `bid(amount=0)` is not a legal move for player_0: "
        "`amount` must be at least 1, got 0"
    )


def test_an_episode_with_a_failed_default_move_is_a_game_error_not_a_zero(tmp_path: Any) -> None:
    import asyncio

    from rsi_env.agents.factory import AgentFactory
    from rsi_env.runner import Runner, plan
    from rsi_env.trajectory_store import read_episodes

    spec = spec_of(DEFAULT)
    env = rsi_env.make_parallel(spec)
    env.reset(seed=0)
    while env.agents:  # nobody answers: every turn passes to the default move, which fails
        env.step({})
    assert env.engine.errors and env.engine.payoffs == {"player_0": 0.0, "player_1": 0.0}
    assert env.agent_info("player_0")["game_error"].startswith("tick 2: phases.a.default_move")
    # Through the runner, a spec that fails while it runs is recorded as `game_error`, never scored.
    broken = spec_of(DEFAULT.replace("value: args.amount}", "value: '10 / (args.amount - args.amount)'}"))
    factory = AgentFactory(["random"], broken)
    asyncio.run(Runner(broken, factory, tmp_path, progress=False).run(plan(broken, factory, 1)))
    (ep,) = list(read_episodes(tmp_path))
    assert ep.status == "aborted" and ep.payoffs is None
    assert ep.abort_reason is not None and ep.abort_reason.startswith(
        "game_error: tick 0: actions.bid.effects[0]"
    )
    assert "division by zero" in ep.abort_reason
    # And the default move itself: agents that never answer in JSON run out of attempts each turn.

    class Mute(RandomAgent):
        def choose(self, info: dict[str, Any]) -> str:
            return "I would rather not say"

    class MuteFactory(AgentFactory):
        def build(self, name: str, player: str, seed: int) -> Any:
            return Mute(seed)

    mute = MuteFactory(["random"], spec)
    asyncio.run(Runner(spec, mute, tmp_path / "mute", progress=False).run(plan(spec, mute, 1)))
    (ep,) = list(read_episodes(tmp_path / "mute"))
    assert ep.status == "aborted" and ep.payoffs is None
    assert ep.abort_reason is not None and ep.abort_reason.startswith(
        "game_error: tick 2: phases.a.default_move: `bid(amount=0)` is not a legal move"
    )  # tick 2: each of the 3 attempts allowed takes a tick


def test_an_unquoted_comma_in_a_flow_mapping_names_the_line_and_the_quoting() -> None:
    from rsi_env.spec import load_yaml

    with pytest.raises(SpecError) as err:
        load_yaml("state:\n  out: {type: list, description: players out, in the order they went out}\n")
    assert err.value.problems == [
        "line 2: `in the order they went out` reads as a key of its own: an unquoted comma inside {...} "
        "ends the value of `description` there; quote the value: "
        "description: 'players out, in the order they went out'"
    ]


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("state.x + state.f", "+ cannot combine int (1) and double (1.5)"),
        (
            "P[state.victim].c",
            "`P[state.victim]`: the index is null (not set yet?), so it names nothing in map `P`",
        ),
        ("state.victim.c + 1", "`state.victim.c`: `state.victim` is null, which has no field `c`"),
        ("state.x > 0 && state.x", "&& takes bools, got bool (True) and int (1)"),
        ("state.x ? 1 : 2", "the condition `state.x` is not a bool but int (1)"),
        # The package calls a known function given an operand it has no overload for "undefined".
        ("size(state.x)", "`size` does not take int (1)"),
        # Inside a macro: the body with its variable bound to the first item it fails on.
        ("state.l.exists(q, q)", "the condition `q` is not a bool but int (1) (where q = int (1))"),
        (
            'state.l.map(q, q > 1, q + "a")',
            "`q + \"a\"`: + cannot combine int (2) and string ('a') (where q = int (2))",
        ),
    ],
)
def test_a_type_error_names_what_the_operation_saw(source: str, says: str) -> None:
    from rsi_env.expr import Expr, ExprError, Scope

    scope = Scope({"state": {"victim": None, "x": 1, "f": 1.5, "l": [1, 2]}, "P": {"a": {"c": 1}}})
    with pytest.raises(ExprError) as err:
        Expr(source)(scope)
    assert says in str(err.value) and "uint" not in str(err.value)
    assert str(err.value).endswith((")", "`", "."))


def test_an_effect_on_a_null_player_says_so() -> None:
    text = LOOP.replace(
        "      - repeat:", "      - set: P[state.nobody].x\n        value: '1'\n      - repeat:"
    ).replace("  passes: {type: int}", "  passes: {type: int}\n  nobody: {type: player}")
    text = text.replace("state:\n", "player_state:\n  x: {type: int}\nstate:\n", 1)
    engine = GameEngine(spec_of(text))
    move(engine, player_0={"action": "go", "to": 2})
    assert engine.errors[0] == (
        "tick 0: actions.go.effects[0]: P[state.nobody].x: the player index is null (no player to write to)"
    )


def test_random_play_of_the_test_games_is_clean() -> None:
    """Every feature game above plays to its end under random agents with no runtime error."""
    for text in (TEAM, ORDERS, POKER, TALK, CLAIMS, LOOP, OPTIONS, MIXED):
        spec = spec_of(text)
        for seed in range(5):
            engine = GameEngine(spec)
            engine.reset(seed)
            agents = {p: RandomAgent(seed * 10 + i) for i, p in enumerate(engine.players)}
            while not engine.done:
                engine.tick(
                    {
                        p: agents[p].choose({"action_schema": action_schema(engine, p)})
                        for p in engine.current_actors()
                    }
                )
            assert engine.errors == [], (text[:40], engine.errors)


def test_play_option_is_recorded_and_makes_other_episode_ids(tmp_path: Any) -> None:
    """`play --option k=v`: the chosen value is in each episode record and in the spec hash (so the
    episode ids); a value out of bounds is one message and exit 2 before anything runs."""
    from rsi_env.play import main as play_main
    from rsi_env.trajectory_store import read_episodes

    def run(out: str, *opts: str) -> list[Any]:
        argv = ["--game", "leduc_holdem", "--agents", "scripted", "--episodes", "2", "--quiet"]
        assert (
            play_main([*argv, *[a for o in opts for a in ("--option", o)], "--out", str(tmp_path / out)]) == 0
        )
        return list(read_episodes(tmp_path / out))

    default, one = run("default"), run("one", "raises=1")
    assert [ep.options for ep in default] == [{"raises": 2}] * 2
    assert [ep.options for ep in one] == [{"raises": 1}] * 2
    assert all(ep.status == "complete" for ep in default + one)
    assert default[0].spec_hash != one[0].spec_hash
    assert {ep.episode_id for ep in default}.isdisjoint(ep.episode_id for ep in one)
    # One bet or raise per round: after a bet, `raise` is not available, so it was never played.
    assert not [e for ep in one for e in ep.events if e.kind == "action" and e.action == "raise"]
    with pytest.raises(SystemExit) as exc:
        play_main(["--game", "leduc_holdem", "--agents", "scripted", "--option", "raises=9", "--quiet",
                   "--out", str(tmp_path / "bad")])  # fmt: skip
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()


def test_the_readme_shows_each_v2_construct_with_its_current_json_schema() -> None:
    """The README's spec section documents every v2 construct with its part of the JSON Schema;
    `scripts/readme_schema.py` writes those excerpts, and they must equal the schema of today."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    loader = importlib.util.spec_from_file_location("readme_schema", root / "scripts" / "readme_schema.py")
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    readme = (root / "README.md").read_text()
    assert module.render(readme) == readme, "run python scripts/readme_schema.py --write"
    marked = " ".join(m.group(0) for m in module._MARK.finditer(readme))
    constructs = [
        "Param: items min_items max_items unique fields", "GameSpec: let", "Phase: let", "Action: let",
        "Action: available_if", "Phase: available_if", "Phase: mode pass_action budget", "Channels: groups",
        "Action: visibility group recipient", "Reactions:", "Action: reactions", "Effect: cancel", "Repeat:",
        "Effect: repeat", "Option:", "GameSpec: options", "PolicyRule: weight", "Phase: default_move",
    ]  # fmt: skip
    for construct in constructs:
        assert construct in marked, construct
    # An excerpt that no longer matches is found (the check is not vacuous).
    stale = readme.replace('"unique": {"default": false', '"unique": {"default": true', 1)
    assert stale != readme and module.render(stale) == readme


@pytest.mark.parametrize("game", ["coup", "avalon", "leduc_holdem", "diplomacy", "codenames"])
def test_the_generator_knows_v2_a_v2_game_fits_both_structured_output_schemas(game: str) -> None:
    """The generated-games pipeline can ask for v2 specs: the five v2 games validate against the
    structured-output schemas (full and the compact one for small local models), and the prompt's
    reference names every v2 construct."""
    from rsi_env.catalog import game_files
    from rsi_env.generate.generator import (
        MECHANICS,
        REFERENCE,
        Brief,
        GenerationConfig,
        build_messages,
        structured_schema,
    )
    from rsi_env.llm import validate_json
    from rsi_env.spec import load_yaml

    # As a model would answer: JSON, every expression a string.
    data = parse_spec(load_yaml(game_files()[game].read_text())).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    for variant in ("full", "compact"):
        assert validate_json(data, structured_schema(variant)) is None, variant
    broken = {**data, "options": {"x": {"type": "int"}}}  # an option without its default
    assert validate_json(broken, structured_schema("compact")) is not None
    for construct in ("let", "options", "min_items", "unique", "available_if", "mode: free", "pass_action",
                      "budget", "channels.groups", "visibility: group", "reactions", "pending", "cancel",
                      "repeat", "weight"):  # fmt: skip
        assert construct in REFERENCE, construct
    brief = Brief(theme="a market", mechanic="sealed bids", existing=[], examples=[])
    messages, parts = build_messages(brief, GenerationConfig(context_tokens=32768))
    assert "reference" in parts and "reactions" in messages[-1]["content"]
    # Briefs also ask for the mechanics the v2 constructs exist for, e.g. challenges out of turn.
    assert any("out of turn" in m for m in MECHANICS) and any("channels" in m for m in MECHANICS)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("hints: {theirs: 'P[players[1]].secret'}", "hints.theirs: reads ['P[players[1]].secret']"),
        ("hints: {mine: 'my.card'}", "hints.mine: reads ['my.card']"),
        ("hints: {pot: 'state.pot'}", "hints.pot: reads non-public state ['pot']"),
    ],
)
def test_a_hint_that_reads_what_its_player_cannot_see_is_rejected(extra: str, says: str) -> None:
    """Hints are observation lines on the player's own view: another player's private field, a
    hidden field (even one's own) and non-public state are load errors; one's own private field is not."""
    text = MIXED.replace(
        "  secret: {type: int, init: '7', visibility: private}",
        "  secret: {type: int, init: '7', visibility: private}\n  card: {type: int, visibility: hidden}",
    ).replace(
        "players: {min: 2, max: 2}",
        "players: {min: 2, max: 2}\nstate:\n  pot: {type: int, visibility: hidden}",
    )
    problems = problems_of(f"{text}{extra}\n", dry_run=False)
    assert len(problems) == 1 and problems[0].startswith(says), problems
    assert problems_of(f"{text}hints: {{own: 'P[me].secret + 1'}}\n", dry_run=False) == []


def test_a_policy_or_hint_that_reads_a_secret_through_a_let_is_rejected() -> None:
    """The privacy check follows named expressions: a spec-level let that reads another player's
    private field is fine where only the engine reads it, an error once a hint or a policy does."""
    text = MIXED.replace(
        "players: {min: 2, max: 2}", "players: {min: 2, max: 2}\nlet:\n  theirs: 'P[players[1]].secret'"
    )
    secret = "reads ['P[players[1]].secret']: another player's private field"
    assert problems_of(text + "hints: {h: 'theirs + 1'}\n", dry_run=False) == [
        f"hints.h (through let `theirs`): {secret}, or a hidden one, which players cannot see"
    ]
    in_policy = text.replace("side: '\"middle\"'", 'side: \'theirs > 0 ? "middle" : "left"\'')
    assert problems_of(in_policy, dry_run=False) == [
        f"policy[2].args.side (through let `theirs`): {secret}, or a hidden one, which players cannot see"
    ]
    in_payoff = text.replace("payoffs: {value: '0'}", "payoffs: {value: 'theirs'}")
    assert problems_of(in_payoff, dry_run=False) == []


ORDER = """
players: {min: 2, max: 2}
state:
  x: {type: int}
actions:
  go:
    effects:
      - add: state.x
        value: '3'
      - announce: 'state.x >= 6 ? "x reached " + string(state.x) : null'
    log: '"goes with x at " + string(state.x)'
phases: [{name: a, actions: [go]}]
end: {when: 'turn >= 2', turn_limit: 2}
payoffs: {value: state.x}
policy: [{action: go}]
"""


def test_the_log_reads_the_state_before_the_effects_and_a_null_announce_says_nothing() -> None:
    engine = GameEngine(spec_of(ORDER))
    move(engine, player_0={"action": "go"})
    move(engine, player_1={"action": "go"})
    assert engine.done and engine.errors == []
    lines = [(e.kind, e.text) for e in engine.events if e.kind in ("action", "announce")]
    assert lines == [
        ("action", "goes with x at 0"),  # the first move: no announcement (null)
        ("action", "goes with x at 3"),
        ("announce", "x reached 6"),
    ]


@pytest.mark.parametrize(
    ("effect", "says"),
    [
        ("announce: null", "`announce: null` is YAML's null, not an expression; quote it as CEL: "
         "announce: 'null' (an announcement of null says nothing)"),
        ("announce: ~", "`announce: null` is YAML's null"),
        ("{set: state.x, value: null}", "`value: null` is YAML's null, not an expression; quote it as CEL: "
         "value: 'null'"),
        ("{set: state.x}", "`set` needs a `value`"),
    ],
)  # fmt: skip
def test_an_unquoted_yaml_null_where_cel_is_expected_says_to_quote_it(effect: str, says: str) -> None:
    """`announce: 'null'` (CEL) says nothing; `announce: null` unquoted is YAML's null, no expression
    at all: the message says so instead of "an effect needs exactly one of ... got none"."""
    old = "      - announce: 'state.x >= 6 ? \"x reached \" + string(state.x) : null'"
    assert old in ORDER
    problems = problems_of(ORDER.replace(old, "      - " + effect), dry_run=False)
    assert len(problems) == 1 and problems[0].startswith("actions.go.effects.1: " + says), problems
    assert problems_of(ORDER.replace(old, "      - announce: 'null'"), dry_run=False) == []


def test_a_v1_game_keeps_the_spec_hash_records_written_before_v2_carry() -> None:
    """The v1 language stays valid and hashes as before: the games in records written before v2 (and
    before typed events) have the hash those records carry, so their episode ids still match."""
    from pathlib import Path

    from rsi_env.catalog import load_game

    records = Path(__file__).parent / "records" / "before_typed_events.jsonl"
    seen = {}
    for line in records.read_text().splitlines():
        ep = json.loads(line)
        ep = ep.get("episode", ep)
        seen.setdefault(ep["game"], set()).add(ep["spec_hash"])
    assert {"negotiation", "werewolf", "auction"} <= set(seen)
    for game, hashes in seen.items():
        assert load_game(game).spec_hash() in hashes, game
    # The v2 fields a v1 spec leaves at their defaults are what is left out; used, they count.
    spec = load_game("negotiation")
    assert spec.model_copy(update={"let": {"x": "1"}}).spec_hash() != spec.spec_hash()


@pytest.mark.parametrize(
    ("base", "old", "new", "dry_run", "says"),
    [
        ("CLAIMS", "  wait: {}",
         "  wait: {effects: [{set: state.events, value: 'state.events + [pending.player]'}]}",
         False, "actions.wait.effects[0].value: unknown name(s) ['pending']"),
        ("CLAIMS", "  wait: {}", "  wait: {effects: [{cancel: 'true'}]}",
         False, "actions.wait.effects[0].cancel: only a reaction's effects may cancel"),
        ("CLAIMS", "phases: [{name: a, actions: [tax, wait]}]",
         "phases: [{name: a, mode: simultaneous, actions: [tax, wait]}]",
         False, "phases.a: ['tax'] have reactions, which only a sequential phase can wait for"),
        ("TALK", "    actions: [say, huddle, whisper, done]\n    pass_action: done",
         "    actions: [say, huddle, whisper]\n    pass_action: done",
         False, "phases.talk.pass_action: `done` is not one of this phase's actions"),
        ("TALK", "group: args.channel", "group: '\"blues\"'",
         False, "actions.huddle.group: `blues` is not a group (groups: ['everyone_but_0', 'reds'])"),
        ("TALK", "values: [reds, everyone_but_0]", "values: [reds, blues]",
         True, "actions.huddle.group: `groups[(args.channel)]`: missing key: blues (dry run"),
        ("TALK", "min_items: '1', max_items: '2'", "min_items: '3', max_items: '2'",
         False, "actions.whisper.params.to: min_items (3) is above max_items (2): no length is valid"),
    ],
)  # fmt: skip
def test_v2_constructs_misused_are_load_errors(
    base: str, old: str, new: str, dry_run: bool, says: str
) -> None:
    """`pending` and `cancel` outside reactions, reactions where nothing can wait, a free phase whose
    pass it does not offer, a group that does not exist (by name, or found by the dry run), a list
    that no length fits: each one problem naming the field, before play."""
    text = globals()[base]
    assert old in text
    problems = problems_of(text.replace(old, new), dry_run=dry_run)
    assert len(problems) == 1 and problems[0].startswith(says), problems


def test_the_codenames_words_are_the_encyclopedia_pages_the_script_picks() -> None:
    """Codenames' board words and glossaries are data from the shipped encyclopedia corpus:
    `scripts/codenames_lexicon.py` builds the table from it, and the game holds that very table."""
    import importlib.util
    from pathlib import Path

    from rsi_env.catalog import load_game
    from rsi_env.expr import Expr, Scope, select_functions
    from rsi_env.tasks import corpus

    if importlib.util.find_spec(corpus.MODULE) is None:
        pytest.skip(f"encyclopedia corpus not installed: pip install {corpus.PACKAGE}")
    root = Path(__file__).resolve().parent.parent
    loader = importlib.util.spec_from_file_location(
        "codenames_lexicon", root / "scripts" / "codenames_lexicon.py"
    )
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    in_game = {}
    for half in ("lexicon_a", "lexicon_b"):  # two variables: an expression is at most 4,000 characters
        e = Expr(load_game("codenames").state[half].init or "")
        in_game.update(e(Scope({}, select_functions(e.functions))))
    assert in_game == module.lexicon()
    assert len(in_game) == 16 * 8 and all(len(v) >= 1 for v in in_game.values())
