"""Spec expressions run as Python closures: the fast path of `expr.Expr`, the package the authority.

Why: the cel package (0.10) evaluates quickly, but each call first copies every variable of its
context into a new environment once any variable changed (~0.3 µs a value), converts every value a
variable or a Python function passes across (1-2.5 µs a string, list or map), and converts the
result back. In diplomacy that was ~45% of a step for expressions that do little work
(`size(mine)`: 55 µs a call). A closure reads the engine's Python values where they are.

What makes it safe: this path does only what it can do exactly as the package does, and gives up
on anything else, at compile time (`compile_closure` gives None: a construct it does not know) or
at run time (any exception: a value of a type it does not handle, a missing key, an overflow, an
error of any kind). Then the caller restores the budget and the package evaluates the expression
from the start, so every error, message and corner of CEL's semantics is still the package's. It
runs the same instrumented program, calling the same budget hooks and guarded functions with the
same values in the same order (CEL's `&&`, `||`, `?:`, `all` and `exists` stop where the package
stops; `exists_one`, `map` and `filter` walk every item), so a result costs the same units.

Handled: literals (decimal and hex ints, doubles, plain and simply escaped strings, lists, maps with
string keys), variables, `.field` and `[index]` on maps and lists, the operators, `?:`, `has()`,
the five comprehension macros over lists and maps, `size`, `int`, `double`, `string` (of an int, a
double or a string), `startsWith`/`endsWith`/`contains` on strings, and every Python function the scope
registers (the spec's helpers, the stdlib's, the budget's hooks). Random draws never come here:
they must not be drawn twice.

Values follow CEL: ints are 64-bit (an overflow gives up), `/` and `%` truncate toward zero, ints
and doubles compare with each other but never add, bool is not a number (`true == 1` is false),
values of different kinds are unequal, map keys are strings here (others give up).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from .expr_budget import tokens

FUNCTIONS = "\0functions"  # the key of the scope's functions in a closure's variables

Closure = Callable[[dict[str, Any]], Any]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_EXACT = 2**53  # ints beyond this compare with a double differently in Rust and Python
_NONE = type(None)
_KNOWN = (str, int, float, bool, _NONE, list, dict)
_RELOPS = ("<", "<=", ">", ">=", "==", "!=")
_MAX_DEPTH = 64  # nesting this parser follows; deeper programs go to the package
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
# The package's own functions: those above are handled here only in the forms `_Parser` knows; the
# rest are left to the package at compile time (none is a registered Python function).
_NATIVE = frozenset({"size", "int", "double", "string", "has"})
_PACKAGE_ONLY = _NATIVE | {"matches", "type", "dyn", "uint", "bytes", "timestamp", "duration"}


class GiveUp(Exception):
    """Not for this path: a construct (compile time) or a value (run time) the package must handle."""


def compile_closure(source: str, random_functions: frozenset[str]) -> Closure | None:
    """A closure computing `source` from a dict of its variables (plus the scope's functions under
    `FUNCTIONS`), or None when `source` uses what this path does not do (then the package runs it)."""
    toks = tokens(source)
    if not toks:
        return None
    try:
        parser = _Parser(toks, random_functions)
        out = parser.expr()
        if parser.i != len(toks):
            return None
        return out
    except (GiveUp, IndexError, ValueError, RecursionError):
        return None


# -- values ------------------------------------------------------------------------------------------


def equal(x: Any, y: Any) -> bool:
    """CEL's `==`: numbers by value (int with double too), values of different kinds unequal, lists
    and maps item by item; GiveUp for what the package might see otherwise."""
    tx, ty = type(x), type(y)
    if tx is ty:
        if tx is str or tx is int or tx is bool or tx is _NONE or tx is float:
            return bool(x == y)
        if tx is list:
            return len(x) == len(y) and all(equal(a, b) for a, b in zip(x, y, strict=True))
        if tx is dict:
            if len(x) != len(y):
                return False
            for k, a in x.items():
                if type(k) is not str:
                    raise GiveUp
                if k not in y or not equal(a, y[k]):
                    return False
            return True
        raise GiveUp
    if (tx is int and ty is float) or (tx is float and ty is int):
        if abs(x if tx is int else y) > _EXACT:
            raise GiveUp
        return bool(x == y)
    if tx in _KNOWN and ty in _KNOWN:
        return False
    raise GiveUp


def _comparable(x: Any, y: Any) -> None:
    """GiveUp unless CEL orders `x` and `y` as Python does: two ints, strings (code points order as
    UTF-8 bytes do), doubles or bools, or an int and a double."""
    tx, ty = type(x), type(y)
    if tx is ty and (tx is int or tx is str or tx is float or tx is bool):
        return
    if (tx is int and ty is float) or (tx is float and ty is int):
        if abs(x if tx is int else y) <= _EXACT:
            return
    raise GiveUp


def _int(r: int) -> int:
    if _I64_MIN <= r <= _I64_MAX:
        return r
    raise GiveUp  # the package reports the overflow


def _add(x: Any, y: Any) -> Any:
    tx = type(x)
    if tx is not type(y):
        raise GiveUp
    if tx is int:
        return _int(x + y)
    if tx is str or tx is list or tx is float:
        return x + y
    raise GiveUp


def _sub(x: Any, y: Any) -> Any:
    tx = type(x)
    if tx is not type(y):
        raise GiveUp
    if tx is int:
        return _int(x - y)
    if tx is float:
        return x - y
    raise GiveUp


def _mul(x: Any, y: Any) -> Any:
    tx = type(x)
    if tx is not type(y):
        raise GiveUp
    if tx is int:
        return _int(x * y)
    if tx is float:
        return x * y
    raise GiveUp


def _div(x: Any, y: Any) -> Any:
    tx = type(x)
    if tx is not type(y) or not y:
        raise GiveUp
    if tx is int:
        q = abs(x) // abs(y)
        return _int(-q if (x < 0) != (y < 0) else q)
    if tx is float:
        return x / y
    raise GiveUp


def _mod(x: Any, y: Any) -> Any:
    if type(x) is not int or type(y) is not int or not y:
        raise GiveUp
    r = abs(x) % abs(y)
    return -r if x < 0 else r


def _in(x: Any, y: Any) -> bool:
    ty = type(y)
    if ty is list:
        if type(x) is str:
            return x in y  # a str equals only a str, in Python as in CEL
        return any(equal(x, e) for e in y)
    if ty is dict and type(x) is str:
        return x in y
    raise GiveUp


def _items(xs: Any) -> Any:
    t = type(xs)
    if t is list:
        return xs
    if t is dict:
        return list(xs)
    raise GiveUp


def _size(x: Any) -> int:
    t = type(x)
    if t is list or t is dict:
        return len(x)
    if t is str and x.isascii():  # the package counts a string's UTF-8 bytes
        return len(x)
    raise GiveUp


def _to_int(x: Any) -> int:
    t = type(x)
    if t is int:
        return x
    if t is float and x == x and abs(x) < 2**63:
        return _int(int(x))
    if t is str and x.isascii() and (x.isdigit() or (x[:1] == "-" and x[1:].isdigit())):
        return _int(int(x))
    raise GiveUp


def _to_double(x: Any) -> float:
    if type(x) is int:
        return float(x)
    if type(x) is float:
        return x
    raise GiveUp


def _to_string(x: Any) -> str:
    if type(x) is str:
        return x
    if type(x) is int:
        return str(x)
    if type(x) is float:
        # Rust's shortest digits, as Python's repr, but never an exponent and no `.0` on a whole
        # number; what repr writes with an exponent (or nan, inf) is left to the package.
        # With 16 digits or more two shortest spellings may round-trip, and Rust may pick the other.
        text = repr(x)
        if "e" in text or "n" in text or len(text.lstrip("-0.").replace(".", "")) > 15:
            raise GiveUp
        return text[:-2] if text.endswith(".0") else text
    raise GiveUp  # a bool (undefined in the package), a list...: the package's


def _checked(result: Any) -> Any:
    """A Python function's result as the package would give it back, or GiveUp (a tuple, a numpy
    value, an int beyond 64 bits: the package converts those its own way)."""
    t = type(result)
    if t is int:
        return _int(result)
    if t in _KNOWN:
        return result
    raise GiveUp


# -- the parser: CEL's grammar, building closures ------------------------------------------------------


class _Parser:
    """Recursive descent over CEL's grammar (cel-spec `langdef.md`):

    Expr     = Or ["?" Or ":" Expr]          Or  = And {"||" And}       And = Rel {"&&" Rel}
    Rel      = Add {("<"|"<="|">="|">"|"=="|"!="|"in") Add}               Add = Mul {("+"|"-") Mul}
    Mul      = Unary {("*"|"/"|"%") Unary}   Unary = Member | "!"... Member | "-"... Member
    Member   = Primary {"." IDENT ["(" args ")"] | "[" Expr "]"}
    Primary  = IDENT ["(" args ")"] | "(" Expr ")" | "[" list "]" | "{" map "}" | literal
    """

    def __init__(self, toks: list[Any], random_functions: frozenset[str]) -> None:
        self.toks = toks
        self.i = 0
        self.depth = 0
        self.random = random_functions
        # Comprehension variables whose value is known here: bound to a literal (`[e].map(x, ...)`
        # with `e` a constant: how lets bind, `compiled._bind_lets`), read as that constant.
        self.known: dict[str, Any] = {}

    # tokens
    def _at(self, text: str) -> bool:
        if self.i >= len(self.toks):
            return False
        t = self.toks[self.i]
        return bool(t.text == text and (t.kind == "op" or text == "in"))

    def _take(self, text: str) -> None:
        if not self._at(text):
            raise GiveUp
        self.i += 1

    def _name(self) -> str:
        t = self.toks[self.i]
        if t.kind != "name":
            raise GiveUp
        self.i += 1
        return str(t.text)

    # grammar
    def expr(self) -> Closure:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise GiveUp
        cond = self._or()
        if self._at("?"):
            self.i += 1
            yes = self._or()
            self._take(":")
            no = self.expr()
            cond = _ternary(cond, yes, no)
        self.depth -= 1
        return cond

    def _or(self) -> Closure:
        return self._logic_chain("||", self._and, stop=True)

    def _and(self) -> Closure:
        return self._logic_chain("&&", self._rel, stop=False)

    def _logic_chain(self, op: str, operand: Callable[[], Closure], stop: bool) -> Closure:
        left = operand()
        while self._at(op):
            self.i += 1
            left = _logic(left, operand(), stop=stop)
        return left

    def _rel(self) -> Closure:
        left = self._add()
        while True:
            op = next((o for o in (*_RELOPS, "in") if self._at(o)), None)
            if op is None:
                return left
            self.i += 1
            left = _relation(op, left, self._add())

    def _add(self) -> Closure:
        left = self._mul()
        while self._at("+") or self._at("-"):
            fn = _add if self.toks[self.i].text == "+" else _sub
            self.i += 1
            left = _binary(fn, left, self._mul())
        return left

    def _mul(self) -> Closure:
        left = self._unary()
        while self._at("*") or self._at("/") or self._at("%"):
            fn = {"*": _mul, "/": _div, "%": _mod}[self.toks[self.i].text]
            self.i += 1
            left = _binary(fn, left, self._unary())
        return left

    def _unary(self) -> Closure:
        if self._at("!"):
            self.i += 1
            return _not(self._unary())
        if self._at("-"):
            self.i += 1
            t = self.toks[self.i]
            after = self.toks[self.i + 1].text if self.i + 1 < len(self.toks) else ""
            if t.kind == "number" and after not in (".", "["):
                self.i += 1  # a negative literal: `-9223372036854775808` is one
                return _const(_number(t.text, negative=True))
            return _negate(self._unary())
        return self._member()

    def _member(self) -> Closure:
        node, ident = self._primary()
        while True:
            if self._at("."):
                self.i += 1
                name = self._name()
                if self._at("("):
                    self.i += 1
                    node = self._method(node, ident, name)
                else:
                    node = _field(node, name)
                ident = None
            elif self._at("["):
                self.i += 1
                key = self.expr()
                self._take("]")
                bound = getattr(node, _LET, None)
                index = getattr(key, _VALUE, None)
                if bound is not None and type(index) is int and index == 0:
                    node = _let(*bound)  # `[e].map(x, body)[0]`: `body` with `x` bound to `e`
                else:
                    node = _index(node, key)
                ident = None
            else:
                return node

    def _args(self) -> list[Closure]:
        """The arguments of a call, after its `(`, through its `)`."""
        args: list[Closure] = []
        while not self._at(")"):
            args.append(self.expr())
            if not self._at(")"):
                self._take(",")
        self.i += 1
        return args

    def _method(self, target: Closure, ident: str | None, name: str) -> Closure:
        if name in ("all", "exists", "exists_one", "map", "filter"):
            var = self._name()
            self._take(",")
            single = getattr(target, _SINGLE, None)
            value = constant_of(single) if name == "map" else NOT_CONSTANT
            outer = self.known.pop(var, NOT_CONSTANT)
            if value is not NOT_CONSTANT:
                self.known[var] = value  # walking `[e]`, `var` is `e` in every argument
            try:
                args = self._args()
            finally:
                self.known.pop(var, None)
                if outer is not NOT_CONSTANT:
                    self.known[var] = outer
            return _macro(name, target, var, args)
        args = self._args()
        if name in self.random:
            raise GiveUp
        if ident is not None and name in _NAMESPACED.get(ident, ()):
            return _call(f"{ident}.{name}", args)  # `lists.range(n)`: a function, not a method
        if name == "size" and not args:
            return _native(_size, [target])
        if name in ("startsWith", "endsWith") and len(args) == 1:
            return _string_test(name, target, args[0])
        if name == "contains" and len(args) == 1:
            return _contains(target, args[0])
        if name in _PACKAGE_ONLY:
            raise GiveUp
        return _call(name, [target, *args])

    def _primary(self) -> tuple[Closure, str | None]:
        t = self.toks[self.i]
        self.i += 1
        if t.kind == "number":
            return _const(_number(t.text)), None
        if t.kind == "string":
            return _const(_string(t.text)), None
        if t.kind == "name":
            name = str(t.text)
            if name in ("true", "false", "null"):
                return _const({"true": True, "false": False, "null": None}[name]), None
            if name == "in":
                raise GiveUp
            if self._at("("):
                self.i += 1
                return self._function(name), None
            if self._at("{"):
                raise GiveUp  # a message literal
            if name in self.known:
                return _const(self.known[name]), name
            return _variable(name), name
        if t.text == "(":
            inner = self.expr()
            self._take(")")
            return inner, None
        if t.text == "[":
            items: list[Closure] = []
            while not self._at("]"):
                items.append(self.expr())
                if not self._at("]"):
                    self._take(",")
            self.i += 1
            return _list(items), None
        if t.text == "{":
            entries: list[tuple[Closure, Closure]] = []
            while not self._at("}"):
                key = self.expr()
                self._take(":")
                entries.append((key, self.expr()))
                if not self._at("}"):
                    self._take(",")
            self.i += 1
            return _map(entries), None
        raise GiveUp

    def _function(self, name: str) -> Closure:
        if name == "has":
            # `has(a.f)`: whether map `a` has key `f`
            target, _ = self._primary()
            while True:
                if self._at(".") and not (self.i + 2 < len(self.toks) and self.toks[self.i + 2].text == "("):
                    self.i += 1
                    field = self._name()
                    if self._at(")"):
                        self.i += 1
                        return _field(target, field, has=True)
                    target = _field(target, field)
                elif self._at("["):
                    self.i += 1
                    key = self.expr()
                    self._take("]")
                    target = _index(target, key)
                else:
                    raise GiveUp
        args = self._args()
        if name in self.random:
            raise GiveUp
        if name == "size" and len(args) == 1:
            return _native(_size, args)
        if name == "int" and len(args) == 1:
            return _native(_to_int, args)
        if name == "double" and len(args) == 1:
            return _native(_to_double, args)
        if name == "string" and len(args) == 1:
            return _native(_to_string, args)
        if name in _PACKAGE_ONLY:
            raise GiveUp
        return _call(name, args)


def _namespaced() -> dict[str, frozenset[str]]:
    from cel import stdlib

    out: dict[str, set[str]] = {}
    for full in stdlib.STDLIB_FUNCTIONS:
        if "." in full:
            ns, _, fn = full.partition(".")
            out.setdefault(ns, set()).add(fn)
    return {ns: frozenset(fns) for ns, fns in out.items()}


_NAMESPACED = _namespaced()


def _number(text: str, negative: bool = False) -> int | float:
    if text[-1] in "uU":
        raise GiveUp  # uint: a type of its own
    if text[:2] in ("0x", "0X"):
        value: int | float = int(text, 16)
    elif "." in text or "e" in text or "E" in text:
        value = float(text)
    else:
        value = int(text)
    if negative:
        value = -value
    if type(value) is int and not _I64_MIN <= value <= _I64_MAX:
        raise GiveUp
    return value


def _string(text: str) -> str:
    quote = text[0]
    if quote not in "'\"" or text[:3] in ('"""', "'''") or len(text) < 2 or text[-1] != quote:
        raise GiveUp  # raw, bytes and triple-quoted strings
    body = text[1:-1]
    if "\\" not in body:
        return body
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1 : i + 2]
            if nxt not in _ESCAPES:
                raise GiveUp
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


