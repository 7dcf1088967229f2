"""Static types of CEL expressions, for the spec checks (`spec_check.py`); nothing here evaluates.

The `cel` package compiles and runs expressions but has no type checker, so the spec checks infer
what they can themselves: a small recursive-descent pass over CEL's grammar that knows the types
of literals, operators, the helpers' results and the declared types of the names a spec provides.
It answers None (unknown) whenever it is unsure, so a check built on it never rejects a spec
that could run; the dry run catches the rest on real values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .expr_budget import tokens

CelTypes = frozenset[str]  # CEL type names: int, uint, double, bool, string, bytes, null, list, map
INT: CelTypes = frozenset({"int"})
UINT: CelTypes = frozenset({"uint"})
DOUBLE: CelTypes = frozenset({"double"})
NUMBER: CelTypes = INT | UINT | DOUBLE
BOOL: CelTypes = frozenset({"bool"})
STRING: CelTypes = frozenset({"string"})
BYTES: CelTypes = frozenset({"bytes"})
NULL: CelTypes = frozenset({"null"})
LIST: CelTypes = frozenset({"list"})
MAP: CelTypes = frozenset({"map"})


@dataclass(frozen=True)
class Record:
    """A map whose fields have declared shapes (`state`, `my`, `args`); other fields are unknown."""

    fields: Mapping[str, Shape]


@dataclass(frozen=True)
class MapOf:
    """A map whose values share one shape: `P` maps every player to its `player_state` record."""

    value: Record


Shape = CelTypes | Record | MapOf | None  # None: not known statically

_FUNCTION_TYPES: dict[str, CelTypes] = {
    **dict.fromkeys(("size", "int", "count", "index", "randint"), INT),
    "uint": UINT,
    **dict.fromkeys(("double", "uniform"), DOUBLE),
    **dict.fromkeys(("string", "fmt"), STRING),
    "bytes": BYTES,
    **dict.fromkeys(("keys", "values", "argmax", "argmin", "shuffle", "sample", "split"), LIST),
    **dict.fromkeys(("tally", "put"), MAP),
    **dict.fromkeys(("has", "bool", "matches", "startsWith", "endsWith"), BOOL),
}
_METHOD_TYPES: dict[str, CelTypes] = {
    "size": INT,
    **dict.fromkeys(("contains", "startsWith", "endsWith", "matches", "all", "exists", "exists_one"), BOOL),
    **dict.fromkeys(("map", "filter"), LIST),
    **dict.fromkeys(("join", "lowerAscii", "upperAscii", "trim", "substring", "replace"), STRING),
}
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_RELATIONS = frozenset({"<", "<=", ">", ">=", "==", "!=", "in"})


class _Unknown(Exception):
    """Raised inside the type pass for anything it does not understand; the answer is None."""


def infer_type(source: str, env: Mapping[str, Shape]) -> Shape:
    """The static shape of a (compiling) CEL expression, given the shapes of the names it reads."""
    try:
        tokens = _type_tokens(source)
        parser = _TypeParser(tokens, env)
        shape = parser.expr()
    except _Unknown:
        return None
    return shape if parser.i == len(tokens) else None


def _type_tokens(source: str) -> list[tuple[str, str]]:
    toks = tokens(source)
    if toks is None:
        raise _Unknown  # e.g. a comment or a syntax this pass does not know
    return [(t.kind, t.text) for t in toks]


def _literal_type(kind: str, text: str) -> CelTypes:
    if kind == "string":
        prefix = text[: min(i for i in (text.find('"'), text.find("'")) if i >= 0)]
        return BYTES if "b" in prefix.lower() else STRING
    if text[:2].lower() == "0x":
        return UINT if text[-1] in "uU" else INT
    if "." in text or "e" in text.lower():
        return DOUBLE
    return UINT if text[-1] in "uU" else INT


def _arith(op: str, left: Shape, right: Shape) -> Shape:
    # CEL never mixes types in arithmetic: the result is the type both sides share.
    if not isinstance(left, frozenset) or not isinstance(right, frozenset):
        return None
    allowed = (NUMBER | STRING | BYTES | LIST) if op == "+" else (INT | UINT if op == "%" else NUMBER)
    return (left & right & allowed) or None


def _union(a: Shape, b: Shape) -> Shape:
    return a | b if isinstance(a, frozenset) and isinstance(b, frozenset) else None


class _TypeParser:
    """CEL's grammar (cel-spec langdef), yielding shapes instead of a tree."""

    def __init__(self, tokens: list[tuple[str, str]], env: Mapping[str, Shape]) -> None:
        self.tokens = tokens
        self.i = 0
        self.env = env
        self.shadowed: list[str] = []  # comprehension variables in scope

    def peek(self, ahead: int = 0) -> tuple[str, str]:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise _Unknown
        self.i += 1
        return self.tokens[self.i - 1]

    def expect(self, text: str) -> None:
        if self.take()[1] != text:
            raise _Unknown

    def expr(self) -> Shape:
        shape = self.logical("||")
        if self.peek()[1] != "?":
            return shape
        self.take()
        then = self.logical("||")
        self.expect(":")
        return _union(then, self.expr())

    def logical(self, op: str) -> Shape:
        inner = (lambda: self.logical("&&")) if op == "||" else self.relation
        shape = inner()
        while self.peek()[1] == op:
            self.take()
            inner()
            shape = BOOL
        return shape

    def relation(self) -> Shape:
        shape = self.binary(("+", "-"))
        while self.peek()[1] in _RELATIONS:
            self.take()
            self.binary(("+", "-"))
            shape = BOOL
        return shape

    def binary(self, ops: tuple[str, ...]) -> Shape:
        operand = (lambda: self.binary(("*", "/", "%"))) if "+" in ops else self.unary
        shape = operand()
        while (op := self.peek()[1]) in ops:
            self.take()
            shape = _arith(op, shape, operand())
        return shape

    def unary(self) -> Shape:
        op = self.peek()[1]
        if op == "!":
            self.take()
            self.unary()
            return BOOL
        if op == "-":
            self.take()
            shape = self.unary()
            return ((shape & NUMBER) or None) if isinstance(shape, frozenset) else None
        return self.member()

    def member(self) -> Shape:
        shape = self.primary()
        while True:
            op = self.peek()[1]
            if op == ".":
                self.take()
                kind, name = self.take()
                if kind != "name":
                    raise _Unknown
                if self.peek()[1] == "(":
                    shape = self.call(name, method=True)
                else:
                    shape = shape.fields.get(name) if isinstance(shape, Record) else None
            elif op == "[":
                self.take()
                self.expr()
                self.expect("]")
                shape = shape.value if isinstance(shape, MapOf) else None
            else:
                return shape

    def call(self, name: str, method: bool) -> Shape:
        self.expect("(")
        bound = None
        if method and name in _MACROS and self.peek()[0] == "name" and self.peek(1)[1] == ",":
            bound = self.take()[1]  # `list.map(x, ...)`: x is local to the call
            self.take()
            self.shadowed.append(bound)
        try:
            self.items(")")
        finally:
            if bound is not None:
                self.shadowed.pop()
        return (_METHOD_TYPES if method else _FUNCTION_TYPES).get(name)

    def items(self, close: str, pairs: bool = False) -> None:
        while self.peek()[1] != close:
            self.expr()
            if pairs:
                self.expect(":")
                self.expr()
            if self.peek()[1] == ",":
                self.take()
            elif self.peek()[1] != close:
                raise _Unknown
        self.take()

    def primary(self) -> Shape:
        kind, text = self.take()
        if kind in ("string", "number"):
            return _literal_type(kind, text)
        if text == "(":
            shape = self.expr()
            self.expect(")")
            return shape
        if text == "[":
            self.items("]")
            return LIST
        if text == "{":
            self.items("}", pairs=True)
            return MAP
        if text == ".":
            kind, text = self.take()  # a leading dot only qualifies a name
        if kind != "name":
            raise _Unknown
        if text in ("true", "false"):
            return BOOL
        if text == "null":
            return NULL
        if self.peek()[1] == "(":
            return self.call(text, method=False)
        if text in self.shadowed:
            return None
        return self.env.get(text)
