"""The closures of `expr_python` against the cel package they stand in for.

Three ways: hand-picked expressions on the corners of CEL's semantics; a few thousand generated ones;
and every evaluation of every built-in game over a few episodes. Each compares the closure's result
with the package's on the same scope, value and type (an int is not a double, nor a bool), and the
budget units each charged; where the package fails, the closure must have given up (the package
then reports the error, as before)."""

from __future__ import annotations

import random
from typing import Any

import pytest

import rsi_env
from rsi_env import expr as expr_mod
from rsi_env.agents.baseline import RandomAgent
from rsi_env.catalog import game_files
from rsi_env.expr import Expr, Scope, _fingerprint, normalize, select_functions
from rsi_env.expr_python import NOT_CONSTANT, GiveUp, compile_closure, constant_of

VALUES: dict[str, Any] = {
    "i": 7, "j": -3, "z": 0, "big": 2**62, "f": 2.5, "g": -0.5, "one": 1.0, "t": True, "no": False,
    "s": "abc", "u": "héllo", "e": "", "nil": None,
    "xs": [3, 1, 2], "ss": ["b", "a", "c"], "mixed": [1, "a", True, None, 1.0], "nested": [[1, 2], [3]],
    "m": {"a": 1, "b": 2}, "mm": {"x": {"y": [1, 2]}, "w": {}}, "orders": [
        {"unit": "a", "order": "move", "to": "b"}, {"unit": "b", "order": "hold"}],
}  # fmt: skip