# -- the closures ------------------------------------------------------------------------------------


def _variable(name: str) -> Closure:
    def get(v: dict[str, Any]) -> Any:
        return v[name]  # KeyError: not bound here (the package says why)

    return get


def _field(target: Closure, name: str, has: bool = False) -> Closure:
    """`target.name` (a KeyError when missing: the package says so), or with `has` `has(target.name)`."""

    def get(v: dict[str, Any]) -> Any:
        m = target(v)
        if type(m) is dict:
            return name in m if has else m[name]
        raise GiveUp

    return _folded(get, target)


def _index(target: Closure, key: Closure) -> Closure:
    def get(v: dict[str, Any]) -> Any:
        m = target(v)
        k = key(v)
        tm = type(m)
        if tm is dict and type(k) is str:
            return m[k]
        if tm is list and type(k) is int and 0 <= k < len(m):
            return m[k]
        raise GiveUp

    return _folded(get, target, key)


def _ternary(cond: Closure, yes: Closure, no: Closure) -> Closure:
    def pick(v: dict[str, Any]) -> Any:
        c = cond(v)
        if c is True:
            return yes(v)
        if c is False:
            return no(v)
        raise GiveUp

    return pick


def _logic(left: Closure, right: Closure, stop: bool) -> Closure:
    """`||` (stop at true) or `&&` (stop at false), left to right as the package goes."""

    def both(v: dict[str, Any]) -> bool:
        a = left(v)
        if a is stop:
            return stop
        if a is not (not stop):
            raise GiveUp
        b = right(v)
        if type(b) is bool:
            return b
        raise GiveUp

    return both


