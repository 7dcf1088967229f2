"""The evaluation budget of spec expressions: CEL runs under limits on what it builds and how long it works.

Specs are untrusted (models write them), and one line of CEL can ask for a list of 50 million items,
a comprehension nested 10,000 x 10,000 deep, or a string that doubles at every tick. The
`common-expression-language` package exposes no cost estimate or evaluation limit of its own (its
Rust core evaluates a program in one call that Python cannot interrupt), so the budget is a checked
wrapper around it, applied where Python gets control:

- before an expression runs, its source is at most `max_source` characters, and every comprehension
  (`all`, `exists`, `exists_one`, `map`, `filter`) is rewritten to pass the list it walks through a
  hook (`_rsi_walk(xs).map(x, ...)`), which checks the list's length and charges the work it stands
  for. `map` and `filter` cost the square of the length: cel-rust copies the list built so far at
  every step (measured: 1,000 items 0.13 s, 10,000 items 16 s); what they built is measured and
  charged when they end (`done`), value by value, as it was built;
- every Python function a spec calls (`lists.range`, `split`, `join`, `replace`, the helpers, the
  seeded random functions) is wrapped: arguments that would build something over the limits are
  refused before the call, and the result is measured and charged;
- every value an evaluation gives back is measured (list and map lengths, string lengths, nesting
  depth, nodes in all), and so is every value an effect writes;
- units are charged per evaluation and per tick (`Budget.start_tick`; setup is a tick too), so a
  `for_each` over a long list, or a `where` that is never true over a costly `init`, runs out.

One unit is a fraction of a microsecond of work here (20M units of a busy spec: ~5 s of CPU).
Exceeding a limit raises `BudgetExceeded` (from an evaluation: `expr.OverBudget`, an `ExprError`)
with the number and the limit: `builds a list of 100,000,000 items; the limit is 1,000`.
The spec checks report it as a problem of the field; the engine ends the game as `game_error`.
What the wrapper cannot see (work inside one native step) is bounded by these limits on its inputs,
and validation runs in a child process with CPU and memory limits besides (`spec_check`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True)
class Limits:
    max_source: int = 4_000  # characters of one expression (the longest built-in one has ~1,300)
    max_items: int = 1_000  # items of one list or map an expression builds, walks or writes
    max_string: int = 10_000  # characters of one string
    max_depth: int = 16  # nesting of lists and maps in one value
    max_nodes: int = 20_000  # items of one value, nested ones included
    eval_units: int = 100_000  # the work of one evaluation (~0.1 s; the built-in games need < 300)
    tick_units: int = 1_000_000  # the work of one tick, or of setup (~1 s; the built-in games < 1,000)


LIMITS = Limits()
# Units (~1 µs here) of one item walked by a comprehension, and of copying one accumulated node.
WALK_UNITS = 3
COPY_UNITS = 0.5
# Units of binding one let (`compiled._measured_binding`): what its one-element comprehension was
# charged when it was instrumented too, a walk of one item (3 + 1) and its one item (0 + 1).
LET_UNITS = 5
# Hints and the scripted policy run on every observation: a tighter budget per evaluation.
VIEW_LIMITS = Limits(eval_units=20_000, tick_units=100_000)


class Budget:
    """The units one game (or one view) has used: in the evaluation running now, and in this tick.

    `tripped` keeps the error a hook raised inside CEL: the package reports a failed Python callback
    as a RuntimeError with its own wording, and the caller re-raises this one instead."""

    __slots__ = ("eval_used", "limits", "tick_used", "tripped")

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.limits = limits
        self.eval_used = 0
        self.tick_used = 0
        self.tripped: BudgetExceeded | None = None

    def start_tick(self) -> None:
        self.tick_used = 0

    def start_eval(self, lets: int = 0) -> None:
        """A new evaluation, of an expression binding `lets` named expressions (`compiled`)."""
        self.tripped = None
        if not lets and self.tick_used + 3 <= self.limits.tick_units and 3 <= self.limits.eval_units:
            self.eval_used = 3  # `charge(2)`, without the call (every evaluation starts here)
            self.tick_used += 3
            return
        self.eval_used = 0
        self.charge(2)
        if lets:
            self.charge(LET_UNITS * lets - 1)

    def charge(self, units: float) -> None:
        units = int(units) + 1
        self.eval_used += units
        self.tick_used += units
        if self.eval_used > self.limits.eval_units:
            self.trip(
                f"one evaluation does more than {self.limits.eval_units:,} units of work "
                "(a comprehension over too long a list, or nested too deep)"
            )
        if self.tick_used > self.limits.tick_units:
            self.trip(
                f"the expressions of one tick do more than {self.limits.tick_units:,} units of work "
                "(too many evaluations, or too costly ones)"
            )

    def replay(self, units: int) -> bool:
        """Charge this tick `units` of work that a result kept from before cost when it was computed,
        unless that goes over the tick's limit: then False, and the caller computes it again (so
        the work it does, and where it stops, are what they would have been)."""
        if self.tick_used + units > self.limits.tick_units:
            return False
        self.tick_used += units
        return True

    def replay_eval(self, units: int) -> bool:
        """The evaluation started (`start_eval`) gives a result kept from before, which cost `units`
        once started: charged as it was, unless that goes over the tick's limit (False: the caller
        evaluates it again, and stops where it would have)."""
        if not self.replay(units):
            return False
        self.eval_used += units
        return True

    def trip(self, message: str) -> None:
        self.tripped = BudgetExceeded(message)
        raise self.tripped

    # -- hooks called from inside CEL (see `instrument`) -------------------------------------------------

    # Each hook gives back true, never the value it was passed: a value a Python function returns is
    # converted back to CEL (~2.5 us a string in cel 0.10), and the comprehension reads its own copy
    # (`instrument` binds it).

    # `walk` and `build` are given the size of what is walked, not the list or map itself: that
    # would be converted to Python at every comprehension (a map of orders: ~40 µs).

    def walk(self, size: Any) -> bool:
        """Before `all`/`exists`/`exists_one` over `size` items: linear work."""
        self.charge(WALK_UNITS * self._length(size))
        return True

    def build(self, size: Any) -> bool:
        """Before `map`/`filter` over `size` items: linear work (what it builds is charged by `done`)."""
        self.charge(WALK_UNITS * self._length(size))
        return True

    def done(self, result: Any) -> bool:
        """After a `map`/`filter`, what it built: cel-rust copied everything accumulated so far at
        every step, so each value added cost what was already there, and the whole the square of it.
        Charged here, value by value in the order they were added, and not by a hook called at every
        step (a Python call per item, which cost diplomacy's nested filters ~2 µs an item): the same
        units, the same limits on each value; the work they stand for is bounded before it runs by
        the length checked at `build` (a `map` of the most items allowed copies for ~0.13 s)."""
        built = 0
        for value in result if isinstance(result, list) else ():
            try:
                size = measure(value, self.limits, "a comprehension builds")
            except BudgetExceeded as exc:
                self.tripped = exc
                raise
            self.charge(COPY_UNITS * built)
            built += size
        return True

    def _length(self, size: Any) -> int:
        n = size if type(size) is int else 0
        if n > self.limits.max_items:
            self.trip(f"walks a list of {n:,} items; the limit is {self.limits.max_items:,}")
        return n

    def guard(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` (a function specs call, registered as `name`) with its arguments and result checked."""
        precheck = _PRECHECKS.get(name.rsplit(".", 1)[-1] if name != "lists.range" else name)

        def guarded(*args: Any) -> Any:
            if precheck is not None:
                problem = precheck(self.limits, *args)
                if problem:
                    self.trip(f"{name}(...) {problem}")
            result = fn(*args)
            if type(result) is str and len(result) <= self.limits.max_string:
                self.charge(1 + len(result) // 100)  # what `measure` gives a string, without the call
                return result
            try:
                size = measure(result, self.limits, f"{name}(...) gives")
            except BudgetExceeded as exc:
                self.tripped = exc
                raise
            self.charge(size)
            return result

        guarded.__name__ = getattr(fn, "__name__", name)
        guarded.__doc__ = fn.__doc__
        return guarded

    def hooks(self) -> dict[str, Callable[..., Any]]:
        return {WALK: self.walk, BUILD: self.build, DONE: self.done}


class BudgetExceeded(Exception):
    """Over a limit of the budget; the message says which, with the number and the limit. (`expr`
    reports it from an evaluation as `OverBudget`, an `ExprError` naming the expression.)"""


# -- measuring values -------------------------------------------------------------------------------


def measure(value: Any, limits: Limits = LIMITS, what: str = "builds") -> int:
    """The size of `value` (nodes plus characters / 100), after checking it against `limits`; raises
    BudgetExceeded naming the first limit it breaks. A container nested deeper than the limit is
    refused before it is entered, so the walk never goes deeper than `limits.max_depth`."""
    if isinstance(value, str | bytes):
        return _string_size(value, limits, what)
    if not isinstance(value, list | dict):
        return 1
    return _container_size(value, 1, limits, what)


def _string_size(v: str | bytes, limits: Limits, what: str) -> int:
    if len(v) > limits.max_string:
        raise BudgetExceeded(f"{what} a string of {len(v):,} characters; the limit is {limits.max_string:,}")
    return 1 + len(v) // 100


def _container_size(v: list[Any] | dict[Any, Any], depth: int, limits: Limits, what: str) -> int:
    """`measure` of a list or map at `depth`. Recursive (bounded by the depth limit): every value an
    evaluation gives and every variable a write changes is measured, and the plain types checked by
    their exact type first make it ~2x faster than a walk with an explicit stack."""
    if len(v) > limits.max_items:
        kind = "list" if isinstance(v, list) else "map"
        raise BudgetExceeded(f"{what} a {kind} of {len(v):,} items; the limit is {limits.max_items:,}")
    if depth > limits.max_depth:
        raise BudgetExceeded(f"{what} a value nested {depth}+ deep; the limit is {limits.max_depth}")
    size = 1
    is_map = isinstance(v, dict)
    for x in v.values() if is_map else v:  # type: ignore[union-attr]
        t = type(x)
        if t is int or t is bool or t is float or x is None:
            size += 1
        elif t is str or t is bytes or isinstance(x, str | bytes):
            size += _string_size(x, limits, what)
        elif isinstance(x, list | dict):
            size += _container_size(x, depth + 1, limits, what)
        else:
            size += 1
    if is_map:
        for k in v:
            if isinstance(k, str):
                size += _string_size(k, limits, what)
    if size > limits.max_nodes:
        raise BudgetExceeded(
            f"{what} a value of more than {limits.max_nodes:,} items in all (nested ones counted)"
        )
    return size


# -- checks before a Python function runs ------------------------------------------------------------


def _int_arg(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _range(limits: Limits, n: Any = 0, *_: Any) -> str | None:
    k = _int_arg(n)
    if k is not None and k > limits.max_items:
        return f"builds a list of {k:,} items; the limit is {limits.max_items:,}"
    return None


def _split(limits: Limits, total: Any = 0, parts: Any = 0, *_: Any) -> str | None:
    k = _int_arg(parts)
    if k is not None and k > limits.max_items:
        return f"builds a list of {k:,} items; the limit is {limits.max_items:,}"
    return None


def _sample(limits: Limits, items: Any = None, k: Any = 0, *_: Any) -> str | None:
    return _range(limits, k)


def _join(limits: Limits, items: Any = None, sep: Any = "", *_: Any) -> str | None:
    if isinstance(items, list):
        n = sum(len(x) if isinstance(x, str) else 20 for x in items) + len(str(sep)) * len(items)
        if n > limits.max_string:
            return f"builds a string of about {n:,} characters; the limit is {limits.max_string:,}"
    return None


def _replace(limits: Limits, s: Any = "", old: Any = "", new: Any = "", *_: Any) -> str | None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        hits = s.count(old) if old else len(s) + 1
        n = len(s) + hits * (len(new) - len(old))
        if n > limits.max_string:
            return f"builds a string of {n:,} characters; the limit is {limits.max_string:,}"
    return None


_PRECHECKS: dict[str, Callable[..., str | None]] = {
    "lists.range": _range,
    "split": _split,
    "sample": _sample,
    "join": _join,
    "replace": _replace,
}


# -- rewriting comprehensions -----------------------------------------------------------------------

# Hook names: not names a spec can declare (those start with a letter).
WALK, BUILD, DONE = "_rsi_walk", "_rsi_build", "_rsi_done"
# The names `instrument` binds: the list walked, what `map`/`filter` gave.
_L, _R = "_rsi_l", "_rsi_r"
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>[rRbB]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'))
    | (?P<number>0[xX][0-9a-fA-F]+[uU]?|\d*\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+[uU]?)
    | (?P<name>[A-Za-z_]\w*)
    | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,()\[\]{}])
    )""",
    re.VERBOSE,
)
_CLOSE = {")": "(", "]": "[", "}": "{"}


class Token(NamedTuple):
    """One CEL token: its kind (string, number, name, op), its text, where the text starts, where the
    token (with the blanks before it) ends. The one lexer of the package's expression passes: the
    budget's rewriting, the closures, the type pass and the error explanations."""

    kind: str
    text: str
    start: int
    end: int


