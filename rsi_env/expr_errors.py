"""Messages for expressions that fail at run time, naming what the failing operation saw.

The `cel` package reports a type mismatch as "No such overload" followed by a long generic hint
(mixing int with uint or double, ...), which the engine's one-line errors used to cut mid-sentence,
and which misleads when the real cause is a null (a player index that is not set yet). Here the
expression is split into its operations (a small parser over CEL's grammar that keeps each
operation's span of text); the innermost operation that fails while its operands evaluate is the
one to explain, with its operands' CEL types and values: "`state.x + state.f`: + cannot combine
int (1) and double (1.5)". A condition (`&&`, `||`, `?:`, a macro's test) that is not a bool says
what it is; a macro's body is explained with its variable bound to the first item it fails on. Only
the error path pays for this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import cel

from .expr_budget import Token, tokens

_RELATIONS = frozenset({"<", "<=", ">", ">=", "==", "!=", "in"})
# Macros over a list or map: `target.m(var, body...)`; the body reads the variable bound per item.
_MACROS = frozenset({"all", "exists", "exists_one", "filter", "map"})
_MACRO_ITEMS = 50  # items tried when explaining a macro's body
_IDENT = re.compile(r"[A-Za-z_]\w*")
MAX_SOURCE = 4000  # longer expressions keep the package's own message


@dataclass
class _Node:
    kind: str  # binary | unary | logic | cond | member | index | call | other
    start: int
    end: int
    op: str = ""
    children: list[_Node] = field(default_factory=list)


class _Unparsable(Exception):
    pass


class _Parser:
    """CEL's grammar (cel-spec langdef), yielding nodes with their spans of source text."""

    def __init__(self, source: str) -> None:
        self.src = source
        toks = tokens(source)
        if toks is None:
            raise _Unparsable
        self.toks = toks
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i][1] if self.i < len(self.toks) else ""

    def take(self) -> Token:
        if self.i >= len(self.toks):
            raise _Unparsable
        self.i += 1
        return self.toks[self.i - 1]

    def expect(self, text: str) -> int:
        tok = self.take()
        if tok[1] != text:
            raise _Unparsable
        return tok[3]

    def expr(self) -> _Node:
        cond = self.binary(0)
        if self.peek() != "?":
            return cond
        self.take()
        then = self.binary(0)
        self.expect(":")
        other = self.expr()
        return _Node("cond", cond.start, other.end, "?:", [cond, then, other])

    _LEVELS = (("||",), ("&&",), tuple(_RELATIONS), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> _Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek() in self._LEVELS[level]:
            op = self.take()[1]
            right = self.binary(level + 1)
            kind = "logic" if op in ("||", "&&") else "binary"
            left = _Node(kind, left.start, right.end, op, [left, right])
        return left

    def unary(self) -> _Node:
        if self.peek() in ("!", "-"):
            _k, op, start, _e = self.take()
            inner = self.unary()
            return _Node("unary", start, inner.end, op, [inner])
        return self.member()

    def member(self) -> _Node:
        node = self.primary()
        while self.peek() in (".", "["):
            if self.take()[1] == ".":
                _k, name, _s, end = self.take()
                if self.peek() == "(":
                    args, end = self.args(")")
                    node = _Node("call", node.start, end, name, [node, *args])
                else:
                    node = _Node("member", node.start, end, name, [node])
            else:
                index = self.expr()
                end = self.expect("]")
                node = _Node("index", node.start, end, "[]", [node, index])
        return node

    def args(self, close: str) -> tuple[list[_Node], int]:
        self.expect("(" if close == ")" else self.take()[1])
        out: list[_Node] = []
        while self.peek() != close:
            out.append(self.expr())
            if self.peek() == ":":  # a map entry's value
                self.take()
                out.append(self.expr())
            if self.peek() == ",":
                self.take()
        return out, self.expect(close)

    def primary(self) -> _Node:
        kind, text, start, end = self.take()
        if kind in ("string", "number"):
            return _Node("other", start, end)
        if text == "(":
            inner = self.expr()
            return _Node("other", start, self.expect(")"), "()", [inner])
        if text in ("[", "{"):
            self.i -= 1
            close = "]" if text == "[" else "}"
            items, end = self._items(close)
            return _Node("other", start, end, text, items)
        if text == ".":
            kind, text, _s, end = self.take()
        if kind != "name":
            raise _Unparsable
        if self.peek() == "(":
            args, end = self.args(")")
            return _Node("call", start, end, text, args)
        return _Node("other", start, end)

    def _items(self, close: str) -> tuple[list[_Node], int]:
        self.take()
        out: list[_Node] = []
        while self.peek() != close:
            out.append(self.expr())
            if self.peek() == ":":
                self.take()
                out.append(self.expr())
            if self.peek() == ",":
                self.take()
        return out, self.expect(close)


_UNSET = object()


def _value(text: str, context: Any) -> Any:
    """The value of a sub-expression, or _UNSET when it does not evaluate on its own (it fails, or
    reads a comprehension's variable)."""
    try:
        return cel.compile(text).execute(context)
    except Exception:  # the cel package raises many kinds; any means "cannot say"
        return _UNSET


def cel_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "bool",
        int: "int",
        float: "double",
        str: "string",
        bytes: "bytes",
        list: "list",
        dict: "map",
    }.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{cel_type(value)} ({text if len(text) <= 40 else text[:37] + '...'})"