def _not(inner: Closure) -> Closure:
    def neg(v: dict[str, Any]) -> bool:
        x = inner(v)
        if x is True:
            return False
        if x is False:
            return True
        raise GiveUp

    return _folded(neg, inner)


def _negate(inner: Closure) -> Closure:
    def neg(v: dict[str, Any]) -> Any:
        x = inner(v)
        if type(x) is int:
            return _int(-x)
        if type(x) is float:
            return -x
        raise GiveUp

    return _folded(neg, inner)


def _binary(fn: Callable[[Any, Any], Any], left: Closure, right: Closure) -> Closure:
    def op(v: dict[str, Any]) -> Any:
        return fn(left(v), right(v))

    return _folded(op, left, right)


def _relation(op: str, left: Closure, right: Closure) -> Closure:
    """A relation, both operands evaluated left first."""
    if op == "==":
        return _folded(lambda v: equal(left(v), right(v)), left, right)
    if op == "!=":
        return _folded(lambda v: not equal(left(v), right(v)), left, right)
    if op == "in":
        return _folded(lambda v: _in(left(v), right(v)), left, right)
    compare = _ORDER[op]

    def rel(v: dict[str, Any]) -> bool:
        x, y = left(v), right(v)
        _comparable(x, y)
        return bool(compare(x, y))

    return _folded(rel, left, right)


