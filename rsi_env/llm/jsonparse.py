"""The JSON value in a model's reply: the one extractor of rsi_env.

`ChatClient` reads structured output with it, the game generator reads whole specs with it, and the
action parser (`rsi_env.actions`) reads moves with it. Replies are untrusted, so every step is
bounded: a fixed number of starting points, a nesting limit (also on what Python's parser accepts: it
reads ~1,000 levels, which then overflow the recursion of whatever walks the value, a JSON Schema
check or `json.dumps`), and a size limit for the slow lenient pass. It raises ValueError with a short
reason, which callers show the model or record.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from typing import Any

import json_repair

from ..untrusted import MAX_JSON_DEPTH, json_depth

MAX_STARTS = 32  # `{` / `[` tried as the start of the JSON; prose before it may hold brackets too
# The threat model's JSON depth; deeper brackets are not handed to json_repair either (it recurses
# per level).
MAX_NESTING = MAX_JSON_DEPTH
MAX_REPAIR_STARTS = 4  # spans handed to json_repair, which is ~10 µs per char on garbage
MAX_REPAIR_CHARS = 40_000  # ~0.5 s of json_repair at worst: a whole game spec fits

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
# strict=False: models put raw newlines and tabs inside strings (a multi-line message); the meaning is
# unambiguous, so it is accepted rather than sent back for repair.
_DECODER = json.JSONDecoder(strict=False)


def extract_json(
    text: str,
    *,
    lenient: bool = False,
    object_only: bool = False,
    max_repair_chars: int = MAX_REPAIR_CHARS,
) -> Any:
    """The JSON value in `text`, tolerating code fences and prose around it.

    Tried in order, the first success wins:
    1. the whole text;
    2. the first fenced block (```json ... ```), then the whole text, each from every `{` or `[` in
       turn (up to MAX_STARTS): the first well-formed value;
    3. with `lenient`: json_repair's best effort (single quotes, bare keys, trailing commas, missing
       closing brackets) on the bracketed span from each of the first starts, fenced block first.
       A well-formed value anywhere beats a broken one before it.
    `object_only`: only a JSON object counts (an action is one); otherwise any value does in 1-2
    and a non-empty object or array, as its first bracket says, in 3.
    """
    s = text.strip()
    if not s:
        raise ValueError("the reply is empty")
    wanted = (dict,) if object_only else (object,)
    # Few brackets (every action): nothing can be nested too deep, and no value is walked for depth.
    deep_possible = s.count("[") + s.count("{") > MAX_NESTING
    with contextlib.suppress(ValueError, RecursionError):
        value = json.loads(s, strict=False)
        if isinstance(value, wanted) and not (deep_possible and json_depth(s) > MAX_NESTING):
            return value
    candidates = [s]
    m = _FENCE_RE.search(s)
    if m is not None and m.group(2).strip():
        candidates.insert(0, m.group(2).strip())  # the fenced block first; the whole text if that fails
    opening = "{" if object_only else "{["
    last_error = "no JSON object found" if object_only else "no JSON object or array found"
    for cand in candidates:
        starts = _starts(cand, opening, MAX_STARTS)
        inside = -1  # the end of a value refused as too deep: the starts within it are its own parts
        for start in starts:
            if start < inside:
                continue
            try:
                value, _end = _DECODER.raw_decode(cand, start)
            except json.JSONDecodeError as e:
                if cand is s and start == starts[0]:
                    last_error = f"{e.msg} at char {e.pos}"
                continue
            except RecursionError:
                last_error = "the JSON is nested too deeply"
                continue
            if deep_possible and json_depth(cand[start:_end]) > MAX_NESTING:
                last_error = f"the JSON is nested more than {MAX_NESTING} levels deep"
                inside = _end
                continue
            if isinstance(value, wanted):
                return value
    if lenient:
        for cand in candidates:
            starts = _starts(cand, opening, MAX_REPAIR_STARTS)
            inside = -1
            for start in starts:
                if start < inside:
                    continue
                value, inside = _repaired(cand, start, max_repair_chars)
                # Of the same kind as its bracket: json_repair reads `{braces}` as ["braces}"].
                if value and isinstance(value, dict if cand[start] == "{" else list):
                    return value
    raise ValueError(f"the reply is not valid JSON ({last_error})")


_OPENINGS = {"{": re.compile(r"\{"), "{[": re.compile(r"[{\[]")}


def _starts(text: str, opening: str, limit: int) -> list[int]:
    """The positions of the first `limit` characters of `text` that are in `opening` (`{` or `{[`),
    found by a regex instead of a Python loop over every character (a 4,000-character reply of
    random text cost ~0.3 ms a scan, twice a reply)."""
    return [m.start() for m in itertools.islice(_OPENINGS[opening].finditer(text), limit)]


def _repaired(text: str, start: int, max_chars: int) -> tuple[Any, int]:
    """json_repair's reading of the bracketed span at `start` (None when it has none), and where the
    starts within a span nested too deep end (-1 for a span that was read)."""
    span, too_deep_until = _bracketed_span(text, start, max_chars)
    if span is None:
        return None, too_deep_until
    try:
        return json_repair.loads(span), -1
    except Exception:  # best effort by design: any failure means "nothing recoverable here"
        return None, -1


def _bracketed_span(text: str, start: int, max_chars: int) -> tuple[str | None, int]:
    """The text from `start` to its closing bracket, honouring "..." and '...' strings (models use
    both); the rest of the text (up to `max_chars`) if it never closes. (None, where the span ends)
    when it nests deeper than MAX_NESTING: the brackets inside it are its parts, not other values."""
    depth = 0
    in_str: str | None = None
    escape = False
    too_deep = False
    end = min(len(text), start + max_chars)
    for i in range(start, end):
        c = text[i]
        if in_str:
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == in_str:
                in_str = None
        elif c in "\"'":
            in_str = c
        elif c in "{[":
            depth += 1
            too_deep = too_deep or depth > MAX_NESTING
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return (None, i + 1) if too_deep else (text[start : i + 1], -1)
    return (None, end) if too_deep else (text[start:end], -1)