def tokens(source: str) -> list[Token] | None:
    """CEL tokens of `source` (strings whole), or None for what this lexer does not know (a comment)."""
    out: list[Token] = []
    pos, end = 0, len(source.rstrip())
    while pos < end:
        m = _TOKEN.match(source, pos)
        if m is None or m.lastgroup is None:
            return None  # e.g. a comment: CEL's own parser decides whether it compiles
        out.append(Token(m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup), m.end()))
        pos = m.end()
    return out


def _matching_open(toks: list[Token], j: int) -> int | None:
    depth = 0
    for i in range(j, -1, -1):
        t = toks[i].text if toks[i].kind == "op" else ""
        if t in _CLOSE:
            depth += 1
        elif t in ("(", "[", "{"):
            depth -= 1
            if depth == 0:
                return i
    return None


_KEYWORDS = frozenset({"in", "true", "false", "null"})


def _operand_end(t: Token) -> bool:
    """Whether `t` can end an operand (so a `[` or `(` after it indexes or calls it)."""
    if t.kind == "name":
        return t.text not in _KEYWORDS
    return t.kind in ("string", "number") or (t.kind == "op" and t.text in _CLOSE)


def _operand_start(toks: list[Token], j: int) -> int | None:
    """The index of the first token of the postfix expression that ends at token `j` (the list a
    macro is called on: `state.l`, `lists.range(n)`, `P[p].items`, `[1, 2]`, `(a + b)`)."""
    while True:
        t = toks[j]
        if t.kind == "op" and t.text in _CLOSE:
            k = _matching_open(toks, j)
            if k is None:
                return None
            before = toks[k - 1] if k > 0 else None
            if t.text == "]" and before is not None and _operand_end(before):
                j = k - 1  # an index: `x[...]`, the operand goes on before it
                continue
            if (
                t.text in ")}"
                and before is not None
                and before.kind == "name"
                and before.text not in _KEYWORDS
            ):
                k -= 1  # a call `f(...)` (or a message literal `T{...}`)
            j = k
        elif t.kind not in ("name", "string", "number") or t.text == "in":
            return None
        if j >= 2 and toks[j - 1].text == "." and toks[j - 1].kind == "op" and _operand_end(toks[j - 2]):
            j -= 2  # a member: `a.b`, `a.f(x)`
            continue
        return j