CORNERS = [
    # arithmetic: 64-bit ints, truncating division, no mixing
    "i + j",
    "i - j * 2",
    "i / 2",
    "j / 2",
    "j % 2",
    "i % -2",
    "i / z",
    "i % z",
    "big * 2",
    "big + big",
    "-big - big - big",
    "-(-9223372036854775807 - 1)",
    "-9223372036854775808",
    "f * 2.0",
    "f / 0.0",
    "i + f",
    "f + 1",
    "s + s",
    "s + i",
    "xs + xs",
    "xs + ss",
    "m + m",
    "-f",
    "-s",
    "0x1F + 1",
    "1e3",
    # equality and order across kinds
    "i == 7",
    "one == 1",
    "1 == 1.0",
    "t == 1",
    "nil == 0",
    "nil == nil",
    "s == 'abc'",
    "xs == [3, 1, 2]",
    "[1] == [1.0]",
    "m == {'b': 2, 'a': 1}",
    "m == {'a': 1}",
    "mixed == mixed",
    "s < 'abd'",
    "i < f",
    "f <= 2.5",
    "t > no",
    "s < i",
    "xs < xs",
    "u > s",
    "nil < 1",
    "i >= 7",
    "i != 7.0",
    # membership, indexing, fields
    "1 in xs",
    "'a' in ss",
    "'a' in m",
    "1.0 in xs",
    "true in mixed",
    "1 in mixed",
    "i in m",
    "xs[0]",
    "xs[3]",
    "xs[-1]",
    "m.a",
    "m['b']",
    "m.c",
    "m[1]",
    "mm.x.y[1]",
    "has(m.a)",
    "has(m.c)",
    "has(mm.x.y)",
    "has(xs.a)",
    "orders[0].to",
    "has(orders[1].to)",
    "s[0]",
    # logic: short circuits, errors absorbed or not
    "t && no",
    "no && m.c == 1",
    "m.c == 1 && no",
    "t || m.c == 1",
    "m.c == 1 || t",
    "i && t",
    "!t",
    "!i",
    "t ? i : s",
    "i ? 1 : 2",
    "no ? m.c : 3",
    # functions and methods
    "size(xs)",
    "size(m)",
    "size(s)",
    "size(u)",
    "xs.size()",
    "size(i)",
    "int(f)",
    "int(-2.7)",
    "int('12')",
    "int(' 12')",
    "int('-4')",
    "double(i)",
    "string(i)",
    "string(f)",
    "string(t)",
    "string(100.0)",
    "s.startsWith('ab')",
    "s.endsWith('c')",
    "s.contains('b')",
    "xs.contains(1)",
    "ss.join('-')",
    "keys(m)",
    "values(m)",
    "tally(ss + ss)",
    "argmax(m)",
    "count(xs, 1)",
    "max(xs)",
    "min(i, j)",
    "lists.range(3)",
    "nested.flatten()",
    "ss.distinct()",
    "index(ss, 'c')",
    "clamp(i, 0, 5)",
    "math.greatest(xs)",
    "fmt(m)",
    "put(m, 'c', 3)",
    "dot(m, m)",
    "undefined_fn(1)",
    "nope + 1",
    # comprehensions, over lists and maps
    "xs.map(x, x * 2)",
    "xs.filter(x, x > 1)",
    "xs.all(x, x > 0)",
    "xs.exists(x, x > 2)",
    "xs.exists_one(x, x > 1)",
    "m.map(k, k)",
    "m.filter(k, m[k] > 1)",
    "xs.map(x, x > 1, x * 10)",
    "xs.all(x, x / (x - 1) > 0)",
    "xs.exists(x, x == 3 || x / 0 == 1)",
    "[].map(x, x)",
    "[].all(x, x)",
    "xs.map(x, xs.map(x, x))",
    "orders.all(o, size(orders.filter(q, q.unit == o.unit)) == 1)",
    "orders.map(o, o.unit + (has(o.to) ? ' ' + o.to : ''))",
    "ss.filter(x, x)",
    "i.map(x, x)",
    # literals
    "{'a': [1, {'b': null}]}",
    "{1: 'x'}",
    "{'a': 1, 'a': 2}",
    "'it\\'s'",
    '"tab\\there"',
    "r'raw'",
    "'''triple'''",
    "b'bytes'",
    "1u",
    "dyn(1)",
    "[1, 2,]",
    "{'a': 1,}",
    "['a', ['b', 'c'], {'k': [1, 2.5, null, true]}]",
    "[[1], [1]][0] == [1]",
    "{'a': [1], 'b': {'c': 'd'}}.b.c",
    "{'a': 1, 'b': 1.0}",
    # a one-element list mapped and indexed at 0: how lets and the budget's hooks bind a value
    "[i + 1].map(x, x * 2)[0]",
    "[1].map(x, [x + 1].map(x, x * 2)[0] + x)[0]",
    "[xs].map(x, x.map(y, y + i))[0]",
    "[[1, 2]].map(x, x + x)[0]",
    "[i].map(x, m.c)[0]",
    "[i].map(x, x)[1]",
    "[i].map(x, x)[-1]",
    "[i].map(x, x)",
    "[i].map(x, x > 1, x)[0]",
    "[i].filter(x, x > 100)[0]",
    "[i, j].map(x, x)[0]",
    "[[i].map(x, x + 1)[0]].map(y, y * y)[0]",
    # constants folded at compile time, and the variables a literal binds
    "1 + 2 * 3 - -4",
    "[1].map(x, [2, 3].map(x, x * 10))[0]",
    "[1].map(x, [2, 3].map(y, x * y))[0]",
    "[['a', 'b']].map(h, [['c']].map(b, [h + b + ['d']].map(p, size(p))[0])[0])[0]",
    "[{'a': [1, 2]}].map(m, m.a[1] + i)[0]",
    "[1].map(x, x / 0)[0]",
    "[[1, 2]].map(x, x[5])[0]",
    "['a'].map(x, x + 1)[0]",
    "[1].map(x, [x].all(y, y > 0))[0]",
    "9223372036854775807 + 1",
    "'a' in ['a', 'b'] && !(1 > 2)",
]


def _scope(values: dict[str, Any] | None = None) -> Scope:
    names = {"tally", "keys", "values", "argmax", "count", "max", "min", "range", "flatten", "distinct",
             "index", "clamp", "greatest", "fmt", "put", "dot", "join", "contains"}  # fmt: skip
    return Scope(dict(VALUES if values is None else values), select_functions(names))


def _both(e: Expr, scope: Scope) -> tuple[Any, Any, int, int, bool]:
    """The package's result and the closure's (each `("ok", fingerprint)` or `("error",)`), the
    budget units each charged, and whether the closure ran to a result."""
    program = e._program(scope)
    plan = e._plan_of(program)
    budget = scope.budget
    start = budget.tick_used
    budget.start_eval(e.let_count)
    try:
        scope.flush(plan.reads)
        want: Any = ("ok", _fingerprint(normalize(program.execute(scope.context))))
    except Exception:  # any failure of the package is an error to match
        want = ("error",)
    package_units = budget.tick_used - start
    budget.tick_used = start
    budget.start_eval(e.let_count)
    ran = False
    got: Any = ("gave up",)
    if plan.fast is not None:
        try:
            got = ("ok", _fingerprint(normalize(plan.fast(scope.closure_values(plan.names)))))
            ran = True
        except Exception:  # the closure gave up
            got = ("gave up",)
    closure_units = budget.tick_used - start
    budget.tick_used = start
    return want, got, package_units, closure_units, ran


