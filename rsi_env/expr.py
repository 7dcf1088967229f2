"""Spec expressions: CEL (Common Expression Language) via the `common-expression-language` package.

Why CEL: it is a maintained, non-Turing-complete language (no loops or recursion beyond bounded
comprehensions, no I/O, no attribute access into Python objects), compiled once and evaluated in
microseconds (`scripts/bench_expr.py` prints the figures). Spec text and LLM text are never `eval`-ed
as Python.

This module is the runtime, the one place where spec expressions are compiled and evaluated:
- `Expr`: one compiled expression, with the names it reads (for the spec's static checks); it runs
  as a Python closure over the engine's own values where `expr_python` can build one and the
  evaluation stays on ground it handles, and through the package otherwise (the package's results,
  errors and budget units either way: `tests/test_expr_python.py`);
- the helper functions every spec may call (`tally`, `argmax`, `count`, ...), and the seeded random
  functions that only setup and effects may call (`randint`, `choice`, ...);
- `Scope`: a CEL context bound to one game state, converting as little of it as it can.

The static type of an expression, for the spec checks, is `expr_types.infer_type`.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import cel
import numpy as np
from cel import stdlib as cel_stdlib

from .expr_budget import LIMITS, Budget, BudgetExceeded, instrument, measure, tokens
from .expr_python import FUNCTIONS, NOT_CONSTANT, Closure, compile_closure, constant_of


class ExprError(Exception):
    """An expression failed to compile or to evaluate; the message names the expression."""


class OverBudget(ExprError):
    """An evaluation went over a limit of its budget (`expr_budget`): the spec asks for too much.
    The engine ends the game on it (`game_error`) instead of recording it and going on."""


# Comprehension macros bind a variable: `list.map(x, ...)`. Those names are local, not state names.
_BOUND_VAR = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
# `root.field` reads, used to check field names against the spec's declarations.
_FIELD_READ = re.compile(r"(?<![\w.])(state|args|my|moves)\s*\.\s*([A-Za-z_]\w*)")
_PLAYER_FIELD_READ = re.compile(r"(?<![\w.])P\s*\[[^\[\]]*\]\s*\.\s*([A-Za-z_]\w*)")
_NAMED_FUNCTION = re.compile(r"^[A-Za-z]\w*$")
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


class Expr:
    """A compiled CEL expression plus what it reads (for static checks).

    The program that runs is the source with its comprehensions instrumented for the evaluation
    budget (`expr_budget.instrument`); what it reads is taken from the source as written."""

    __slots__ = (
        "fields", "functions", "let_count", "memo", "plans", "player_fields", "program", "run", "run_split",
        "source", "state_fields", "variables",
    )  # fmt: skip

    def __init__(self, source: str | int | float | bool) -> None:
        # YAML turns `0` or `true` into numbers/bools; an expression is their CEL spelling.
        if isinstance(source, bool):
            source = "true" if source else "false"
        self.source = str(source)
        if len(self.source) > LIMITS.max_source:
            raise ExprError(
                f"an expression of {len(self.source):,} characters; the limit is {LIMITS.max_source:,}"
            )
        try:
            self.program = cel.compile(self.source)
            refs = self.program.references()
        except (ValueError, RuntimeError) as exc:
            raise ExprError(_first_line(str(exc))) from None
        self.run = self.program
        self.let_count = 0  # the lets its program binds (`compiled.LetExpr`), for the budget
        text = instrument(self.source)
        try:
            if text is None:
                raise ValueError(text)
            if text != self.source:
                self.run = cel.compile(text)
        except (ValueError, RuntimeError):
            raise ExprError(
                "its comprehensions cannot be measured: write them as `LIST.map(x, ...)`, with a name "
                "for the element"
            ) from None
        # The same, reading each `state.f` as its own variable (`Scope`), when it reads state only so.
        self.run_split: cel.Program | None = None
        self.state_fields: frozenset[str] = frozenset()
        split = split_state(self.source)
        if split is not None:
            self.run_split = compile_split(split[0], self.source, self.run)
            self.state_fields = split[1]
        bound = set(_BOUND_VAR.findall(self.source))
        self.variables: frozenset[str] = frozenset(set(refs["variables"]) - bound)
        # Operators show up as `_+_`, `!_`, `@in`...; only named functions matter for checks.
        self.functions: frozenset[str] = frozenset(f for f in refs["functions"] if _NAMED_FUNCTION.match(f))
        code = _STRING_LITERAL.sub('""', self.source)
        self.fields: frozenset[tuple[str, str]] = frozenset(_FIELD_READ.findall(code))
        self.player_fields: frozenset[str] = frozenset(_PLAYER_FIELD_READ.findall(code))
        # Results kept per scope and inputs (`Scope.memo`), and what each program reads (`_plan_of`).
        self.memo: OrderedDict[tuple[Any, ...], tuple[Scope, Any, int]] = OrderedDict()
        self.plans: dict[int, _Plan] = {}

    def __call__(self, scope: Scope) -> Any:
        budget = scope.budget
        key = None
        try:
            budget.start_eval(self.let_count)
            program = self._program(scope)
            plan = self._plan_of(program)
            result = plan.constant
            if result is not NOT_CONSTANT:  # a literal: nothing to look up, nothing to keep
                if isinstance(result, _MEASURED):
                    measure(result, budget.limits)
                return normalize(result) if isinstance(result, _CONTAINERS) else result
            if scope.memo and plan.keep is not None:
                key = _key(plan, scope)
                hit = self.memo.get(key) if key is not None else None
                if hit is not None and hit[0] is scope and budget.replay_eval(hit[2]):
                    result = hit[1]
                    return normalize(result) if isinstance(result, _CONTAINERS) else result
            used, started = budget.tick_used, budget.eval_used
            result = _SLOW
            if plan.fast is not None:
                try:
                    result = plan.fast(scope.closure_values(plan.names))
                except Exception:  # anything: the package evaluates it from the start
                    budget.eval_used, budget.tick_used, budget.tripped = started, used, None
                    result = _SLOW
            if result is _SLOW:
                scope.flush(plan.reads)
                result = program.execute(scope.context)
            if isinstance(result, _MEASURED):
                measure(result, budget.limits)
        except BudgetExceeded as exc:
            raise OverBudget(f"`{self.short()}`: {exc}") from None
        except Exception as exc:  # the cel package raises KeyError, TypeError, RuntimeError, ...
            if budget.tripped is not None:  # a hook stopped it: its error, not the package's wording
                raise OverBudget(f"`{self.short()}`: {budget.tripped}") from None
            raise ExprError(_failure(self.source, scope, exc)) from None
        if key is not None:
            memo = self.memo
            try:
                if len(memo) >= MEMO_SIZE:
                    # the oldest (a plain dict's first key is found past every deleted one)
                    memo.popitem(last=False)
                memo[key] = (scope, result, budget.tick_used - used)
            except (KeyError, RuntimeError, StopIteration):  # another thread's scope changed it
                pass
        return normalize(result) if isinstance(result, _CONTAINERS) else result

    def _plan_of(self, program: cel.Program) -> _Plan:
        """What `program` (`run` or `run_split`) reads (`_plan`), worked out on its first run and kept
        with the program it belongs to (`compiled` replaces a let-bound expression's programs after
        construction)."""
        plan = self.plans.get(id(program))
        if plan is None or plan.program is not program:
            plan = self.plans[id(program)] = _plan(program)
        return plan

    def _program(self, scope: Scope) -> cel.Program:
        """The split program when the scope holds every state field it reads, else the one reading
        `state` whole (converted now if it is stale): a missing field fails as it always did."""
        split = self.run_split
        if split is not None:
            fields = self.state_fields
            if not fields:
                return split
            state = scope.state
            if state is not None and state.keys() >= fields:
                return split
        scope.whole_state()
        return self.run

    def short(self, limit: int = 80) -> str:
        src = " ".join(self.source.split())
        return src if len(src) <= limit else src[: limit - 3] + "..."

    def __repr__(self) -> str:
        return f"Expr({self.source!r})"


_CONTAINERS, _MEASURED = (dict, list), (dict, list, str, bytes)  # tuples: `A | B` is built per call
STATE_FIELD = "_rsi_state_"  # `state.f` reads as variable `_rsi_state_f` (no spec name starts with _)
MEMO_SIZE = 32  # results kept per expression (`Expr.memo`)
_SCALARS = (str, int, float, bool, type(None))
_VERSION = itertools.count(1)  # versions of converted values, unique across scopes


def _key(plan: _Plan, scope: Scope) -> tuple[Any, ...] | None:
    """What the result of `plan`'s program on `scope` depends on: each variable it reads, as its value
    when that is a scalar, else as the version of the value last converted (`Scope.version`); `args`
    by the values of the fields it reads (by its whole value when it reads it otherwise), so trying
    moves that differ elsewhere finds the result. None: a value with no fingerprint."""
    held, version = scope.held, scope.version
    key: list[Any] = [id(plan.program), id(scope)]
    try:
        for name, how in plan.keep or ():
            if how is _VERSIONED:  # a state field: held by the scope's state, not by name
                key.append(version.get(name))
                continue
            value = held.get(name, _UNSET)
            t = type(value)
            if how is not None and value is not _UNSET:  # `args`: by the fields it reads, or whole
                if how is not _WHOLE and t is dict:
                    key.append(tuple([_fingerprint(value.get(f, _UNSET)) for f in how]))
                else:
                    key.append(_fingerprint(value))
            elif t is str or t is int or t is bool or value is None:  # `_fingerprint`, inlined
                key.append((t, value))
            elif t is float:
                key.append((t, repr(value)))
            else:
                key.append(version.get(name))
    except TypeError:
        return None
    return tuple(key)


def _fingerprint(value: Any) -> Any:
    """`value` as a key that tells apart what CEL tells apart (`1`, `1.0`, `true`; `0.0` and `-0.0`);
    TypeError for anything but plain data."""
    t = type(value)
    if t is str or t is int or t is bool or value is None or value is _UNSET:
        return (t, value)
    if t is float:
        return (t, repr(value))
    if t is list:
        return (t, tuple(_fingerprint(x) for x in value))
    if t is dict:
        return (t, tuple((_fingerprint(k), _fingerprint(x)) for k, x in value.items()))
    raise TypeError(t.__name__)


class _Plan(NamedTuple):
    """What one program reads: every variable (converted before it runs: `Scope.flush`), and for
    keeping its results (`Expr.memo`) the variables in order, each with how `_key` reads it: a state
    field by version (`_VERSIONED`), `args` by the fields it reads (their names; `_WHOLE` when it
    reads `args` otherwise), anything else by value or version (None); `keep` is None when its
    result is not to be kept: it draws from the seeded generator."""

    program: cel.Program
    reads: frozenset[str]
    keep: tuple[tuple[str, Any], ...] | None
    # The program as a Python closure (`expr_python`), None when the package alone runs it; the
    # variables it reads, each with the state field it stands for (`Scope.closure_values`).
    fast: Closure | None = None
    names: tuple[tuple[str, str | None], ...] = ()
    constant: Any = NOT_CONSTANT  # what `fast` always gives, when it is a literal


def _plan(program: cel.Program) -> _Plan:
    """The plan of `program` (`_Plan`)."""
    refs = program.references()
    reads = frozenset(refs["variables"])
    if RANDOM_FUNCTION_NAMES & set(refs["functions"]):
        return _Plan(program, reads, None)
    fast = compile_closure(program.source, RANDOM_FUNCTION_NAMES)
    names = tuple(sorted(reads))
    fields = tuple((n, n[len(STATE_FIELD) :] if n.startswith(STATE_FIELD) else None) for n in names)
    args = (_args_fields(program.source) or _WHOLE) if "args" in names else None
    keep = tuple(
        (n, _VERSIONED if n.startswith(STATE_FIELD) else args if n == "args" else None) for n in names
    )
    return _Plan(program, reads, keep, fast, fields, constant_of(fast))


_VERSIONED, _WHOLE = ("versioned",), ("whole",)  # how `_key` reads a variable (`_Plan.keep`)


def _args_fields(source: str) -> tuple[str, ...] | None:
    """The fields of `args` a program reads, each as `args.f`; None when it reads `args` otherwise."""
    toks = tokens(source) or []
    found: set[str] = set()
    for i, t in enumerate(toks):
        if t.kind != "name" or t.text != "args" or (i > 0 and toks[i - 1].text == "."):
            continue
        after = toks[i + 1 : i + 3]
        if len(after) < 2 or after[0].text != "." or after[1].kind != "name":
            return None  # `args` read whole
        if i >= 2 and toks[i - 1].text == "(" and toks[i - 2].text == "has":
            return None  # `has(args.f)`: the presence of the field counts too (kept whole)
        found.add(after[1].text)
    return tuple(sorted(found)) if toks else None


def split_state(source: str) -> tuple[str, frozenset[str]] | None:
    """`source` with every read of a state field, `state.f`, made a read of variable `_rsi_state_f`,
    and the fields it reads; None when it reads `state` some other way (whole, by `[key]`, by
    `has(state.f)`, as a receiver, or binds the name itself), so that it must read the whole map."""
    if "state" not in source:
        return source, frozenset()
    toks = tokens(source)
    if toks is None or "state" in _BOUND_VAR.findall(source):
        return None
    out: list[str] = []
    fields: set[str] = set()
    pos = 0
    for i, t in enumerate(toks):
        if t.kind != "name" or t.text != "state":
            continue
        if i > 0 and toks[i - 1].kind == "op" and toks[i - 1].text == ".":
            continue  # `x.state`: a key of something else
        field = toks[i + 2] if i + 2 < len(toks) else None
        if field is None or toks[i + 1].text != "." or toks[i + 1].kind != "op" or field.kind != "name":
            return None
        if i + 3 < len(toks) and toks[i + 3].text == "(":
            return None  # `state.f(...)`: a function of the whole map
        if i >= 2 and toks[i - 1].text == "(" and toks[i - 2].text == "has":
            return None  # `has(state.f)` tests the key
        out += [source[pos : t.start], STATE_FIELD + field.text]
        pos = field.end
        fields.add(field.text)
    out.append(source[pos:])
    return "".join(out), frozenset(fields)


def compile_split(text: str, source: str, whole: cel.Program) -> cel.Program | None:
    """The program of `source` split (`text`, from `split_state`), instrumented like `whole`, the
    program of `source`; `whole` itself when nothing was split, None when it does not compile (then
    the whole one runs)."""
    if text == source:
        return whole
    run = instrument(text)
    if run is None:
        return None
    try:
        return cel.compile(run)
    except (ValueError, RuntimeError):
        return None


def is_number(value: Any) -> bool:
    """A CEL int or double (Python's bool is an int, CEL's is not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def copy_plain(value: Any) -> Any:
    """A deep copy of plain data (the engine's values: JSON-like), several times cheaper than
    `copy.deepcopy`, which the engine and the runner would pay at every write and every tick;
    anything else still goes through deepcopy."""
    t = type(value)
    if t is dict:
        return {k: copy_plain(v) for k, v in value.items()}
    if t is list:
        return [copy_plain(v) for v in value]
    if t is str or t is int or t is float or t is bool or value is None:
        return value
    return copy.deepcopy(value)


def normalize(value: Any) -> Any:
    """Sort map keys: CEL maps come back in hash order, which differs between runs and processes."""
    if isinstance(value, dict):
        try:
            keys = sorted(value)
        except TypeError:
            keys = sorted(value, key=repr)
        return {k: normalize(value[k]) for k in keys}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def _failure(source: str, scope: Scope, exc: Exception) -> str:
    """One line saying why `source` failed; a type mismatch names the operation and what it saw
    (`expr_errors.explain`) instead of the package's generic hint, never cut mid-sentence."""
    detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    kind = "missing key" if isinstance(exc, KeyError) else type(exc).__name__
    text = _first_line(str(detail))
    # The package reports a known function given operands it has no overload for as undefined.
    unknown = _UNDEFINED.match(text)
    if isinstance(exc, TypeError) or (unknown is not None and unknown.group(1) in KNOWN_FUNCTIONS):
        from .expr_errors import explain  # the error path only

        scope.whole_state()  # it evaluates parts of `source`, which reads `state`
        scope.flush()
        why = explain(source, scope.context)
        if why is not None:
            whole = f"`{' '.join(source.split())}`: "
            return f"`{source}`: {kind}: {why.removeprefix(whole)}"
        text = _first_sentence(str(detail))
    return f"`{source}`: {kind}: {text}"


_UNDEFINED = re.compile(r"Undefined variable or function: '(\w+)'")


def _first_sentence(text: str) -> str:
    first = " ".join(text.split())
    end = first.find(". ")
    return first[: end + 1] if 0 <= end < 300 else _first_line(first)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "error"


# --- helper functions available to every expression ------------------------------------------


def _tally(values: Iterable[Any] | Mapping[Any, Any]) -> dict[Any, int]:
    """Count occurrences; given a map (e.g. votes by player) count its values. Nulls are skipped."""
    items = values.values() if isinstance(values, Mapping) else values
    out: dict[Any, int] = {}
    for v in items:
        if v is not None:
            out[v] = out.get(v, 0) + 1
    return out


def _argmax(m: Mapping[Any, Any]) -> list[Any]:
    """Keys holding the maximum value (all of them on a tie, in key order); [] for an empty map."""
    if not m:
        return []
    best = max(m.values())
    return sorted(k for k, v in m.items() if v == best)


def _argmin(m: Mapping[Any, Any]) -> list[Any]:
    if not m:
        return []
    best = min(m.values())
    return sorted(k for k, v in m.items() if v == best)


def _count(items: Iterable[Any], value: Any) -> int:
    return sum(1 for v in items if v == value)


def _items(m: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    """A map's entries in key order: a map built by the CEL runtime has no stable order of its own,
    and a list or text made from it must not vary between runs."""
    try:
        return sorted(m.items(), key=lambda kv: kv[0])
    except TypeError:  # keys of mixed types
        return sorted(m.items(), key=lambda kv: (type(kv[0]).__name__, str(kv[0])))


def _keys(m: Mapping[Any, Any]) -> list[Any]:
    return [k for k, _ in _items(m)]


def _values(m: Mapping[Any, Any]) -> list[Any]:
    """Values in key order (so `keys(m)[i]` and `values(m)[i]` belong together)."""
    return [v for _, v in _items(m)]


def _put(m: Mapping[Any, Any], key: Any, value: Any) -> dict[Any, Any]:
    """A copy of map `m` with `key` set: CEL maps are immutable, effects need updated copies."""
    out = dict(m)
    out[key] = value
    return out


def _index_of_list(items: list[Any], value: Any) -> int:
    try:
        return list(items).index(value)
    except ValueError:
        return -1


def _clamp(x: Any, lo: Any, hi: Any) -> Any:
    return max(lo, min(hi, x))


def _dot(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> Any:
    """Sum of a[k] * b[k] over a's keys: the value of a bundle of items under a valuation."""
    return sum(a[k] * b[k] for k in a)


def _fmt_map(m: Mapping[Any, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in _items(m))


PURE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "tally": _tally,
    "argmax": _argmax,
    "argmin": _argmin,
    "count": _count,
    "keys": _keys,
    "values": _values,
    "put": _put,
    "index": _index_of_list,
    "clamp": _clamp,
    "dot": _dot,
    "fmt": _fmt_map,
}


# Gymnasium accepts any int seed, numpy only non-negative ones: a negative seed is read as its
# two's complement in 128 bits, deterministic and clear of every seed anyone passes in practice.
_SEED_MASK = (1 << 128) - 1


def seeded_rng(seed: int | None) -> np.random.Generator:
    """numpy's generator for any integer seed (None = fresh entropy)."""
    return np.random.default_rng(None if seed is None else int(seed) & _SEED_MASK)


class SeededRandom:
    """The only randomness specs see: drawn from the env's seeded generator, so reset(seed) replays."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi], both ends included."""
        if hi < lo:
            raise ValueError(f"randint({lo}, {hi}): empty range")
        return int(self.rng.integers(lo, hi + 1))

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def choice(self, items: list[Any]) -> Any:
        if not items:
            raise ValueError("choice([]): empty list")
        return items[int(self.rng.integers(0, len(items)))]

    def shuffle(self, items: list[Any]) -> list[Any]:
        out = list(items)
        self.rng.shuffle(out)
        return out

    def sample(self, items: list[Any], k: int) -> list[Any]:
        if k > len(items):
            raise ValueError(f"sample: k={k} > {len(items)} items")
        idx = self.rng.choice(len(items), size=k, replace=False)
        return [items[int(i)] for i in idx]

    def split(self, total: int, parts: int) -> list[int]:
        """A uniformly random composition of `total` into `parts` non-negative integers."""
        if parts <= 0 or total < 0:
            raise ValueError(f"split({total}, {parts}): need total >= 0 and parts > 0")
        cuts = sorted(int(c) for c in self.rng.integers(0, total + 1, size=parts - 1))
        bounds = [0, *cuts, total]
        return [bounds[i + 1] - bounds[i] for i in range(parts)]

    def functions(self) -> dict[str, Callable[..., Any]]:
        return {
            "randint": self.randint,
            "uniform": self.uniform,
            "choice": self.choice,
            "shuffle": self.shuffle,
            "sample": self.sample,
            "split": self.split,
        }


RANDOM_FUNCTION_NAMES = frozenset({"randint", "uniform", "choice", "shuffle", "sample", "split"})
# Namespaced stdlib functions (`lists.range`, `math.abs`) read as variable `lists` + function `range`.
STDLIB_FUNCTION_NAMES = frozenset(f.rsplit(".", 1)[-1] for f in cel_stdlib.STDLIB_FUNCTIONS)
STDLIB_NAMESPACES = frozenset(f.split(".")[0] for f in cel_stdlib.STDLIB_FUNCTIONS if "." in f)
# Functions the cel crate implements natively, checked one by one (`max`, `min`, `bool` and list
# `contains` are not: they come from the package's stdlib module, registered when a spec uses them).
NATIVE_FUNCTION_NAMES = frozenset(
    {
        "size", "int", "uint", "double", "string", "bytes", "dyn", "type", "has",
        "startsWith", "endsWith", "matches", "timestamp", "duration",
        "all", "exists", "exists_one", "map", "filter",
    }
)  # fmt: skip
KNOWN_FUNCTIONS = NATIVE_FUNCTION_NAMES | STDLIB_FUNCTION_NAMES | frozenset(PURE_FUNCTIONS)


_UNSET = object()
_SLOW = object()  # no result from the closure: the package evaluates

_TO_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TO_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _lower_ascii(s: Any) -> Any:
    """The package's `lowerAscii`, one table lookup per string instead of a generator per character:
    the same ASCII letters change, the same way (anything but a str goes to the package's own)."""
    return s.translate(_TO_LOWER) if type(s) is str else cel_stdlib.lower_ascii(s)


def _upper_ascii(s: Any) -> Any:
    """The package's `upperAscii`, as `_lower_ascii`."""
    return s.translate(_TO_UPPER) if type(s) is str else cel_stdlib.upper_ascii(s)


# Faster stand-ins for some of the package's stdlib functions (same results, same errors).
_FASTER_STDLIB: dict[str, Callable[..., Any]] = {"lowerAscii": _lower_ascii, "upperAscii": _upper_ascii}
for _name, _fn in _FASTER_STDLIB.items():
    _fn.__doc__ = cel_stdlib.STDLIB_FUNCTIONS[_name].__doc__


def select_functions(
    names: Iterable[str], random: SeededRandom | None = None
) -> dict[str, Callable[..., Any]]:
    """The callables behind the function names some expressions use.

    Registering all ~60 functions makes every context rebuild cost ~17 µs instead of ~8 µs, and a
    game rebuilds its context at every state change, so a spec gets only what it calls.
    """
    wanted = set(names)
    out = {n: f for n, f in PURE_FUNCTIONS.items() if n in wanted}
    for full, fn in cel_stdlib.STDLIB_FUNCTIONS.items():
        if full.rsplit(".", 1)[-1] in wanted and full not in NATIVE_FUNCTION_NAMES:
            out[full] = _FASTER_STDLIB.get(full, fn)
    if random is not None:
        out.update({n: f for n, f in random.functions().items() if n in wanted})
    return out


class Scope:
    """A CEL context for one game state.

    Converting Python values to CEL values is what costs here, not evaluating: the cel package (0.10)
    turns a string, list or map into a CEL value in ~2.5 µs (it tries it as an int, a float, a date
    and a duration first, each failing with a Python exception), an int in ~0.1 µs, and changing any
    variable makes the next evaluation copy every variable into a new environment (~0.2 µs a value).
    So every value is converted as seldom as the engine allows:
    - one context lives as long as its game; `bind` skips re-binding the very same object;
    - the state is held field by field: field `f` is variable `_rsi_state_f`, which an expression
      reading state only as `state.f` reads instead (`split_state`), so a write re-converts the field
      written (`refresh`), not the whole state (a write in codenames cost ~1.3 ms so); the `state` map
      itself is converted only for an expression that reads it otherwise or reads a field the state
      does not have (it fails as it always did);
    - `reset` (after a turn or phase change) leaves alone the roots its caller keeps in step by
      refreshing them after every write (the engine's `state` and `P`), when they are the same objects;
    - a changed variable (a per-call binding, a state field written) is converted only when an
      evaluation that reads one runs (`pending`, `flush`).
    The package's variable resolver, which would read per-call bindings without changing the context,
    was measured and left out: it is asked for every variable read and converts a value again at each
    read: codenames took ~17% more instructions with it, diplomacy ~9% fewer (callgrind).
    """

    __slots__ = (
        "bound", "budget", "context", "functions", "held", "memo", "pending", "state", "version", "whole",
    )  # fmt: skip

    def __init__(
        self,
        values: dict[str, Any],
        functions: dict[str, Callable[..., Any]] | None = None,
        budget: Budget | None = None,
        memo: bool = False,
    ) -> None:
        """`budget` counts the work of every evaluation on this scope (a fresh one by default); the
        functions are registered checked by it (`Budget.guard`), with its comprehension hooks.
        With `memo`, an expression evaluated again on the same inputs gives its kept result
        (`Expr.memo`), charging the budget the units it cost: for a scope that lives long (a game's)."""
        self.memo = memo
        self.version: dict[str, int] = {}  # per variable: a number new at each conversion
        # The variables changed (per-call bindings, written state fields) but not yet converted into
        # the context: converted before the next evaluation that reads one of them (`flush`), so a run
        # of writes to a field that nothing reads in between costs one conversion, and an evaluation
        # that reads none of them (or whose result is kept: `Expr.memo`) changes nothing there.
        self.pending: dict[str, Any] = {}
        self.bound: dict[str, Any] = {}
        self.held: dict[str, Any] = {}  # the object each root variable was last converted from
        self.budget = budget if budget is not None else Budget()
        self.context = cel.Context()
        self.state: dict[str, Any] | None = None  # the state map, when it is held field by field
        self.whole = True  # whether variable `state` is the state as it is now
        self._load(values)
        # What the package calls, by name, for the closures (`expr_python`) to call the same.
        self.functions: dict[str, Callable[..., Any]] = {}
        for name, fn in (PURE_FUNCTIONS if functions is None else functions).items():
            self.functions[name] = self.budget.guard(name, fn)
        self.functions.update(self.budget.hooks())
        for name, fn in self.functions.items():
            self.context.add_function(name, fn)

    def _load(self, values: dict[str, Any]) -> None:
        plain = dict(values)
        state = plain.pop("state", _UNSET)
        if isinstance(state, dict):
            self.state, self.whole = state, False
            plain.update({STATE_FIELD + k: v for k, v in state.items() if _is_name(k)})
        elif state is not _UNSET:
            self.state, self.whole = None, True
            plain["state"] = state
        self.held.update(values)
        self.pending.update(plain)
        for k in plain:
            self.version[k] = next(_VERSION)

    def reset(self, values: dict[str, Any], kept: tuple[str, ...] = ()) -> Scope:
        """Replace the variables. Those named in `kept` that are the very objects converted last are
        left as they are: the caller refreshes them after every change it makes (`refresh`), or never
        changes them in place. So is a scalar equal to the one held: a variable left as it is keeps
        its version, and the results kept under it (`Expr.memo`) stay valid (diplomacy's end check
        read `options` and `players`, re-added at every turn, and was never found kept)."""
        # The per-call bindings of before are set to null: every evaluation after a change copies
        # every variable, and an unused one (the moves of a resolved tick, an action's arguments)
        # costs that copy until it is bound again (diplomacy's orders: ~3 µs each).
        fresh = {k: None for k in self.bound if k not in values and self.held.get(k) is not None}
        self.bound = {}
        for k, v in values.items():
            old = self.held.get(k, _UNSET)
            if old is v and k in kept:
                continue
            if type(v) in _SCALARS and type(old) is type(v) and _fingerprint(old) == _fingerprint(v):
                continue
            fresh[k] = v
        self._load(fresh)
        return self

    def bind(self, **bindings: Any) -> Scope:
        """Set per-call variables (e.g. `args`, `p`) on this scope and return it (converted when an
        evaluation that reads one runs: `flush`)."""
        for name, value in bindings.items():
            if self.bound.get(name, _UNSET) is not value:
                if name == "state":
                    self.refresh(name, value)
                    continue
                self.pending[name] = value
                self.version[name] = next(_VERSION)
                self.bound[name] = self.held[name] = value
        return self

    def closure_values(self, names: tuple[tuple[str, str | None], ...]) -> dict[str, Any]:
        """The variables `names` (each with the state field it stands for) as a closure reads them
        (`expr_python`): the very objects the package would convert, unconverted. A name with no value
        is left out: the closure gives up on it and the package says what is wrong."""
        held = self.held
        out: dict[str, Any] = {FUNCTIONS: self.functions}
        state = self.state
        for name, field in names:
            if field is not None:
                out[name] = state[field]  # type: ignore[index]  # the split program runs only so
            elif name in held:
                out[name] = held[name]
        return out

    def flush(self, names: frozenset[str] | None = None) -> None:
        """Convert the pending variables, when a program reading `names` needs one of them (always, by
        default): all at once, as any change makes the next evaluation copy every variable anyway
        (converting them one by one, each before the first program that reads it, made codenames ~10%
        slower than converting them all together)."""
        pending = self.pending
        if not pending or (names is not None and names.isdisjoint(pending)):
            return
        self.pending = {}
        for name, value in pending.items():
            self.context.add_variable(name, value)

    def refresh(self, name: str, value: Any, stale: tuple[str, ...] = (), field: Any = None) -> None:
        """Re-convert a variable whose object was mutated in place (for `state`, only its `field`
        when that is the one written), when a program next reads it (`flush`); forget bindings
        derived from it."""
        self.bound[name] = value
        self.held[name] = value
        for s in stale:
            self.bound.pop(s, None)
        if name != "state":
            self.pending[name] = value
            self.version[name] = next(_VERSION)
        elif not isinstance(value, dict):
            self.state, self.whole = None, True
            self.pending[name] = value
            self.version[name] = next(_VERSION)
        elif value is self.state and isinstance(field, str) and _is_name(field) and field in value:
            self.pending[STATE_FIELD + field] = value[field]
            self.version[STATE_FIELD + field] = next(_VERSION)
            self.whole = False
        else:
            self._load({"state": value})

    def whole_state(self) -> None:
        """Make variable `state` the state as it is now (for an expression that reads it whole)."""
        if not self.whole:
            self.pending["state"] = self.state
            self.version["state"] = next(_VERSION)
            self.whole = True


def _is_name(key: Any) -> bool:
    return isinstance(key, str) and key.isidentifier()