def _arguments(toks: list[Token], open_: int) -> tuple[list[tuple[int, int]], int] | None:
    """The top-level arguments of the call whose `(` is token `open_`, as (first, last) token
    indices, and the index of its `)`."""
    args: list[tuple[int, int]] = []
    depth, first = 0, open_ + 1
    for i in range(open_ + 1, len(toks)):
        t = toks[i].text if toks[i].kind == "op" else ""
        if t in ("(", "[", "{"):
            depth += 1
        elif t in _CLOSE:
            if depth == 0:
                if i > first:
                    args.append((first, i - 1))
                return args, i
            depth -= 1
        elif t == "," and depth == 0:
            args.append((first, i - 1))
            first = i + 1
    return None


def _is_path(toks: list[Token], first: int, last: int) -> bool:
    """Whether tokens `first`..`last` are a name and its fields or constant keys (`a.b`, `m["k"]`,
    `m[x]`): no call, no operator, so reading it again gives the same value at the cost of a lookup."""
    if toks[first].kind != "name" or toks[first].text in _KEYWORDS:
        return False
    j = first + 1
    while j <= last:
        if toks[j].text == "." and toks[j].kind == "op" and j + 1 <= last and toks[j + 1].kind == "name":
            j += 2
        elif (
            toks[j].text == "["
            and j + 2 <= last
            and toks[j + 1].kind in ("name", "string", "number")
            and toks[j + 1].text not in _KEYWORDS
            and toks[j + 2].text == "]"
        ):
            j += 3
        else:
            return False
    return True