def _agrees(want: Any, got: Any, package_units: int, closure_units: int, ran: bool) -> bool:
    if not ran:
        return True  # the package evaluates: nothing to compare
    if package_units != closure_units:
        return False
    # A comprehension over a map walks it in the package's hash order, which changes from process to
    # process (specs sort, `keys()`, where order matters): a list built so may come in another order.
    return bool(want == got or (want[0] == got[0] == "ok" and _unordered(want[1]) == _unordered(got[1])))


def _unordered(fingerprint: Any) -> Any:
    if fingerprint[0] is list:
        return (list, tuple(sorted(fingerprint[1], key=repr)))
    return fingerprint


@pytest.mark.parametrize("source", CORNERS)
def test_corner_cases_match_the_package(source: str) -> None:
    try:
        e = Expr(source)
    except expr_mod.ExprError:
        pytest.skip("the package does not compile it")
    both = _both(e, _scope())
    assert _agrees(*both), f"{source}: package {both[0]} ({both[2]}), closure {both[1]} ({both[3]})"


def test_the_closures_run_most_corner_cases_and_give_up_on_every_failure() -> None:
    ran = failed = 0
    for source in CORNERS:
        try:
            e = Expr(source)
        except expr_mod.ExprError:
            continue
        want, got, *_units, did = _both(e, _scope())
        ran += did
        if want == ("error",):
            failed += 1
            assert not did, f"{source}: the package fails, the closure gave {got}"
    assert failed >= 30 and ran >= 100, (failed, ran)


def test_a_literal_is_built_once_and_every_result_is_a_copy() -> None:
    """A list or map of literals is built at compile time and shared by the closure; what an
    evaluation gives out is a copy, so changing one result changes neither the next nor the literal."""
    scope = _scope()
    e = Expr("['a', ['b'], {'c': [1]}]")
    assert e._plan_of(e._program(scope)).constant == ["a", ["b"], {"c": [1]}]
    first = e(scope)
    first[1].append("x")
    first[2]["c"].append(2)
    assert e(scope) == ["a", ["b"], {"c": [1]}]
    assert e._plan_of(e._program(scope)).constant == ["a", ["b"], {"c": [1]}]
    # Not constants: a repeated key (the package's to report), a variable inside.
    assert constant_of(compile_closure("{'a': 1, 'a': 2}", frozenset())) is NOT_CONSTANT
    assert constant_of(compile_closure("[1, i]", frozenset())) is NOT_CONSTANT


def test_operations_on_constants_are_folded_at_compile_time() -> None:
    """What a program computes from literals alone, through the lets that bind them, is computed once
    when it compiles (diplomacy's `provinces`, `homes + borders + ["heart"]`); what fails stays to
    fail at run time, where the package reports it."""
    lets = "[['a', 'b']].map(h, [['c']].map(b, [h + b + ['d']].map(p, p)[0])[0])[0]"
    for source, value in (("1 + 2 * 3", 7), (lets, ["a", "b", "c", "d"]), ("size('ab') < 3", True)):
        assert constant_of(compile_closure(source, frozenset())) == value, source
    for source in ("[1, 2][5]", "'a' + 1", "9223372036854775807 + 1", "[1].map(x, [x].map(x, x + y)[0])[0]",
                   "[2, 3].map(x, x * 10)", "keys({'a': 1})"):  # fmt: skip
        assert constant_of(compile_closure(source, frozenset())) is NOT_CONSTANT, source


def test_a_let_binds_without_building_lists() -> None:
    """`[e].map(x, body)[0]` compiles to a let (no list built, `x` restored after), and anything
    else shaped like it stays the map it says."""
    let = compile_closure("[i + 1].map(x, x * 2)[0]", frozenset())
    assert let is not None and let.__name__ == "let"
    values: dict[str, Any] = {"i": 3, "x": "outer"}
    assert let(values) == 8 and values["x"] == "outer"
    for source in ("[i].map(x, x)[1]", "[i].map(x, x)", "[i, j].map(x, x)[0]", "[i].map(x, x > 1, x)[0]"):
        closure = compile_closure(source, frozenset())
        assert closure is not None and closure.__name__ != "let", source


