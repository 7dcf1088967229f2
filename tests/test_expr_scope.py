"""The scope holds the state field by field (`expr.Scope`): expressions read the same values and fail
the same way as with one `state` map, and a write re-converts only the field it wrote."""

from __future__ import annotations

import pytest

from rsi_env.expr import Expr, ExprError, Scope, split_state


def test_reads_of_state_fields_become_field_variables() -> None:
    assert split_state("state.a + state.b.c") == ("_rsi_state_a + _rsi_state_b.c", frozenset({"a", "b"}))
    assert split_state('x.state.a + size("state.a")') == ('x.state.a + size("state.a")', frozenset())
    assert split_state("n + 1") == ("n + 1", frozenset())


@pytest.mark.parametrize(
    "source",
    ["size(state)", 'state["a"]', "has(state.a)", "state.a(1)", "[1].map(state, state.a)", "state"],
)
def test_an_expression_reading_state_otherwise_reads_it_whole(source: str) -> None:
    assert split_state(source) is None


def test_field_reads_see_writes_and_whole_reads_see_them_too() -> None:
    state: dict = {"a": 1, "b": {"c": [1, 2]}}
    scope = Scope({"state": state, "n": 2})
    assert Expr("state.a + n")(scope) == 3
    state["a"] = 5
    scope.refresh("state", state, field="a")
    assert Expr("state.a + n")(scope) == 7
    assert Expr("size(state) + state.a")(scope) == 7  # whole: converted when read so
    state["b"]["c"].append(3)
    scope.refresh("state", state, field="b")
    assert Expr("size(state.b.c)")(scope) == 3
    assert Expr('state["b"].c')(scope) == [1, 2, 3]
    state["d"] = "new"
    scope.refresh("state", state)  # a field not known to be the one written: every field again
    assert Expr("state.d")(scope) == "new"
    assert Expr("has(state.d) && !has(state.e)")(scope) is True


def test_a_missing_field_fails_as_with_the_whole_map() -> None:
    split = Scope({"state": {"a": 1}})
    with pytest.raises(ExprError) as got:
        Expr("state.zz + 1")(split)
    whole = Scope({"state": {"a": 1}})
    with pytest.raises(ExprError) as want:
        Expr("size(state) > 0 && state.zz + 1 > 0")(whole)
    assert "zz" in str(got.value) and str(got.value).split(": ", 1)[1] == str(want.value).split(": ", 1)[1]


def test_reset_keeps_what_the_caller_kept_in_step() -> None:
    state: dict = {"a": 1}
    scope = Scope({"state": state, "turn": 0})
    scope.reset({"state": state, "turn": 1}, kept=("state",))
    assert Expr("state.a + turn")(scope) == 2
    other = {"a": 10}
    scope.reset({"state": other, "turn": 1}, kept=("state",))  # another object: converted
    assert Expr("state.a + turn")(scope) == 11


def test_a_kept_result_is_the_evaluation_s_own_and_charged_as_it() -> None:
    from rsi_env.expr import SeededRandom, seeded_rng, select_functions

    state: dict = {"words": ["Apple", "Pear"], "n": 1}
    check = Expr("!state.words.exists(w, w.lowerAscii().contains(args.word.lowerAscii()))")
    scope = Scope({"state": state, "turn": 0}, select_functions(check.functions), memo=True)
    scope.bind(args={"word": "app", "count": 1})
    assert check(scope) is False
    units = scope.budget.eval_used
    scope.bind(args={"word": "app", "count": 2})  # a field it does not read
    assert check(scope) is False and len(check.memo) == 1  # kept
    assert scope.budget.eval_used == units and scope.budget.tick_used == 2 * units
    scope.bind(args={"word": "kiwi", "count": 2})
    assert check(scope) is True and len(check.memo) == 2
    state["words"] = ["Kiwi"]
    scope.refresh("state", state, field="words")
    assert check(scope) is False  # the field written is a new input
    total = Expr("state.n + turn")
    assert total(scope) == 1
    scope.reset({"state": state, "turn": 1}, kept=("state",))
    assert total(scope) == 2
    draw = Expr("randint(1, 1000000)")
    rnd = Scope({}, select_functions(draw.functions, SeededRandom(seeded_rng(1))), memo=True)
    assert draw(rnd) != draw(rnd) or draw(rnd) != draw(rnd)  # drawn again each time
    assert not draw.memo