_ORDER: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip


# What some closures are, for the parser to build better ones around them (kept as attributes of
# the closure): a constant's value (a literal, a list or map of constants, an operation on constants:
# `_folded`), the item of a one-element list literal, and `[e].map(x, body)`'s `e`, `x` and `body`.
_VALUE, _SINGLE, _LET = "cel_value", "cel_single", "cel_let"


NOT_CONSTANT: Any = object()


def constant_of(closure: Closure | None) -> Any:
    """The value a closure always gives (a literal, or a list or map of literals), else NOT_CONSTANT."""
    return getattr(closure, _VALUE, NOT_CONSTANT)


def _const(value: Any) -> Closure:
    """A constant's closure. A list or map built of constants is built once, at compile time, and every
    evaluation gets the same object: no closure changes a value in place (each builds anew: `+`,
    `map`, `filter`, literals), nor does any registered function (they see the engine's own values
    too), and `Expr` copies every result it gives out (`normalize`)."""

    def get(v: dict[str, Any]) -> Any:
        return value

    setattr(get, _VALUE, value)
    return get


def _folded(build: Closure, *parts: Closure) -> Closure:
    """`build` (an operation on `parts`) as a constant when every part is one and it gives a value
    for them (it reads nothing else and charges no units); else `build` itself, which gives up at
    run time as it would have."""
    if all(constant_of(p) is not NOT_CONSTANT for p in parts):
        try:
            return _const(build({}))
        except Exception:  # the same failure at run time gives up there
            return build
    return build