def test_what_the_parser_does_not_know_is_left_to_the_package() -> None:
    for source in ("x.matches('a')", "type(1)", "a.b{c: 1}", ".x", "1u", "r'x'", "a ? b ? c : d : e"):
        assert compile_closure(source, frozenset()) is None, source
    assert compile_closure("randint(1, 2) + 1", frozenset({"randint"})) is None


def _random_expr(rng: random.Random, depth: int) -> str:
    leaves = ["i", "j", "z", "f", "g", "t", "no", "s", "u", "nil", "xs", "ss", "m", "mm", "mixed", "orders",
              "1", "2", "0", "-1", "2.0", "0.5", "'a'", "'abc'", "true", "false", "null", "[]", "{}",
              "[1, 2]", "['a', 'b']", "{'a': 1}", "big"]  # fmt: skip
    if depth <= 0 or rng.random() < 0.25:
        return rng.choice(leaves)
    a = _random_expr(rng, depth - 1)
    b = _random_expr(rng, depth - 1)
    c = _random_expr(rng, depth - 1)
    forms = [
        lambda: f"({a} {rng.choice(['+', '-', '*', '/', '%'])} {b})",
        lambda: f"({a} {rng.choice(['==', '!=', '<', '<=', '>', '>=', 'in'])} {b})",
        lambda: f"({a} {rng.choice(['&&', '||'])} {b})",
        lambda: f"({a} ? {b} : {c})",
        lambda: f"{rng.choice(['!', '-'])}{a}",
        lambda: f"{a}[{b}]",
        lambda: f"{a}.{rng.choice(['a', 'b', 'x', 'unit', 'to'])}",
        lambda: f"has({a}.{rng.choice(['a', 'x', 'to'])})",
        lambda: f"{rng.choice(['size', 'int', 'double', 'string', 'keys', 'max'])}({a})",
        lambda: f"[{a}, {b}]",
        lambda: f"{{{a}: {b}}}",
    ]
    form = rng.randrange(16)  # the rest: a comprehension
    if form < len(forms):
        return forms[form]()
    var = rng.choice(["x", "y"])
    body = _random_expr(rng, depth - 1).replace("i", var) if rng.random() < 0.5 else b
    macro = rng.choice(["all", "exists", "exists_one", "map", "filter"])
    return f"{a}.{macro}({var}, {body})"


def test_generated_expressions_match_the_package() -> None:
    rng = random.Random(20261202)
    compared = ran = 0
    bad: list[str] = []
    for _ in range(3000):
        source = _random_expr(rng, 4)
        try:
            e = Expr(source)
        except expr_mod.ExprError:
            continue
        compared += 1
        both = _both(e, _scope())
        ran += both[4]
        if not _agrees(*both):
            bad.append(f"{source}: package {both[0]} ({both[2]}), closure {both[1]} ({both[3]})")
    assert not bad, "\n".join(bad[:10])
    assert compared > 2000 and ran > 600, (compared, ran)


def test_every_game_evaluates_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every evaluation of three episodes per game (random legal moves and random text), compared
    before the engine's own evaluation runs; most must take the closure."""
    seen: list[tuple[str, bool]] = []
    bad: list[str] = []
    original = Expr.__call__

    def audited(self: Expr, scope: Scope) -> Any:
        memo, scope.memo = scope.memo, False
        try:
            both = _both(self, scope)
        finally:
            scope.memo = memo
        seen.append((self.source, both[4]))
        if not _agrees(*both):
            bad.append(f"{self.short()}: package {both[0]} ({both[2]}), closure {both[1]} ({both[3]})")
        return original(self, scope)

    monkeypatch.setattr(Expr, "__call__", audited)
    for game in game_files():
        for legal in (True, False):
            env = rsi_env.make(game)
            agents: dict[str, RandomAgent] = {}
            for seed in range(2 if legal else 1):
                env.reset(seed=seed)
                for agent in env.agent_iter():
                    _obs, _r, term, trunc, info = env.last()
                    if term or trunc:
                        action = None
                    elif legal:
                        action = agents.setdefault(agent, RandomAgent(len(agents))).choose(info)
                    else:
                        action = env.action_space(agent).sample()
                    env.step(action)
    assert not bad, "\n".join(bad[:10])
    fast = sum(ran for _src, ran in seen)
    assert len(seen) > 5000 and fast / len(seen) > 0.95, (len(seen), fast)


def test_a_value_of_a_kind_it_does_not_handle_gives_up() -> None:
    f = compile_closure("x + 1", frozenset())
    assert f is not None
    with pytest.raises(GiveUp):
        f({"x": (1,)})
    assert f({"x": 1}) == 2
