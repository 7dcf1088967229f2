"""Why CEL: what a spec expression costs with `common-expression-language`.

Measures, for a typical validity check over a game state: compile time, evaluation in a reused
context, evaluation with a context rebuilt from a dict each time, and the cost of re-binding a
variable (what the engine pays per state change). For scale it also times Python's own `eval`
of precompiled code, which the project never uses on spec text (it is not a sandbox), and
`simpleeval` / `celpy` when installed; and the same check as the closure `expr_python` builds
(the engine's fast path: it reads the Python values in place, with no conversion or copy).

    python scripts/bench_expr.py
"""

from __future__ import annotations

import timeit

import cel

EXPR = "args.books <= state.pool.books && dot(state.pool, P[me].values) == 10 && size(players) == 2"
STATE = {
    "state": {"pool": {"books": 2, "hats": 1, "balls": 3}, "offer": None, "turn": 3},
    "P": {
        "player_0": {"values": {"books": 2, "hats": 3, "balls": 1}},
        "player_1": {"values": {"books": 1, "hats": 2, "balls": 2}},
    },
    "players": ["player_0", "player_1"],
    "me": "player_0",
    "args": {"books": 1},
}


def dot(a: dict, b: dict) -> int:
    return sum(a[k] * b[k] for k in a)


def per_call_us(fn, n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def main() -> None:
    rows = []
    rows.append(("cel: compile", per_call_us(lambda: cel.compile(EXPR), 2000)))
    prog = cel.compile(EXPR)
    ctx = cel.Context(STATE)
    ctx.add_function("dot", dot)
    assert prog.execute(ctx) is True
    rows.append(("cel: evaluate, reused context", per_call_us(lambda: prog.execute(ctx), 20000)))

    def rebind() -> None:
        ctx.add_variable("args", {"books": 1})
        prog.execute(ctx)

    rows.append(("cel: re-bind `args` + evaluate", per_call_us(rebind, 5000)))

    def fresh() -> None:
        c = cel.Context(STATE)
        c.add_function("dot", dot)
        prog.execute(c)

    rows.append(("cel: new context from dict + evaluate", per_call_us(fresh, 2000)))
    from rsi_env.expr_python import FUNCTIONS, compile_closure

    closure = compile_closure(EXPR, frozenset())
    assert closure is not None
    values = {**STATE, FUNCTIONS: {"dot": dot}}
    assert closure(values) is True
    rows.append(("closure (expr_python), same values", per_call_us(lambda: closure(dict(values)), 20000)))
    py = compile(
        "args['books'] <= state['pool']['books'] and dot(state['pool'], P[me]['values']) == 10", "<e>", "eval"
    )
    env = {**STATE, "dot": dot}
    rows.append(("python eval of compiled code (reference only)", per_call_us(lambda: eval(py, env), 20000)))
    try:
        from simpleeval import EvalWithCompoundTypes

        se = EvalWithCompoundTypes(names=STATE, functions={"dot": dot})
        src = "args['books'] <= state['pool']['books'] and dot(state['pool'], P[me]['values']) == 10"
        rows.append(("simpleeval (parse + evaluate)", per_call_us(lambda: se.eval(src), 2000)))
    except ImportError:
        rows.append(("simpleeval (not installed)", float("nan")))
    width = max(len(r[0]) for r in rows)
    rebound = dict(rows)["cel: re-bind `args` + evaluate"]
    for name, us in rows:
        print(f"{name:<{width}}  {us:8.2f} µs  {us / rebound:6.2f}x re-bind + evaluate")


if __name__ == "__main__":
    main()
