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
    """Does `action` satisfy one branch of an action schema (const/enum/bounds/required)?"""
    for b in schema_branches(schema):
        props = b["properties"]
        if props["action"]["const"] != action.get("action"):
            continue
        if any(k not in action for k in b["required"]) or any(k not in props for k in action):
            return False
        for k, v in action.items():
            s = props[k]
            if "enum" in s and v not in s["enum"]:
                return False
            if s.get("type") == "integer" and (isinstance(v, bool) or not isinstance(v, int)):
                return False
            if s.get("type") in ("integer", "number"):
                if (
                    not isinstance(v, int | float)
                    or v < s.get("minimum", -np.inf)
                    or v > s.get("maximum", np.inf)
                ):
                    return False
            if s.get("type") == "string" and not isinstance(v, str):
                return False
        return True
    return False


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
        if "const" in s:
            out[k] = s["const"]
        elif "enum" in s:
            if not s["enum"]:
                return None
            out[k] = s["enum"][int(rng.integers(len(s["enum"])))]
        elif s.get("type") == "integer":
            lo, hi = s.get("minimum", 0), s.get("maximum", s.get("minimum", 0) + 10)
            out[k] = int(rng.integers(lo, hi + 1)) if hi >= lo else lo
        elif s.get("type") == "number":
            lo, hi = s.get("minimum", 0.0), s.get("maximum", 10.0)
            out[k] = float(rng.uniform(lo, hi))
        elif s.get("type") == "boolean":
            out[k] = bool(rng.random() < 0.5)
        else:
            out[k] = _PHRASES[int(rng.integers(len(_PHRASES)))]
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

    Falls back to a random legal action when no rule applies (every game stays playable).
    """

    def __init__(self, spec: GameSpec, seed: int | None = None, name: str = "scripted") -> None:
        self.name = name
        self.game = compiled(spec)
        self.fallback = RandomAgent(seed)
        self.last: TurnReport | None = None
        self.rules_used: list[int] = []

    def choose(self, info: dict[str, Any]) -> str:
        schema = info.get("action_schema")
        view = info.get("view")
        if schema is None or view is None:
            return ""
        scope = view_scope(self.game.spec, view)
        for i, (rule, when, args, message) in enumerate(self.game.policy):
            try:
                if when is not None and not when(scope):
                    continue
                action: dict[str, Any] = {"action": rule.action}
                for k, e in args.items():
                    action[k] = e(scope)
                if message is not None:
                    action["message"] = str(message(scope))
            except ExprError:
                continue  # a rule that does not apply to this state
            if fits(action, schema):
                self.rules_used.append(i)
                return json.dumps(action)
        self.rules_used.append(-1)
        return self.fallback.choose(info)

    async def act(self, observation: Any, info: dict[str, Any]) -> str:
        raw = self.choose(info)
        self.last = TurnReport(raw=raw)
        return raw
