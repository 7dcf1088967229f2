"""Baseline agents that need no model: uniform random over legal actions, and the scripted policy.

The scripted agent runs the game's own `policy` rules (declared in its spec) on the player's view,
the same structured information an LLM agent reads as text: it never sees hidden state.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..compiled import compiled
from ..expr import ExprError, seeded_rng
from ..spec import GameSpec
from ..view import view_scope
from .base import TurnReport

_PHRASES = [
    "Let's make this work for both of us.",
    "I think this is fair.",
    "What do you need most?",
    "I'm not sure about that.",
    "Trust me on this one.",
]


def schema_branches(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not schema:
        return []
    return list(schema["anyOf"]) if "anyOf" in schema else [schema]


def fits(action: dict[str, Any], schema: dict[str, Any] | None) -> bool:
    """Does `action` satisfy one branch of an action schema (const/enum/bounds/required, lists and
    objects item by item)?"""
    for b in schema_branches(schema):
        props = b["properties"]
        if props["action"]["const"] != action.get("action"):
            continue
        if any(k not in action for k in b["required"]) or any(k not in props for k in action):
            return False
        return all(k == "action" or _fits_value(v, props[k]) for k, v in action.items())
    return False


def _fits_value(v: Any, s: dict[str, Any]) -> bool:
    if "enum" in s and v not in s["enum"]:
        return False
    t = s.get("type")
    if t == "integer" and (isinstance(v, bool) or not isinstance(v, int)):
        return False
    if t in ("integer", "number"):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        return s.get("minimum", -np.inf) <= v <= s.get("maximum", np.inf)
    if t == "string":
        return isinstance(v, str)
    if t == "boolean":
        return isinstance(v, bool)
    if t == "array":
        if not isinstance(v, list) or not s.get("minItems", 0) <= len(v) <= s.get("maxItems", len(v)):
            return False
        if s.get("uniqueItems") and len({json.dumps(x, sort_keys=True) for x in v}) != len(v):
            return False
        return all(_fits_value(x, s.get("items", {})) for x in v)
    if t == "object":
        props = s.get("properties", {})
        if not isinstance(v, dict) or any(k not in v for k in s.get("required", [])):
            return False
        return all(k in props and _fits_value(x, props[k]) for k, x in v.items())
    return True


def sample_action(schema: dict[str, Any] | None, rng: np.random.Generator) -> dict[str, Any] | None:
    """A uniformly random legal action: a random branch, then random values within its bounds."""
    branches = schema_branches(schema)
    if not branches:
        return None
    b = branches[int(rng.integers(len(branches)))]
    out: dict[str, Any] = {}
    for k, s in b["properties"].items():
        if k not in b["required"] and rng.random() < 0.5:
            continue
        value = _sample_value(s, rng)
        if value is _NONE:
            return None
        out[k] = value
    return out


_NONE = object()  # no value fits (an empty enum)


def _sample_value(s: dict[str, Any], rng: np.random.Generator) -> Any:
    if "const" in s:
        return s["const"]
    if "enum" in s:
        if not s["enum"]:
            return _NONE
        return s["enum"][int(rng.integers(len(s["enum"])))]
    t = s.get("type")
    if t == "integer":
        lo, hi = s.get("minimum", 0), s.get("maximum", s.get("minimum", 0) + 10)
        return int(rng.integers(lo, hi + 1)) if hi >= lo else lo
    if t == "number":
        lo, hi = s.get("minimum", 0.0), s.get("maximum", 10.0)
        return float(rng.uniform(lo, hi))
    if t == "boolean":
        return bool(rng.random() < 0.5)
    if t == "array":
        return _sample_list(s, rng)
    if t == "object":
        out = {}
        for k, f in s.get("properties", {}).items():
            if k not in s.get("required", []) and rng.random() < 0.5:
                continue
            value = _sample_value(f, rng)
            if value is _NONE:
                return _NONE
            out[k] = value
        return out
    return _PHRASES[int(rng.integers(len(_PHRASES)))]


def _sample_list(s: dict[str, Any], rng: np.random.Generator) -> Any:
    """A random list within the schema's length; all different when `uniqueItems` (drawn without
    replacement from an enum, else redrawn a few times)."""
    items = s.get("items", {})
    lo, hi = s.get("minItems", 0), s.get("maxItems", s.get("minItems", 0) + 3)
    pool = items.get("enum")
    if s.get("uniqueItems") and pool is not None:
        hi = min(hi, len(pool))
        if hi < lo:
            return _NONE
        k = int(rng.integers(lo, hi + 1))
        return [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]
    k = int(rng.integers(lo, min(hi, lo + 8) + 1)) if hi >= lo else lo
    out: list[Any] = []
    seen: set[str] = set()
    for _ in range(k * 4 + 4):
        if len(out) == k:
            break
        value = _sample_value(items, rng)
        if value is _NONE:
            return _NONE
        key = json.dumps(value, sort_keys=True)
        if s.get("uniqueItems") and key in seen:
            continue
        seen.add(key)
        out.append(value)
    return out


class RandomAgent:
    """Picks a legal action uniformly at random (seeded)."""

    def __init__(self, seed: int | None = None, name: str = "random") -> None:
        self.name = name
        self.rng = seeded_rng(seed)
        self.last: TurnReport | None = None

    def choose(self, info: dict[str, Any]) -> str:
        action = sample_action(info.get("action_schema"), self.rng)
        return json.dumps(action) if action is not None else ""

    async def act(self, observation: Any, info: dict[str, Any]) -> str:
        raw = self.choose(info)
        self.last = TurnReport(raw=raw)
        return raw


class ScriptedAgent:
    """Follows the spec's `policy` rules in order; the first rule that yields a legal action wins.

    Adjacent rules with a `weight` are one mixed choice: among those that apply, one is drawn in
    proportion to its weight (seeded). An argument that gives null is left out. A rule whose
    expression fails is skipped, and the failure is kept in `warnings` (rule, player, turn, error)
    for the episode record. Falls back to a random legal action when no rule applies (every game
    stays playable).
    """

    def __init__(self, spec: GameSpec, seed: int | None = None, name: str = "scripted") -> None:
        self.name = name
        self.game = compiled(spec)
        self.fallback = RandomAgent(seed)
        self.rng = seeded_rng(None if seed is None else seed + 1)
        self.last: TurnReport | None = None
        self.rules_used: list[int] = []
        self.warnings: list[str] = []

    def choose(self, info: dict[str, Any]) -> str:
        schema = info.get("action_schema")
        view = info.get("view")
        if schema is None or view is None:
            return ""
        scope = view_scope(self.game.spec, view)
        rules = self.game.policy
        weights = self.game.policy_weights
        i = 0
        while i < len(rules):
            if weights[i] is None:
                action = self._try(i, scope, schema, view)
                if action is not None:
                    self.rules_used.append(i)
                    return json.dumps(action)
                i += 1
                continue
            group = [i]  # a run of weighted rules: one mixed choice
            while group[-1] + 1 < len(rules) and weights[group[-1] + 1] is not None:
                group.append(group[-1] + 1)
            picked = self._mixed(group, scope, schema, view)
            if picked is not None:
                self.rules_used.append(picked[0])
                return json.dumps(picked[1])
            i = group[-1] + 1
        self.rules_used.append(-1)
        return self.fallback.choose(info)

    def _try(self, i: int, scope: Any, schema: dict[str, Any], view: dict[str, Any]) -> dict[str, Any] | None:
        """Rule `i`'s action if it applies and is legal now, else None (a failure is a warning)."""
        rule, when, args, message = self.game.policy[i]
        field = f"policy[{i}].when"
        try:
            if when is not None and when(scope) is not True:
                return None
            action: dict[str, Any] = {"action": rule.action}
            for k, e in args.items():
                field = f"policy[{i}].args.{k}"
                value = e(scope)
                if value is not None:  # null leaves an optional argument out
                    action[k] = value
            if message is not None:
                field = f"policy[{i}].message"
                action["message"] = str(message(scope))
        except ExprError as exc:
            self._warn(field, view, exc)
            return None
        return action if fits(action, schema) else None

    def _mixed(
        self, group: list[int], scope: Any, schema: dict[str, Any], view: dict[str, Any]
    ) -> tuple[int, dict[str, Any]] | None:
        """One of the weighted rules that apply, drawn in proportion to their weights."""
        options: list[tuple[int, dict[str, Any], float]] = []
        for i in group:
            weight_expr = self.game.policy_weights[i]
            assert weight_expr is not None
            try:
                w = weight_expr(scope)
            except ExprError as exc:
                self._warn(f"policy[{i}].weight", view, exc)
                continue
            if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
                self._warn(f"policy[{i}].weight", view, f"expected a number >= 0, got {w!r}")
                continue
            if w > 0 and (action := self._try(i, scope, schema, view)) is not None:
                options.append((i, action, float(w)))
        if not options:
            return None
        total = sum(w for _, _, w in options)
        r = self.rng.random() * total
        for i, action, w in options:
            r -= w
            if r < 0:
                return i, action
        return options[-1][0], options[-1][1]

    def _warn(self, field: str, view: dict[str, Any], error: Any) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(
                f"{field} failed for {view.get('me')} "
                f"(turn {view.get('turn')}, phase {view.get('phase')}): {error}"
            )

    async def act(self, observation: Any, info: dict[str, Any]) -> str:
        before = len(self.warnings)
        raw = self.choose(info)
        self.last = TurnReport(raw=raw, warnings=self.warnings[before:])
        return raw


MAX_WARNINGS = 100  # per agent and episode: a rule failing at every turn says it once per turn, up to this