def _let(item: Closure, var: str, body: Closure) -> Closure:
    """`[item].map(var, body)[0]`: what the package computes walking a one-element list (which
    costs no units: the instrumentation leaves such maps alone), without building two lists."""

    def let(v: dict[str, Any]) -> Any:
        x = item(v)
        saved = v.get(var, _ABSENT)
        v[var] = x
        r = body(v)
        _restore(v, var, saved)
        return r

    return _folded(let, item, body)


def _list(items: list[Closure]) -> Closure:
    values = [getattr(f, _VALUE, _ABSENT) for f in items]
    out = _const(values) if _ABSENT not in values else lambda v: [f(v) for f in items]
    if len(items) == 1:
        setattr(out, _SINGLE, items[0])
    return out


def _map(entries: list[tuple[Closure, Closure]]) -> Closure:
    pairs = [(getattr(k, _VALUE, _ABSENT), getattr(x, _VALUE, _ABSENT)) for k, x in entries]
    if all(type(k) is str and x is not _ABSENT for k, x in pairs):
        consts = dict(pairs)
        if len(consts) == len(entries):  # a repeated key: the package's to report
            return _const(consts)

    def build(v: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in entries:
            k = key(v)
            if type(k) is not str:
                raise GiveUp
            out[k] = value(v)
        return out

    return build


def _native(fn: Callable[..., Any], args: list[Closure]) -> Closure:
    (arg,) = args
    return _folded(lambda v: fn(arg(v)), arg)


def _string_test(name: str, target: Closure, arg: Closure) -> Closure:
    def test(v: dict[str, Any]) -> bool:
        s, t = target(v), arg(v)
        if type(s) is not str or type(t) is not str:
            raise GiveUp
        return s.startswith(t) if name == "startsWith" else s.endswith(t)

    return test


def _contains(target: Closure, arg: Closure) -> Closure:
    """`s.contains(t)`: on a string the package's own (no Python call); on anything else the
    registered function, as the package calls it."""
    registered = _call("contains", [target, arg])

    def test(v: dict[str, Any]) -> Any:
        s = target(v)
        if type(s) is str:
            t = arg(v)
            if type(t) is not str:
                raise GiveUp
            return t in s
        return registered(v)

    return test


def _call(name: str, args: list[Closure]) -> Closure:
    def call(v: dict[str, Any]) -> Any:
        fn = v[FUNCTIONS].get(name)
        if fn is None:
            raise GiveUp
        return _checked(fn(*[a(v) for a in args]))

    return call


def _macro(name: str, target: Closure, var: str, args: list[Closure]) -> Closure:
    single = getattr(target, _SINGLE, None)
    if name == "map" and len(args) == 1 and single is not None:
        # How the instrumented programs bind a let or a comprehension's input: `[e].map(x, body)[0]`
        # (`compiled`, `expr_budget.instrument`). The map is kept for `_member` to make a let of it
        # when `[0]` follows; alone it is the map it says.
        out = _map_filter(target, var, None, args[0])
        setattr(out, _LET, (single, var, args[0]))
        return out
    if name == "map" and len(args) == 2:
        keep, fn = args
        return _map_filter(target, var, keep, fn)
    if len(args) != 1:
        raise GiveUp
    (body,) = args
    if name == "map":
        return _map_filter(target, var, None, body)
    if name == "filter":
        return _map_filter(target, var, body, None)
    if name == "exists_one":
        return _exists_one(target, var, body)
    return _quantifier(target, var, body, stop=name == "exists")


def _quantifier(target: Closure, var: str, pred: Closure, stop: bool) -> Closure:
    """`exists` (stop at the first true) or `all` (stop at the first false)."""

    def walk(v: dict[str, Any]) -> bool:
        items = _items(target(v))
        saved = v.get(var, _ABSENT)
        for x in items:
            v[var] = x
            r = pred(v)
            if r is stop:
                _restore(v, var, saved)
                return stop
            if r is not (not stop):
                raise GiveUp
        _restore(v, var, saved)
        return not stop

    return walk


def _exists_one(target: Closure, var: str, pred: Closure) -> Closure:
    def walk(v: dict[str, Any]) -> bool:
        items = _items(target(v))
        saved = v.get(var, _ABSENT)
        n = 0
        for x in items:
            v[var] = x
            r = pred(v)
            if r is True:
                n += 1
            elif r is not False:
                raise GiveUp
        _restore(v, var, saved)
        return n == 1

    return walk


def _map_filter(target: Closure, var: str, keep: Closure | None, fn: Closure | None) -> Closure:
    def walk(v: dict[str, Any]) -> list[Any]:
        items = _items(target(v))
        saved = v.get(var, _ABSENT)
        out = []
        for x in items:
            v[var] = x
            if keep is not None:
                r = keep(v)
                if r is False:
                    continue
                if r is not True:
                    raise GiveUp
            out.append(x if fn is None else fn(v))
        _restore(v, var, saved)
        return out

    return walk


_ABSENT = object()


def _restore(v: dict[str, Any], var: str, saved: Any) -> None:
    if saved is _ABSENT:
        v.pop(var, None)  # an empty walk bound nothing
    else:
        v[var] = saved
