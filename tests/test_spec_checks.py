"""The spec checks catch what would otherwise pass silently: values of the wrong type, role counts
that do not fit, parameters no value satisfies, duplicate YAML keys; each problem once, at its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from rsi_env.engine import GameEngine
from rsi_env.expr_types import BOOL, INT, LIST, STRING, MapOf, Record, infer_type
from rsi_env.spec import SpecError, parse_spec
from rsi_env.spec_check import check_spec, load_checked_spec

# A minimal valid game: two players add 0-3 to a shared score until it passes 5.
BASE: dict[str, Any] = {
    "id": "base",
    "name": "Base",
    "rules": "x",
    "players": {"min": 2, "max": 2},
    "roles": [{"name": "r"}],
    "state": {"score": {"type": "int", "init": "0"}},
    "actions": {
        "go": {
            "params": {"n": {"type": "int", "min": "0", "max": "3"}},
            "effects": [{"add": "state.score", "value": "args.n"}],
        }
    },
    "phases": [{"name": "a", "actions": ["go"]}],
    "end": {"when": "state.score > 5", "turn_limit": 10},
    "payoffs": {"value": "state.score"},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    """BASE with `a__b__c=value` set (list indices as numbers)."""
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split("__")
        target: Any = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value
    return data


def problems_of(data: dict[str, Any]) -> list[str]:
    try:
        check_spec(parse_spec(data, "t"), "t")
    except SpecError as exc:
        return exc.problems
    return []


def test_base_spec_is_valid() -> None:
    assert problems_of(BASE) == []


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"payoffs__value": '"win"'}, "payoffs.value", "gives string, expected a number"),
        ({"payoffs__forfeit": "true"}, "payoffs.forfeit", "gives bool, expected a number"),
        (
            {"actions__go__valid_if": [{"expr": "state.score + 1", "message": "m"}]},
            "actions.go.valid_if[0].expr",
            "gives int, expected true or false",
        ),
        ({"end__when": "state.score"}, "end.when", "gives int, expected true or false"),
        ({"phases__0__until": "size(players)"}, "phases.a.until", "expected true or false"),
        ({"state__score__init": '"hello"'}, "state.score.init", "gives string, expected int"),
        ({"state__score__where": "value"}, "state.score.where", "expected true or false"),
        (
            {"actions__go__effects__0__value": '"abc"'},
            "actions.go.effects[0].value",
            "gives string, expected a value that can be added to int `state.score`",
        ),
        (
            {"actions__go__effects__0": {"set": "state.score", "value": "[1]"}},
            "actions.go.effects[0].value",
            "gives list",
        ),
        (
            {"actions__go__params__n__min": '"a"'},
            "actions.go.params.n.min",
            "gives string, expected a number",
        ),
        ({"phases__0__actors": "n"}, "phases.a.actors", "gives int, expected a list"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_problem_at_its_field(changes: dict, field: str, says: str) -> None:
    problems = problems_of(spec_with(**changes))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: ") and says in problems[0]


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        # Types only known on real values: the dry run checks them.
        (
            {"state__m": {"type": "map", "init": '{"x": 0}'}, "end__when": "state.m.x"},
            "end.when",
            "expected true or false, got 0 (int)",
        ),
        (
            {"state__m": {"type": "map", "init": '{"x": "w"}'}, "payoffs__value": "state.m.x"},
            "payoffs.value",
            "expected a number, got 'w' (string)",
        ),
        (
            {
                "state": {
                    "m": {"type": "map", "init": '{"x": "w"}'},
                    "score": {"type": "int", "init": "state.m.x"},
                }
            },
            "state.score.init",
            "expected int (the declared type), got 'w' (string)",
        ),
        (
            {"actions__go__params__n__min": "state.score + 5"},
            "actions.go.params.n",
            "min (5) is above max (3)",
        ),
    ],
)
def test_types_and_bounds_known_only_at_run_time_are_caught_by_the_dry_run(
    changes: dict, field: str, says: str
) -> None:
    problems = problems_of(spec_with(**changes))
    assert len(problems) == 1, problems
    assert (
        problems[0].startswith(f"{field}: ") and says in problems[0] and "(dry run n=2, seed=0" in problems[0]
    )


def test_an_error_repeated_every_tick_is_reported_once_with_its_count() -> None:
    problems = problems_of(spec_with(actions__go__effects__0__value="10 / (state.score - state.score)"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("actions.go.effects[0]: ") and "division by zero" in problems[0]
    assert "ticks 0-9, 10 times" in problems[0]


@pytest.mark.parametrize(
    ("roles", "players", "field", "says"),
    [
        ([{"name": "r", "count": "3"}, {"name": "s", "count": "2"}], 2, "roles.r.count", "need 5 seats"),
        ([{"name": "r", "count": "5"}], 2, "roles.r.count", "need 5 seats"),
        ([{"name": "r", "count": "1"}, {"name": "s", "count": "n"}], 2, "roles.s.count", "need 3 seats"),
        ([{"name": "r", "count": "-1"}, {"name": "s"}], 2, "roles.r.count", "a count is a whole number"),
    ],
)
def test_role_counts_must_fit_the_players(roles: list, players: int, field: str, says: str) -> None:
    problems = problems_of(spec_with(roles=roles, players={"min": players, "max": players}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: ") and says in problems[0]


def test_seats_beyond_the_counted_roles_go_to_the_last_role() -> None:
    spec = spec_with(
        roles=[{"name": "r", "count": "1"}, {"name": "s", "count": "1"}], players={"min": 3, "max": 3}
    )
    assert problems_of(spec) == []
    engine = GameEngine(parse_spec(spec, "<test>"), n_players=3)
    engine.reset(0)
    assert sorted(engine.role.values()) == ["r", "s", "s"]


def test_role_counts_that_depend_on_n_fit_every_player_count() -> None:
    roles = [{"name": "wolf", "count": "n >= 4 ? 2 : 1"}, {"name": "villager"}]
    assert problems_of(spec_with(roles=roles, players={"min": 2, "max": 5})) == []
    too_many = [{"name": "wolf", "count": "n >= 4 ? 6 : 1"}, {"name": "villager"}]
    problems = problems_of(spec_with(roles=too_many, players={"min": 2, "max": 5}))
    assert problems == [
        "roles.wolf.count: roles need 6 seats (wolf: 6) but there are n=4 players; "
        "wolf would get fewer seats than counted (also n=5)"
    ]


@pytest.mark.parametrize(
    ("param", "field", "says"),
    [
        ({"type": "int", "min": "5", "max": "3"}, "actions.go.params.n", "min (5) is above max (3)"),
        (
            {"type": "int", "min": "n + 2", "max": "3"},
            "actions.go.params.n",
            "min (4) is above max (3) with n=2",
        ),
        ({"type": "enum", "values": []}, "actions.go.params.n.values", "at least one value"),
        ({"type": "enum"}, "actions.go.params.n", "an enum needs `values`"),
        (
            {"type": "int", "min": "0", "max": "3", "values": ["a"]},
            "actions.go.params.n",
            "['values'] do not apply",
        ),
    ],
)
def test_impossible_parameters_are_rejected_statically(param: dict, field: str, says: str) -> None:
    # The effect adds nothing from the parameter, so only the parameter itself is at fault.
    data = spec_with(actions__go__params__n=param, actions__go__effects__0__value="1")
    problems = problems_of(data)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: ") and says in problems[0]


def write_spec(tmp_path: Path, data: dict[str, Any], extra: str = "") -> Path:
    path = tmp_path / "game.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False) + extra, encoding="utf-8")
    return path


def test_a_duplicate_yaml_key_is_rejected_with_its_line(tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE, sort_keys=False)
    first = "  score:\n    type: int\n    init: '0'\n"
    assert first in text
    path = tmp_path / "game.yaml"
    path.write_text(text.replace(first, first + "  score:\n    type: bool\n"), encoding="utf-8")
    lines = path.read_text().splitlines()
    dup = [i + 1 for i, line in enumerate(lines) if line == "  score:"]
    with pytest.raises(SpecError) as err:
        load_checked_spec(path)
    assert err.value.problems == [
        f"state.score: duplicate key at line {dup[1]} (first at line {dup[0]}); YAML would keep only the last"
    ]


def test_load_checked_spec_returns_the_spec_or_raises_every_problem(tmp_path: Path) -> None:
    assert load_checked_spec(write_spec(tmp_path, BASE)).id == "base"
    bad = spec_with(payoffs__value='"win"', end__when="state.score", roles=[{"name": "r", "count": "3"}])
    with pytest.raises(SpecError) as err:
        load_checked_spec(write_spec(tmp_path, bad))
    fields = [p.split(":")[0] for p in err.value.problems]
    assert sorted(fields) == ["end.when", "payoffs.value", "roles.r.count"]
    assert str(err.value).startswith(f"{tmp_path / 'game.yaml'}: 3 problem(s)")


def test_the_dry_run_is_part_of_load_checked_spec_unless_skipped(tmp_path: Path) -> None:
    path = write_spec(tmp_path, spec_with(payoffs__value="10 / (state.score - state.score)"))
    with pytest.raises(SpecError, match="division by zero"):
        load_checked_spec(path)
    assert load_checked_spec(path, dry_run=False).id == "base"


ENV = {
    "state": Record({"score": INT, "name": STRING}),
    "P": MapOf(Record({"alive": BOOL})),
    "players": LIST,
    "n": INT,
    "p": STRING,
}


@pytest.mark.parametrize(
    ("source", "want"),
    [
        ("state.score", INT),
        ("state.score * 2 + 1", INT),
        ("state.score > 5 || n == 2", BOOL),
        ("!P[p].alive", BOOL),
        ("P[p].alive", BOOL),
        ("n > 3 ? 1 : 'a'", INT | STRING),
        ("size(players) - 1", INT),
        ("players.map(n, n + 'x')", LIST),  # `n` is the comprehension's own variable here
        ("players.filter(x, P[x].alive).size()", INT),
        ("state.name + '!'", STRING),
        # Unknown: never guessed, so no spec that could run is rejected.
        ("state.undeclared", None),
        ("state.score + 1.5", None),
        ("max(state.score, 2)", None),
        ("{'a': 1}.a", None),
        ("unbound_name", None),
    ],
)
def test_infer_type(source: str, want: frozenset | None) -> None:
    assert infer_type(source, ENV) == want
