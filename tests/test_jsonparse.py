"""The one JSON extractor (`rsi_env.llm.jsonparse`) and the action parser built on it: every near-JSON
form a model sends is read as what it meant, and hostile input stays bounded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rsi_env.actions import parse_action
from rsi_env.llm.jsonparse import MAX_NESTING, extract_json

ACTIONS = ["propose", "accept", "walk_away"]
PROPOSAL = {"name": "propose", "args": {"books": 1, "hats": 0}}


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ("[1, 2]", [1, 2]),
        ("7", 7),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('prose {"a": 1} more prose {"b": 2}', {"a": 1}),
        ('Use {braces} like this: {"a": 1}', {"a": 1}),
        ('{"text": "line one\nline two"}', {"text": "line one\nline two"}),
    ],
)
def test_strict_forms(reply: str, value: Any) -> None:
    assert extract_json(reply) == value


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("{'a': 1, 'b': 'x'}", {"a": 1, "b": "x"}),  # single quotes
        ("{a: 1, b: two}", {"a": 1, "b": "two"}),  # bare keys and words
        ('{"a": 1,}', {"a": 1}),  # trailing comma
        ('{"a": [1, 2}', {"a": [1, 2]}),  # a missing bracket
        ('Sure! {"a": 1', {"a": 1}),  # cut short, with prose before it
        ("```\n{'a': 1}\n```", {"a": 1}),
        ("Use {braces}: {'a': 1}", {"a": 1}),  # a non-object repair is passed over
    ],
)
def test_lenient_forms_need_lenient(reply: str, value: Any) -> None:
    with pytest.raises(ValueError):
        extract_json(reply)
    assert extract_json(reply, lenient=True) == value


def test_a_well_formed_value_beats_a_broken_one_before_it() -> None:
    assert extract_json("{'a': 1} or rather {\"b\": 2}", lenient=True) == {"b": 2}


def test_object_only_skips_other_values() -> None:
    assert extract_json('[{"a": 1}]', object_only=True) == {"a": 1}
    assert extract_json('"accept" {"a": 1}', object_only=True) == {"a": 1}
    with pytest.raises(ValueError, match="no JSON object found"):
        extract_json("[1, 2]", object_only=True)


@pytest.mark.parametrize("reply", ["", "   ", "no json here", '{"a": 1', "I propose two books!"])
def test_no_json_is_a_value_error_with_a_reason(reply: str) -> None:
    with pytest.raises(ValueError, match=r"empty|not valid JSON"):
        extract_json(reply)


@pytest.mark.parametrize(
    "hostile",
    [
        "[" * 100_000,
        "{" * 100_000,
        '{"a": ' * 5_000 + "1" + "}" * 5_000,
        "{" * (MAX_NESTING + 1) + "'x" * 10_000,
        "{'a: b, [c d} x" * 3_000,
    ],
)
@pytest.mark.timeout(60)  # a hang guard, not a benchmark: unbounded, these take minutes or overflow
def test_hostile_replies_stay_bounded(hostile: str) -> None:
    try:
        value = extract_json(hostile, lenient=True, max_repair_chars=2_000)
    except ValueError:
        return
    assert isinstance(value, dict | list) and value


def test_a_value_nested_past_the_limit_is_a_value_error_whatever_python_can_parse() -> None:
    """Python's parser reads ~1,000 levels; a schema check or `json.dumps` of the value then overflows
    the recursion limit (a reply of 1,000 brackets ended `play` and `games generate` that way)."""
    for reply in (
        "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1),
        "[" * 900 + "]" * 900,
        "say " + '{"a": ' * 900 + "1" + "}" * 900,  # in prose: the starts inside it are not tried
    ):
        with pytest.raises(ValueError, match="nested"):
            extract_json(reply, lenient=True)
    deep_enough = "[" * MAX_NESTING + "]" * MAX_NESTING
    assert extract_json(deep_enough) == json.loads(deep_enough)
    # Brackets in strings are text, not nesting.
    assert extract_json('{"m": "' + "[" * 500 + '"}') == {"m": "[" * 500}


# -- the action parser on top of it: each near-JSON form parses to the intended action ---------------


@pytest.mark.parametrize(
    "reply",
    [
        '{"action": "propose", "books": 1, "hats": 0}',
        '```json\n{"action": "propose", "books": 1, "hats": 0}\n```',
        "{'action': 'propose', 'books': 1, 'hats': 0}",
        "{action: propose, books: 1, hats: 0}",
        '{"action": "propose", "books": 1, "hats": 0,}',
        'I will propose this: {"action": "propose", "books": 1, "hats": 0} and hope you agree.',
        '{"propose": {"books": 1, "hats": 0}}',
        '{"action": "propose", "args": {"books": 1, "hats": 0}}',
        '{"action": "Propose", "books": 1, "hats": 0',
        "propose books=1 hats=0",
        "propose(books=1, hats=0)",
    ],
)
def test_near_json_forms_parse_to_the_intended_action(reply: str) -> None:
    parsed = parse_action(reply, ACTIONS)
    assert parsed.error is None
    assert {"name": parsed.name, "args": parsed.args} == PROPOSAL


@pytest.mark.parametrize(
    ("reply", "name"),
    [
        ("accept", "accept"),
        ('{"accept": true}', "accept"),
        ("walk-away", "walk_away"),
        ("```\naccept\n```", "accept"),
    ],
)
def test_bare_action_names(reply: str, name: str) -> None:
    assert parse_action(reply, ACTIONS).name == name


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("", "empty reply"),
        ('{"action": "fly"}', "unknown action 'fly'"),
        ('{"books": 1}', 'missing "action" field'),
        ("hello there", "no JSON object found"),
    ],
)
def test_unreadable_replies_become_feedback(reply: str, error: str) -> None:
    parsed = parse_action(reply, ACTIONS)
    assert parsed.name is None and error in (parsed.error or "")