def instrument(source: str) -> str | None:
    """`source` with every comprehension reporting to the budget, or None when it cannot be rewritten
    (the caller refuses the expression):

        xs.exists(x, p)  ->  [xs].exists(_rsi_l, _rsi_walk(size(_rsi_l)) ? _rsi_l.exists(x, p) : false)
        xs.map(x, f)     ->  [[xs].map(_rsi_l, _rsi_build(size(_rsi_l)) ? _rsi_l.map(x, f) : [])[0]]
                                 .map(_rsi_r, _rsi_done(_rsi_r) ? _rsi_r : _rsi_r)[0]
        xs.map(x, p, f), xs.filter(x, p)  ->  the same around `_rsi_l.map(x, p, f)`, `_rsi_l.filter(x, p)`

    Each hook is called where it was when it passed its value through (`_rsi_walk(xs).exists(...)`,
    `_rsi_done(_rsi_build(xs).map(x, f))`), `walk` and `build` given the size of `xs`; each gives
    back true instead, and the value it saw is bound by a one-element comprehension, which the
    budget does not measure: converting each value back to CEL cost more than the comprehension
    (diplomacy's hints, codenames' checks). A failing hook fails the condition of its `?:`, so its
    error stops the evaluation as before.
    """
    toks = tokens(source)
    if toks is None:
        return None
    # (start, end, prefix, suffix, size of the macro call it belongs to, rank among the spans of one
    # macro call with the same extent: the higher, the further out) character spans to wrap
    spans: list[tuple[int, int, str, str, int, int]] = []
    for i, t in enumerate(toks):
        if not (
            t.kind == "name"
            and t.text in _MACROS
            and i >= 2
            and toks[i - 1].text == "."
            and i + 1 < len(toks)
            and toks[i + 1].text == "("
        ):
            continue
        first = _operand_start(toks, i - 2)
        call = _arguments(toks, i + 1)
        if first is None or call is None:
            return None
        args, close = call
        if len(args) < 2 or args[0][0] != args[0][1] or toks[args[0][0]].kind != "name":
            return None  # not a comprehension CEL accepts: leave the verdict to its parser
        start, target_end, end = toks[first].start, toks[i - 2].end, toks[close].end
        size = end - start
        if _is_path(toks, first, i - 2):
            # A variable or a field of one (`state.ord`, `o.to`): read twice, not bound by a
            # one-element comprehension, which cost more (each is a list built and walked).
            target = source[start:target_end]
            if t.text in ("all", "exists", "exists_one"):
                spans.append((start, end, f"({WALK}(size({target})) ? ", " : false)", size, 0))
            else:
                done = f" : []].map({_R}, {DONE}({_R}) ? {_R} : {_R})[0]"
                spans.append((start, end, f"[{BUILD}(size({target})) ? ", done, size, 0))
            continue
        if t.text in ("all", "exists", "exists_one"):
            spans.append((start, target_end, "[", f"].{t.text}({_L}, {WALK}(size({_L})) ? {_L}", size, 0))
            spans.append((start, end, "", " : false)", size, 0))
            continue
        spans.append((start, end, "[", f"].map({_R}, {DONE}({_R}) ? {_R} : {_R})[0]", size, 1))
        spans.append((start, target_end, "[", f"].map({_L}, {BUILD}(size({_L})) ? {_L}", size, 0))
        spans.append((start, end, "", " : [])[0]", size, 0))
    if not spans:
        return source
    # Insert from the end of the text (so a later insert at one position lands before an earlier one).
    # At one position closings come before openings; of two spans closing there the one further out
    # (starting first, else of the larger macro call, else of the higher rank) closes last, and of two
    # opening there the one further out (ending last, then the same) opens first.
    inserts: list[tuple[int, int, int, int, int, str]] = []
    for start, end, prefix, suffix, size, rank in spans:
        inserts.append((end, 0, -start, size, rank, suffix))
        inserts.append((start, 1, -end, -size, -rank, prefix))
    out = source
    for pos, *_, text in sorted(inserts, reverse=True):
        out = out[:pos] + text + out[pos:]
    return out
