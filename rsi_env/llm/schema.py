"""Structured output: the caller's JSON Schema rewritten for each server dialect, and replies checked
against the original schema.

Validation uses the `jsonschema` package. It is slower than the home-made validator it replaced,
and that does not matter: `scripts/bench_client.py` (its validation rows) measured, on the shared
2-core box, ~0.03-0.3 ms per action reply and ~14 ms per whole game spec (home-made: ~0.02 ms and
~0.9 ms), against ~5 ms of client CPU per structured call on loopback, 0.1-2 s of wall time per move
and many seconds per generated spec. Validation is a few per cent of a call's CPU and under 1% of
its time, so it is not the bottleneck.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

import jsonschema
import referencing.exceptions
from jsonschema.exceptions import ValidationError

_MAX_ENUM_RANGE = 128
_MAX_GRAMMAR_STRING = 1000  # longest maxLength sent to a llama.cpp grammar (see long_strings_unbounded)
_SIZE_KEYWORDS = {"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"}
_SHORT = 60


# -- validation -------------------------------------------------------------------------------------


def validate_json(instance: Any, schema: dict[str, Any] | bool) -> str | None:
    """Check `instance` against a JSON Schema (draft 2020-12 unless it names its own `$schema`).

    Returns the first problem as one short line naming its path (`$.books: 9 is greater than the
    maximum of 3`), or None when the instance is valid.
    """
    if not isinstance(schema, dict | bool):
        raise TypeError(f"schema must be a dict or bool, got {type(schema).__name__}")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        errors = list(cls(schema).iter_errors(instance))
    except referencing.exceptions.Unresolvable as e:
        raise ValueError(f"the schema has a $ref that cannot be resolved: {e}") from None
    if not errors:
        return None
    return _describe(_first_problem(errors))


def _first_problem(errors: Iterable[ValidationError]) -> ValidationError:
    """The error a model should fix first. Under anyOf/oneOf it is the one of the alternative the
    instance came closest to: the one with fewest `const` mismatches (an action schema's branches
    differ by `{"action": {"const": ...}}`), then fewest errors. jsonschema's own `best_match`
    prefers the shallowest error and would report "'accept' was expected" for a proposal whose only
    problem is a number out of range."""
    error = min(errors, key=lambda e: (e.validator == "const", len(e.absolute_path)))
    while error.context:
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        consts = [[e for e in errs if e.validator == "const"] for errs in branches.values()]
        paths = {tuple(e.absolute_path) for errs in consts for e in errs}
        if all(consts) and len(paths) == 1:
            # Every alternative wants another constant at the same place: the value is simply not
            # one of them (an unknown action name).
            return _not_one_of(error, [c[0] for c in consts])
        best = min(branches.values(), key=lambda errs: (sum(e.validator == "const" for e in errs), len(errs)))
        error = min(best, key=lambda e: (e.validator == "const", len(e.absolute_path)))
    return error


def _not_one_of(parent: ValidationError, const_errors: list[ValidationError]) -> ValidationError:
    first = const_errors[0]
    allowed = ", ".join(json.dumps(e.validator_value) for e in const_errors)
    return ValidationError(
        f"{_short(first.instance)} is not one of {allowed}",
        validator="const",
        path=first.absolute_path,
        instance=first.instance,
        validator_value=[e.validator_value for e in const_errors],
        schema=parent.schema,
    )


def _describe(error: ValidationError) -> str:
    # jsonschema puts the whole offending value in its messages (a 5000-char string, a whole object):
    # shortened, so the line stays readable in a record and in a repair prompt.
    message = error.message
    with_repr = repr(error.instance)
    if len(with_repr) > _SHORT and with_repr in message:
        message = message.replace(with_repr, _short(error.instance))
    if error.validator in _SIZE_KEYWORDS and str(error.validator) not in message:
        message += f" ({error.validator} {error.validator_value})"
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{path}: {message}"


def _short(v: Any, n: int = _SHORT) -> str:
    try:
        s = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= n else s[: n - 1] + "…"


# -- rewriting per dialect ----------------------------------------------------------------------------


def bounded_ints_to_enum(schema: Any) -> Any:
    """Rewrite small bounded integer ranges to enum, recursively (returns a copy).

    llama-cpp-python's grammar converter ignores minimum/maximum but enforces enum, so this makes the
    bounds hold in its output too. Validation still re-checks the reply.
    """
    if isinstance(schema, list):
        return [bounded_ints_to_enum(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded_ints_to_enum(v) for k, v in schema.items()}
    if out.get("type") == "integer" and "enum" not in out and "const" not in out:
        lo, hi = out.get("minimum"), out.get("maximum")
        xmin, xmax = out.get("exclusiveMinimum"), out.get("exclusiveMaximum")
        if isinstance(xmin, int | float):
            lo = max(x for x in (lo, math.floor(xmin) + 1) if x is not None)
        if isinstance(xmax, int | float):
            hi = min(x for x in (hi, math.ceil(xmax) - 1) if x is not None)
        if isinstance(lo, int | float) and isinstance(hi, int | float) and 0 <= hi - lo <= _MAX_ENUM_RANGE:
            mult = out.get("multipleOf")
            values = [v for v in range(math.ceil(lo), math.floor(hi) + 1) if not mult or v % mult == 0]
            if values:
                out["enum"] = values
    return out


def long_strings_unbounded(schema: Any) -> Any:
    """Drop `maxLength` above _MAX_GRAMMAR_STRING, recursively (returns a copy).

    llama.cpp's grammar unrolls `maxLength: N` into N optional characters; at ~1200 the
    llama-cpp-python server crashes on the request. Validation still enforces the limit.
    """
    if isinstance(schema, list):
        return [long_strings_unbounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: long_strings_unbounded(v) for k, v in schema.items()}
    if isinstance(out.get("maxLength"), int) and out["maxLength"] > _MAX_GRAMMAR_STRING:
        del out["maxLength"]
    return out


def strict_compatible(schema: Any, *, root: bool = True) -> bool:
    """Whether OpenAI's strict structured outputs would accept the schema as is."""
    if root and not (isinstance(schema, dict) and schema.get("type") == "object"):
        return False  # strict mode wants an object at the root
    if isinstance(schema, list):
        return all(strict_compatible(s, root=False) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties", True) is not False:
            return False
        if set(schema.get("required", [])) != set(props):
            return False
    return all(strict_compatible(v, root=False) for k, v in schema.items() if k not in ("enum", "const"))


def schema_name(name: str) -> str:
    """A name OpenAI accepts for `json_schema.name` (letters, digits, `_`, `-`; at most 64)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]
    return cleaned or "response"


def schema_instruction(schema: dict[str, Any]) -> str:
    """The prompt dialect's request (and every repair note's): the schema, spelt out."""
    return (
        "Reply with a single JSON value and nothing else: no prose, no code fences. "
        "It must validate against this JSON Schema:\n" + json.dumps(schema, separators=(",", ":"))
    )


def with_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """`messages` with `note` appended to the system message (one is added when there is none)."""
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{note}"
        return [first, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def response_format(
    schema: dict[str, Any], name: str, dialect: str
) -> tuple[dict[str, Any] | None, str | None]:
    """What a request in `dialect` carries for `schema`: (response_format, system note to add)."""
    if dialect == "json_schema":
        rf = {
            "type": "json_schema",
            "json_schema": {"name": schema_name(name), "schema": schema, "strict": strict_compatible(schema)},
        }
        return rf, None
    if dialect == "json_object":
        grammar = long_strings_unbounded(bounded_ints_to_enum(schema))
        return {"type": "json_object", "schema": grammar}, None
    return None, schema_instruction(schema)
