"""Actions as text: a forgiving parser for model output, typed parameter checks, and JSON Schemas.

An action is one JSON object: `{"action": "propose", "books": 1, "message": "..."}`. Models get
that wrong in many small ways, so the parser accepts near-JSON (code fences, single quotes, bare
keys, trailing commas, prose around the object, `{"propose": {...}}`, `{"action": ..., "args":
{...}}`, a bare action name, `name key=value`) and never raises: it returns an error message that
the player sees as feedback. Anything it cannot read is an invalid attempt, not an exception.
The JSON itself is found by rsi_env's one extractor (`rsi_env.llm.jsonparse`), the same that reads
model replies everywhere else; this module adds what is particular to actions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .llm.jsonparse import extract_json

# Bounds that keep parsing cheap on adversarial input (huge or deeply nested strings).
MAX_TEXT_CHARS = 20_000
MAX_REPAIR_CHARS = 2_000  # json_repair is slow on long garbage; real actions are far shorter

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*")
_ACTION_KEYS = ("action", "type", "name", "move", "act", "command")
_ARGS_KEYS = ("args", "params", "parameters", "arguments", "input")
_KV = re.compile(r"([A-Za-z_]\w*)\s*[=:]\s*(\"[^\"]*\"|'[^']*'|[^\s,;)]+)")
_PLAYER_NUM = re.compile(r"^(?:player[\s_-]*)?(\d+)$", re.IGNORECASE)


@dataclass
class Parsed:
    """What the parser made of a reply: an action name and raw arguments, or an error."""

    name: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _lookup_name(raw: Any, names: dict[str, str]) -> str | None:
    if not isinstance(raw, str):
        return None
    key = raw.strip().lower().replace("-", "_").replace(" ", "_")
    return names.get(key)


def parse_action(text: Any, action_names: list[str]) -> Parsed:
    """Read one action from arbitrary text. Never raises."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = text.strip()[:MAX_TEXT_CHARS]
    if not text:
        return Parsed(error='empty reply; answer with one JSON object like {"action": "...", ...}')
    names = {n.lower(): n for n in action_names}
    # json_repair (~4 ms on 1,000 characters of garbage) only when its object could name an action:
    # `_lookup_name` reads a name lower-cased, with `-` and spaces as `_`, so the text must hold one so.
    plain = text.lower().replace("-", "_").replace(" ", "_")
    lenient = any(n in plain for n in names)
    try:
        obj = extract_json(text, lenient=lenient, object_only=True, max_repair_chars=MAX_REPAIR_CHARS)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and obj:
        return _from_object(obj, names)

    # No usable object: `accept`, `propose books=1 hats=2`, `propose(books=1)`.
    cleaned = _FENCE.sub(" ", text)
    head = re.match(r"\s*([A-Za-z_][\w-]*)", cleaned)
    if head and (name := _lookup_name(head.group(1), names)):
        args = {k: _scalar(v) for k, v in _KV.findall(cleaned[head.end() :])}
        return Parsed(name=name, args=args)
    return Parsed(error=f"no JSON object found; expected one of the actions {action_names} as JSON")


def _scalar(raw: str) -> Any:
    raw = raw.strip().strip("\"'")
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _from_object(obj: dict[str, Any], names: dict[str, str]) -> Parsed:
    args = dict(obj)
    name = None
    for key in _ACTION_KEYS:
        if key in args and (name := _lookup_name(args[key], names)):
            del args[key]
            break
    if name is None:
        # {"propose": {"books": 1}} or {"accept": true}
        for key in list(args):
            if found := _lookup_name(key, names):
                name = found
                inner = args.pop(key)
                if isinstance(inner, dict):
                    args.update(inner)
                break
    if name is None:
        said = next((obj[k] for k in _ACTION_KEYS if k in obj), None)
        if said is not None:
            return Parsed(error=f"unknown action {str(said)[:60]!r}; legal actions: {sorted(names.values())}")
        return Parsed(error=f'missing "action" field; legal actions: {sorted(names.values())}')
    for key in _ARGS_KEYS:
        if isinstance(args.get(key), dict):
            args.update(args.pop(key))
    return Parsed(name=name, args=args)


# --- typed parameters ---------------------------------------------------------------------------


def coerce_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        if re.fullmatch(r"[+-]?\d{1,18}", s):
            return int(s)
        if re.fullmatch(r"[+-]?\d{1,18}\.0*", s):
            return int(float(s))
    return None


def coerce_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        f = float(value)
        return f if f == f and abs(f) != float("inf") else None
    if isinstance(value, str):
        try:
            f = float(value.strip()[:40])
        except ValueError:
            return None
        return f if f == f and abs(f) != float("inf") else None
    return None


def coerce_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("true", "yes", "y", "1"):
            return True
        if s in ("false", "no", "n", "0"):
            return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def coerce_choice(value: Any, choices: list[str]) -> str | None:
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    s = str(value).strip()
    if s in choices:
        return s
    low = s.lower()
    for c in choices:
        if c.lower() == low:
            return c
    return None


def coerce_player(value: Any, candidates: list[str], all_players: list[str]) -> str | None:
    """A player reference: its id (any case), `player 1`, or its seat number."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    s = str(value).strip()
    found = coerce_choice(s, all_players)
    if found is None and (m := _PLAYER_NUM.match(s)):
        seat = int(m.group(1))
        found = all_players[seat] if seat < len(all_players) else None
    return found if found in candidates else None


def _load_value(text: str) -> Any:
    """The JSON in a list or object argument given as text (None if there is none)."""
    try:
        return extract_json(text[:MAX_REPAIR_CHARS], lenient=True, max_repair_chars=MAX_REPAIR_CHARS)
    except ValueError:
        return None


def coerce_list(text: str) -> Any:
    """A list given as text: a JSON list (`["a", "b"]`), or items separated by commas (`a, b`)."""
    s = text.strip()[:MAX_TEXT_CHARS]
    if s.startswith("["):
        loaded = _load_value(s)
        return loaded if isinstance(loaded, list) else text
    return [_scalar(part) for part in s.split(",") if part.strip()]


def coerce_object(text: str) -> Any:
    """An object given as text holding JSON (`{"unit": "a", "to": "b"}`)."""
    loaded = _load_value(text.strip())
    return loaded if isinstance(loaded, dict) else text


def clip_text(value: Any, max_length: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        value = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return value[:max_length]


# --- JSON Schema for structured output --------------------------------------------------------------


def action_schema(branches: list[dict[str, Any]]) -> dict[str, Any]:
    """One object schema per legal action, joined with anyOf (llama.cpp grammars and OpenAI accept it)."""
    if len(branches) == 1:
        return branches[0]
    return {"anyOf": branches}


def action_branch(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict:
    return {
        "type": "object",
        "description": description[:300],
        "properties": {"action": {"const": name}, **properties},
        "required": ["action", *required],
        "additionalProperties": False,
    }