def explain(source: str, context: Any) -> str | None:
    """What the innermost failing operation of `source` saw, in one sentence; None if unknown."""
    if len(source) > MAX_SOURCE:
        return None
    try:
        parser = _Parser(source)
        root = parser.expr()
        if parser.i != len(parser.toks):
            return None
    except (_Unparsable, RecursionError):
        return None
    return _find(root, source, context)


def _bind(context: Any, name: str, value: Any) -> Any:
    """`context` with one more variable (a macro's), leaving the caller's context as it was."""
    if isinstance(context, cel.Context):
        return cel.Context(variables={**context.variables, name: value}, functions=context.functions)
    return {**context, name: value}


def _span(source: str, node: _Node) -> str:
    return " ".join(source[node.start : node.end].split())


def _macro(node: _Node, source: str, context: Any, text: str) -> str | None:
    """A macro that fails: its body explained with the variable bound to each item in turn (the
    first item it fails on), or a condition that gives something other than a bool."""
    target = _value(source[node.children[0].start : node.children[0].end], context)
    if not isinstance(target, (list, dict)):
        return None
    var = _span(source, node.children[1])
    # all/exists/exists_one/filter test their last argument; map(x, cond, value) its middle one.
    if node.op == "map":
        test = node.children[2] if len(node.children) == 4 else None
    else:
        test = node.children[-1]
    for item in list(target)[:_MACRO_ITEMS]:
        bound = _bind(context, var, item)
        if node.op == "map" and test is not None and _value(source[test.start : test.end], bound) is False:
            continue  # map's value is not computed for an item its condition leaves out
        for body in node.children[2:]:
            found = _find(body, source, bound)
            if found is not None:
                return f"{found} (where {var} = {_shown(item)})"
        if test is not None:
            got = _value(source[test.start : test.end], bound)
            if got is not _UNSET and not isinstance(got, bool):
                return (
                    f"`{text}`: the condition `{_span(source, test)}` is not a bool but {_shown(got)} "
                    f"(where {var} = {_shown(item)})"
                )
    return None


def _find(node: _Node, source: str, context: Any) -> str | None:
    for child in node.children:
        found = _find(child, source, context)
        if found is not None:
            return found
    if node.kind == "other" or _value(source[node.start : node.end], context) is not _UNSET:
        return None
    text = _span(source, node)
    text = text if len(text) <= 80 else text[:77] + "..."
    if node.kind == "call" and node.op in _MACROS and len(node.children) >= 3:
        if _IDENT.fullmatch(_span(source, node.children[1])):
            return _macro(node, source, context, text)
    if node.kind == "cond":
        cond = _value(source[node.children[0].start : node.children[0].end], context)
        if cond is _UNSET or isinstance(cond, bool):
            return None  # the branch taken failed on its own, or cannot say
        return f"`{text}`: the condition `{_span(source, node.children[0])}` is not a bool but {_shown(cond)}"
    values = [_value(source[c.start : c.end], context) for c in node.children]
    if any(v is _UNSET for v in values):
        return None  # an operand does not evaluate here (a comprehension's variable): cannot say
    subject = _span(source, node.children[0]) if node.children else ""
    if node.kind == "logic":
        return f"`{text}`: {node.op} takes bools, got {_shown(values[0])} and {_shown(values[1])}"
    if node.kind == "binary":
        left, right = values
        return f"`{text}`: {node.op} cannot combine {_shown(left)} and {_shown(right)}"
    if node.kind == "unary":
        return f"`{text}`: {node.op} does not apply to {_shown(values[0])}"
    if node.kind == "member":
        if values[0] is None:
            return f"`{text}`: `{subject}` is null, which has no field `{node.op}`"
        return f"`{text}`: {_shown(values[0])} has no field `{node.op}`"
    if node.kind == "index":
        target, key = values
        if target is None:
            return f"`{text}`: `{subject}` is null, which cannot be indexed"
        if key is None:
            where = f"{cel_type(target)} `{subject}`"
            return f"`{text}`: the index is null (not set yet?), so it names nothing in {where}"
        return f"`{text}`: {cel_type(target)} `{subject}` cannot be indexed with {_shown(key)}"
    if node.kind == "call":
        shown = ", ".join(_shown(v) for v in values)
        return f"`{text}`: `{node.op}` does not take {shown or 'no arguments'}"
    return None
