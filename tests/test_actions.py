"""Reading an action from a model's reply (`rsi_env/actions.py`): every near-JSON form the README
advertises parses to the intended action and arguments; what cannot be read is a message, never an
exception; parameter values are coerced to their declared types or refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsi_env.actions import (
    clip_text,
    coerce_bool,
    coerce_choice,
    coerce_float,
    coerce_int,
    coerce_player,
    parse_action,
)

NAMES = ["propose", "accept", "reveal", "say", "walk_away"]
OFFER = {"books": 1, "hats": 2, "balls": 0}

# (reply, action, arguments): each form named in the README, and the variants models produce.
FORMS = [
    ('{"action": "propose", "books": 1, "hats": 2, "balls": 0}', "propose", OFFER),
    # code fences
    ('```json\n{"action": "propose", "books": 1, "hats": 2, "balls": 0}\n```', "propose", OFFER),
    ('```\n{"action": "accept"}\n```', "accept", {}),
    ('Here:\n```json\n{"action": "say", "message": "hi"}\n```\nDone.', "say", {"message": "hi"}),
    # single quotes
    ("{'action': 'propose', 'books': 1, 'hats': 2, 'balls': 0}", "propose", OFFER),
    ("{'action': 'say', 'message': 'it is fine'}", "say", {"message": "it is fine"}),
    # bare keys
    ("{action: propose, books: 1, hats: 2, balls: 0}", "propose", OFFER),
    ('{action: "say", message: "ok then"}', "say", {"message": "ok then"}),
    # prose around the object
    (
        'I will propose. {"action": "propose", "books": 1, "hats": 2, "balls": 0} Hope it works!',
        "propose",
        OFFER,
    ),
    (
        'Thinking... my answer is {"action": "walk_away", "message": "No deal."}',
        "walk_away",
        {"message": "No deal."},
    ),
    # {"propose": {...}}
    ('{"propose": {"books": 1, "hats": 2, "balls": 0}}', "propose", OFFER),
    ('{"accept": true}', "accept", {}),
    ('{"say": {"message": "hello"}}', "say", {"message": "hello"}),
    # propose books=1
    ("propose books=1 hats=2 balls=0", "propose", OFFER),
    ("propose(books=1, hats=2, balls=0)", "propose", OFFER),
    ('say message="see you"', "say", {"message": "see you"}),
    ("accept", "accept", {}),
    # other spellings of the action and its arguments
    ('{"action": "propose", "args": {"books": 1, "hats": 2, "balls": 0}}', "propose", OFFER),
    ('{"type": "propose", "parameters": {"books": 1, "hats": 2, "balls": 0}}', "propose", OFFER),
    ('{"action": "Walk-Away"}', "walk_away", {}),
    ('{"action": "walk away"}', "walk_away", {}),
    ('{"action": "propose", "books": 1, "hats": 2, "balls": 0,}', "propose", OFFER),  # trailing comma
    (
        '{"action": "say", "message": "use {braces} and \\"quotes\\""}',
        "say",
        {"message": 'use {braces} and "quotes"'},
    ),
    ('{"action": "say", "message": "two\nlines"}', "say", {"message": "two\nlines"}),  # a raw newline
]


@pytest.mark.parametrize(("reply", "action", "args"), FORMS)
def test_near_json_parses_to_the_intended_action(reply: str, action: str, args: dict) -> None:
    parsed = parse_action(reply, NAMES)
    assert parsed.error is None, parsed.error
    assert (parsed.name, parsed.args) == (action, args)


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ("", "empty reply"),
        ("   \n ", "empty reply"),
        ("I do not want to play.", "no JSON object found"),
        ('{"action": "fly", "books": 1}', "unknown action 'fly'"),
        ('{"books": 1, "hats": 2}', 'missing "action" field'),
        ("{}", "no JSON object found"),
    ],
)
def test_what_cannot_be_read_is_a_message_naming_the_problem(reply: str, says: str) -> None:
    parsed = parse_action(reply, NAMES)
    assert parsed.name is None and parsed.error is not None and says in parsed.error
    if "action" in says:
        assert "propose" in parsed.error, "the legal actions are listed"


@pytest.mark.parametrize("reply", [None, 42, 3.5, ["propose"], {"action": "accept"}, b"accept"])
def test_a_reply_that_is_not_text_never_raises(reply: object) -> None:
    parse_action(reply, NAMES)


def test_huge_and_deeply_nested_replies_are_bounded() -> None:
    assert parse_action("[" * 100_000, NAMES).error
    assert parse_action("{" * 10_000 + "}" * 10_000, NAMES).error
    long = '{"action": "say", "message": "' + "x" * 100_000 + '"}'
    parsed = parse_action(long, NAMES)
    assert parsed.error is not None or parsed.name == "say"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_an_action_or_a_message(text: str) -> None:
    parsed = parse_action(text, NAMES)
    assert (parsed.name in NAMES) != (parsed.error is not None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3),
        ("3", 3),
        (" -2 ", -2),
        ("4.0", 4),
        (4.0, 4),
        (True, None),
        ("3.5", None),
        (3.5, None),
        ("x", None),
    ],
)
def test_whole_numbers(value: object, expected: int | None) -> None:
    assert coerce_int(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1.0),
        ("2.5", 2.5),
        (" 1e2 ", 100.0),
        ("nan", None),
        (float("inf"), None),
        (False, None),
        ("a", None),
    ],
)
def test_numbers(value: object, expected: float | None) -> None:
    assert coerce_float(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        ("yes", True),
        ("Y", True),
        (1, True),
        ("false", False),
        (0, False),
        ("maybe", None),
        (2, None),
    ],
)
def test_true_or_false(value: object, expected: bool | None) -> None:
    assert coerce_bool(value) == expected


def test_choices_and_players() -> None:
    assert coerce_choice("RED", ["red", "blue"]) == "red"
    assert coerce_choice(" blue ", ["red", "blue"]) == "blue"
    assert coerce_choice("green", ["red", "blue"]) is None
    assert coerce_choice(True, ["True"]) is None
    players = ["player_0", "player_1", "player_2"]
    for ref in ("player_1", "PLAYER_1", "player 1", "1", 1):
        assert coerce_player(ref, ["player_1", "player_2"], players) == "player_1"
    assert coerce_player("player_0", ["player_1", "player_2"], players) is None, "not a candidate"
    assert coerce_player("player 9", players, players) is None


def test_text_is_clipped_and_structures_become_json() -> None:
    assert clip_text("abcdef", 3) == "abc"
    assert clip_text({"a": 1}, 100) == '{"a": 1}'
    assert clip_text(None, 10) is None


def test_broken_json_is_repaired_only_when_it_names_an_action(monkeypatch: pytest.MonkeyPatch) -> None:
    import json_repair

    repaired: list[str] = []
    real = json_repair.loads

    def spy(text: str, *args: object, **kw: object) -> object:  # a test double around the real one
        repaired.append(text)
        return real(text, *args, **kw)

    monkeypatch.setattr(json_repair, "loads", spy)
    garbage = "ç{ñ:::'ab\"c" * 50  # brackets and quotes, but no action's name
    parsed = parse_action(garbage, NAMES)
    assert parsed.name is None and parsed.error is not None and "no JSON object" in parsed.error
    assert repaired == []
    # Named in any of the spellings `_lookup_name` reads (case, `-` or a space for `_`): repaired.
    for reply in ("{'action': 'Walk Away'", "{action: WALK-AWAY, note: 1"):
        assert parse_action(reply, NAMES).name == "walk_away"
    assert len(repaired) == 2
