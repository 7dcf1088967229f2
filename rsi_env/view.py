"""What one player may see: the structured view, the text observation an LLM reads, the action schema.

Visibility rules (the spec declares them per variable, role and action):
- state vars: `public` shown to all, `hidden` to none (referees read the trajectory instead);
- player vars: `public` to all, `private` to the owner, `team` to the owner's team, `hidden` to none;
- roles: your own; others' unless the role is `hidden` (team mates see it when the role `knows_team`);
- events: to everyone unless the action's visibility limits them; a player's view of a restricted
  event names no one else who saw it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from typing import Any

from . import actions as act
from .compiled import CompiledGame, compiled
from .engine import GameEngine
from .events import Event
from .expr import ExprError, OverBudget, Scope, copy_plain, select_functions
from .expr_budget import VIEW_LIMITS, Budget
from .spec import MAX_LIST_ITEMS, GameSpec
from .untrusted import one_line

DEFAULT_HISTORY = 24


_UNSET: Any = object()  # an argument not given


def _knows(engine: GameEngine, viewer: str, other: str) -> bool:
    """Does `viewer` know `other`'s role and team?"""
    if viewer == other:
        return True
    roles = {r.name: r for r in engine.spec.roles}
    other_role = roles[engine.role[other]]
    if not other_role.hidden:
        return True
    mine = roles[engine.role[viewer]]
    return mine.knows_team and engine.team[viewer] is not None and engine.team[viewer] == engine.team[other]


def _sees_var(engine: GameEngine, viewer: str, owner: str, visibility: str) -> bool:
    if visibility == "public":
        return True
    if visibility == "private":
        return viewer == owner
    if visibility == "team":
        return viewer == owner or (
            engine.team[viewer] is not None and engine.team[viewer] == engine.team[owner]
        )
    return False


def visible_events(engine: GameEngine, player: str | None, last: int | None = None) -> list[Event]:
    """Events `player` may see (all of them for `None`, the omniscient spectator); with `last`, only
    the last that many (found from the end: a view is rendered at every step of a long game)."""
    events = engine.events
    if player is None:
        return events if last is None else events[-last:] if last > 0 else []
    if last is None:
        return [e for e in events if e.visible_to is None or player in e.visible_to]
    seen: list[Event] = []
    for e in reversed(events):
        if len(seen) >= last:
            break
        if e.visible_to is None or player in e.visible_to:
            seen.append(e)
    seen.reverse()
    return seen


def player_view(
    engine: GameEngine, player: str, history: int = DEFAULT_HISTORY, schema: Any = _UNSET
) -> dict[str, Any]:
    """The structured view of `player`: plain data but for `events` (typed records, `model_dump` for
    JSON), and the scope the scripted policy evaluates in. `schema`: `action_schema(engine, player)`
    when the caller has it already (the env shows it beside the view)."""
    spec = engine.spec
    known = {p: _knows(engine, player, p) for p in engine.players}
    actors = engine.current_actors()
    if schema is _UNSET:
        schema = action_schema(engine, player) if player in actors else None
    return {
        "game": spec.id,
        "me": player,
        "players": engine.players,
        "n": len(engine.players),
        "role": {p: engine.role[p] for p in engine.players if known[p]},
        "team": {p: engine.team[p] for p in engine.players if known[p]},
        "phase": engine.phase,
        "turn": engine.turn,
        "forfeited": list(engine.forfeited),
        "options": engine.options,
        "actors": actors,
        "is_turn": player in actors,
        # The move a reaction window waits on (its action event is already in the log), else null.
        "pending": engine.pending_move(),
        "state": {k: engine.state[k] for k, v in spec.state.items() if v.visibility == "public"},
        "my": {k: engine.pstate[player][k] for k, v in spec.player_state.items() if v.visibility != "hidden"},
        "P": {
            p: {
                k: engine.pstate[p][k]
                for k, v in spec.player_state.items()
                if _sees_var(engine, player, p, v.visibility)
            }
            for p in engine.players
        },
        "events": [
            e if e.visible_to is None else _seen_by(e, player)
            for e in visible_events(engine, player, history)
        ],
        "done": engine.done,
        "payoffs": engine.payoffs,
        # A legal move to show as the answer's format (None when not on turn): tried on the engine,
        # so it is a move the game accepts, not only one its schema does.
        "example": _kept_example(engine, player, schema) if schema is not None else None,
    }


def action_schema(engine: GameEngine, player: str) -> dict[str, Any] | None:
    """JSON Schema of the legal actions of `player` right now (None when it is not its turn)."""
    names = engine.legal_actions(player)
    if not names:
        return None
    branches = []
    for name in names:
        a = engine.spec.actions[name]
        bounds = engine.param_bounds(player, name)
        props: dict[str, Any] = {}
        required: list[str] = []
        for pname, prm in a.params.items():
            props[pname] = _param_schema(prm, bounds[pname])
            if not prm.optional:
                required.append(pname)
        if a.message != "none":
            props["message"] = {"type": "string", "maxLength": 300}
            if a.message == "required":
                required.append("message")
        branches.append(act.action_branch(name, a.description, props, required))
    return act.action_schema(branches)


def _param_schema(prm: Any, b: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any]
    if prm.type == "list":
        s = {"type": "array", "items": _param_schema(prm.items, b.get("items", {}))}
        s["minItems"] = b.get("min_items", 0)
        s["maxItems"] = b.get("max_items", MAX_LIST_ITEMS)
        if prm.unique:
            s["uniqueItems"] = True
    elif prm.type == "object":
        fields = b.get("fields", {})
        s = {
            "type": "object",
            "properties": {k: _param_schema(f, fields.get(k, {})) for k, f in prm.fields.items()},
            "required": [k for k, f in prm.fields.items() if not f.optional],
            "additionalProperties": False,
        }
    elif prm.type in ("int", "float"):
        s = {"type": "integer" if prm.type == "int" else "number"}
        if isinstance(b.get("min"), int | float):
            s["minimum"] = b["min"]
        if isinstance(b.get("max"), int | float):
            s["maximum"] = b["max"]
    elif prm.type == "enum":
        s = {"type": "string", "enum": [str(v) for v in (b.get("values") or [])]}
    elif prm.type == "player":
        s = {"type": "string", "enum": list(b.get("candidates") or [])}
    elif prm.type == "bool":
        s = {"type": "boolean"}
    else:
        s = {"type": "string", "maxLength": prm.max_length}
    if prm.description:
        s["description"] = prm.description
    return s


def example_action(schema: dict[str, Any], branch_index: int = 0, variant: int = 0) -> dict[str, Any]:
    """An instance of one branch of an action schema (the first by default), shown to players as a
    format hint: required fields only, enum values and list items all different where the schema
    says `uniqueItems`. `variant` shifts the choices, for another candidate when one is refused."""
    branches = schema["anyOf"] if "anyOf" in schema else [schema]
    branch = branches[branch_index % len(branches)]
    return {k: _example_value(s, variant) for k, s in branch["properties"].items() if k in branch["required"]}


def _example_value(s: dict[str, Any], variant: int = 0) -> Any:
    if "const" in s:
        return s["const"]
    if "enum" in s:
        return s["enum"][variant % len(s["enum"])] if s["enum"] else ""
    t = s.get("type")
    if t in ("integer", "number"):
        lo = s.get("minimum", 0)
        hi = s.get("maximum", lo + variant)
        return min(lo + variant, hi)
    if t == "boolean":
        return variant % 2 == 0
    if t == "array":
        items = s.get("items", {})
        k = s.get("minItems", 0) or min(1, s.get("maxItems", 1))
        if s.get("uniqueItems"):
            pool = items.get("enum")
            if pool is not None:
                return [pool[(variant + i) % len(pool)] for i in range(min(k, len(pool)))]
            return [_example_value(items, variant + i) for i in range(k)]
        return [_example_value(items, variant) for _ in range(k)]
    if t == "object":
        req = s.get("required", [])
        return {k: _example_value(v, variant) for k, v in s.get("properties", {}).items() if k in req}
    # Text: "..." first (a placeholder for a message); when a game checks its text (codenames' clue
    # is one word of letters, no board word), a few plain words for the other variants.
    if variant == 0:
        return "..."
    return _TEXT_EXAMPLES[(variant - 1) % len(_TEXT_EXAMPLES)][: s.get("maxLength", 40)]


_TEXT_EXAMPLES = ("example", "idea", "plan", "hint", "yes", "word", "thought")


def _kept_example(engine: GameEngine, player: str, schema: dict[str, Any]) -> dict[str, Any]:
    """`legal_example` for `player_view`, whose schema is `action_schema(engine, player)`: a function
    of the engine's state, so the move found is kept on the engine until its next change
    (`GameEngine.examples`). An observation is rendered after every tick, and an invalid reply
    changes nothing, while trying the moves evaluates the actions' checks up to 8 times (codenames:
    ~2 ms). The work it did is charged to the tick again (over the tick's limit it is done again)."""
    hit = engine.examples.get(player)
    if hit is not None and engine.budget.replay(hit[1]):
        return copy_plain(hit[0])
    generation, used = engine.generation, engine.budget.tick_used
    move = legal_example(engine, player, schema)
    if engine.generation == generation and engine.budget.tick_used >= used:
        engine.examples[player] = (copy_plain(move), engine.budget.tick_used - used)
    return move


def legal_example(engine: GameEngine, player: str, schema: dict[str, Any], tries: int = 8) -> dict[str, Any]:
    """An example move `player` could make now: the first of a few schema instances (each branch in
    turn, with shifted choices) that the game accepts; the plain schema instance if none is."""
    branches = schema["anyOf"] if "anyOf" in schema else [schema]
    for variant in range(tries):
        for i in range(len(branches)):
            move = example_action(schema, i, variant)
            if engine.accepts(player, move):
                return move
    return example_action(schema)


def fmt_value(v: Any) -> str:
    """A value as observations show it. Strings and ints, most of what states hold, are told apart
    by their exact type first (every observation formats the whole public state: codenames' board
    and glossary are ~100 values)."""
    t = type(v)
    if t is str:
        return v
    if t is int:
        return str(v)
    if isinstance(v, dict):
        return "{" + ", ".join([f"{k}: {fmt_value(x)}" for k, x in v.items()]) + "}"
    if isinstance(v, list):
        return "[" + ", ".join([x if type(x) is str else fmt_value(x) for x in v]) + "]"
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# An event is frozen, and its line a function of it and its viewer; every observation shows the last
# DEFAULT_HISTORY events again (diplomacy: ~20 lines an observation, ~15% of rendering it). So the
# lines, and a restricted event's copy in its viewer's view, are kept for the latest KEPT_LINES,
# each beside its event, which keeps the event's id its own while it is kept. Ordered dicts: dropping
# a plain dict's oldest key (`next(iter(d))`) walks past every slot deleted before it, ~2 µs at this
# size against 0.3 µs.
KEPT_LINES = 4096
_LINES: OrderedDict[tuple[int, str | None], tuple[Event, str]] = OrderedDict()
_SEEN: OrderedDict[tuple[int, str], tuple[Event, Event]] = OrderedDict()
_KEPT_LOCK = threading.Lock()


def _keep(cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    with _KEPT_LOCK:
        if len(cache) >= KEPT_LINES:
            cache.popitem(last=False)  # the oldest
        cache[key] = value


def _seen_by(e: Event, viewer: str) -> Event:
    """`e.as_seen_by(viewer)`, the same object for the same event and viewer while it is kept."""
    hit = _SEEN.get((id(e), viewer))
    if hit is not None and hit[0] is e:
        return hit[1]
    seen = e.as_seen_by(viewer)
    _keep(_SEEN, (id(e), viewer), (e, seen))
    return seen


def event_line(e: Event, viewer: str | None = None) -> str:
    """One transcript line for an event (`_event_line`, kept)."""
    hit = _LINES.get((id(e), viewer))
    if hit is not None and hit[0] is e:
        return hit[1]
    line = _event_line(e, viewer)
    _keep(_LINES, (id(e), viewer), (e, line))
    return line


def _event_line(e: Event, viewer: str | None) -> str:
    """One transcript line for an event."""
    name = "you" if e.player is not None and e.player == viewer else e.player
    prefix = f"[t{e.turn}]"
    if e.kind == "action":
        # A player's text stays on its line: a message (or a text argument) with line breaks cannot
        # add lines that look like other moves or final payoffs; the message is quoted with its
        # quotes escaped, so it cannot end its quote either.
        body = e.text or f"{e.action}({', '.join(f'{k}={fmt_value(v)}' for k, v in e.args.items())})"
        line = f"{prefix} {name}: {one_line(body)}"
        if e.message:
            line += f" — says: {one_line(json.dumps(e.message, ensure_ascii=False))}"
        if e.visible_to is not None and viewer is None:
            line += f"  (seen by {', '.join(e.visible_to)})"
        return line
    if e.kind == "tell":
        to = e.visible_to[0] if e.visible_to else "?"
        return f"{prefix} (private to {to}) {e.text}" if viewer is None else f"{prefix} (private) {e.text}"
    if e.kind == "invalid":
        # The omniscient transcript quotes what an invalid move actually said.
        raw = e.raw if viewer is None else ""
        return f"{prefix} {name} — {one_line(e.text)}" + (f"  raw: {one_line(repr(raw[:80]))}" if raw else "")
    if e.kind == "committed":  # its text is the parsed move, already
        return f"{prefix} {name} — {e.text}"
    return f"{prefix} {e.text}"  # phase, announce, end; pass and forfeit name their player in the text


@cache
def _functions(names: frozenset[str]) -> dict[str, Callable[..., Any]]:
    """The pure CEL functions behind some names, looked up once per set of names (Scope only reads it)."""
    return select_functions(names)


def view_scope(spec: GameSpec, view: dict[str, Any]) -> Scope:
    """A CEL scope over a player's view (for hints and the scripted policy); events are left out,
    as converting them costs more than everything else together and no expression needs them."""
    values = {k: v for k, v in view.items() if k not in ("events", "example")}
    return Scope(values, _functions(compiled(spec).view_function_names), Budget(VIEW_LIMITS))


# Hints are pure functions of the view values they read, and those often repeat between observations
# (random play: codenames 66 distinct of 488, diplomacy 243 of 390), while evaluating them costs
# ~1-8 ms: the lines are kept per game under a digest of those values, for the latest HINT_CACHE.
HINT_CACHE = 256
_HINT_LINES: dict[CompiledGame, OrderedDict[bytes, tuple[list[str], list[str]]]] = {}
_HINT_LOCK = threading.Lock()


def _hints(spec: GameSpec, view: dict[str, Any], over_budget: list[str] | None = None) -> list[str]:
    """The hint lines of `view`. A hint that fails is not shown; one over the evaluation budget is
    not shown either, and named in `over_budget`: a spec error, which the dry run reports and the env
    records (the episode ends as `game_error`)."""
    game = compiled(spec)
    if not game.hints:
        return []
    # Every observation and every LLM prompt renders the hints: converting only the view variables
    # they read (not all players' views, roles, ...) makes that 2-5x cheaper, with the same result.
    values = {k: view[k] for k in sorted(game.hint_reads) if k in view}
    fields = game.hint_fields
    if fields is not None and isinstance(values.get("state"), dict):
        # Every hint reads state only as `state.f`: the fields they read are all it needs (the same
        # values, a field the view lacks missing as before), and the digest then ignores the others
        # (diplomacy: the promises and the orders' log change every turn, the armies once a year).
        values["state"] = {f: v for f, v in values["state"].items() if f in fields}
    key = _digest(values)
    with _HINT_LOCK:
        kept = _HINT_LINES.get(game)
        hit = kept.get(key) if kept is not None and key is not None else None
    if hit is None:
        hit = _evaluate_hints(game, values)
        if key is not None:
            with _HINT_LOCK:
                kept = _HINT_LINES.setdefault(game, OrderedDict())
                if len(kept) >= HINT_CACHE:
                    kept.popitem(last=False)  # the oldest
                kept[key] = hit
    lines, over = hit
    if over_budget is not None:
        over_budget.extend(over)
    return list(lines)


def _evaluate_hints(game: CompiledGame, values: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The hint lines over `values`, and the hints over the evaluation budget (with why)."""
    scope = Scope(values, _functions(game.view_function_names), Budget(VIEW_LIMITS))
    out: list[str] = []
    over: list[str] = []
    for label, expr in game.hints.items():
        if expr is None:
            continue
        try:
            out.append(f"- {label}: {fmt_value(expr(scope))}")
        except OverBudget as exc:
            over.append(f"hints.{label}: {exc}")
        except ExprError:
            continue  # a hint that does not apply in this state is simply not shown
    return out, over


def _digest(values: dict[str, Any]) -> bytes | None:
    """A digest of `values` that tells apart what CEL tells apart (`1`, `1.0` and `true`; `{1: x}`
    and `{"1": x}`): of their pickle, which records every type; None when they do not pickle."""
    try:
        data = pickle.dumps(values, protocol=5)
    except Exception:  # pickling raises what the object's own reducer raises
        return None
    return hashlib.blake2b(data, digest_size=16).digest()


def rules_head(spec: GameSpec) -> str:
    """How every full observation of a game starts: its name and rules."""
    return f"GAME: {spec.name}\nRULES:\n{spec.rules.strip()}\n"


def render_observation(
    spec: GameSpec,
    view: dict[str, Any],
    schema: dict | None,
    feedback: str | None = None,
    *,
    include_rules: bool = True,
    since_tick: int | None = None,
    first_prompt: str | None = None,
    last_prompt: str | None = None,
    over_budget: list[str] | None = None,
) -> str:
    """The text a player reads: a pure function of its view (LLM agents re-render compact turns).
    A hint over the evaluation budget is left out and named in `over_budget` (the env records it).

    `include_rules=False` and `since_tick` give the short form used after a player's first turn:
    no rules, and only the events since its previous turn. An LLM agent also passes the prompts its
    conversation still holds, so a turn says only what they do not (issue 18: a negotiation turn
    re-stated ~430 tokens of which ~60 were new, and every repeated token is model time):
    - `first_prompt` (the window always keeps it): a state, player or note line it states with the
      same value is left out, as are the legal actions' descriptions and the example when it has
      them word for word (the actions are then named only);
    - `last_prompt`: an event line it showed is left out (events of the tick the player moved at,
      logged before its move), and so is the player's own move at that tick (its reply is above).
    """
    me = view["me"]
    role = view["role"][me]
    role_spec = next(r for r in spec.roles if r.name == role)
    if include_rules:
        # What every player of the game reads comes first, who you are after it: all first prompts of
        # a game then share the rules' tokens, which a prompt cache evaluates once (issue 18).
        lines = [rules_head(spec) + f"YOU: {me}, role: {role}"]
        if role_spec.description:
            lines.append(f"YOUR ROLE: {role_spec.description}")
    elif first_prompt is not None:
        lines = [f"You are {me}. Lines the same as in your first turn are not repeated."]
    else:
        lines = [f"GAME: {spec.name} — you are {me}, role: {role}"]
    stated = set(first_prompt.splitlines()) if first_prompt is not None else set()
    last_lines = last_prompt.splitlines() if last_prompt is not None else []

    def restated(line: str, *keys: str) -> bool:
        """Whether `line` may be left out: the first prompt says it, and the last prompt shows no
        other value under its key (a value that changed and came back is shown again: the latest
        line the player read must hold). By induction every left-out line is the latest one shown."""
        return line in stated and not any(o.startswith(keys) and o != line for o in last_lines)

    def section(title: str, items: list[tuple[str, str]], descs: dict[str, str]) -> None:
        # Each item as `- key: value`; left out when the first prompt says the same (with or without
        # the key's description, which only the first prompt carries).
        shown = []
        for k, value in items:
            desc = descs.get(k, "")
            plain, described = f"- {k}: {value}", f"- {k} ({desc}): {value}"
            keys = (f"- {k}: ", f"- {k} ({desc}): ") if desc else (f"- {k}: ",)
            if restated(plain, *keys) or (desc and restated(described, *keys)):
                continue
            shown.append(f"- {k} ({desc}): {value}" if include_rules and desc else plain)
        if shown:
            lines.append(f"{title}:")
            lines.extend(shown)

    section(
        "YOUR INFORMATION",
        [(k, fmt_value(v)) for k, v in view["my"].items()],
        {k: spec.player_state[k].description for k in view["my"]},
    )
    section(
        "PUBLIC STATE",
        [(k, fmt_value(v)) for k, v in view["state"].items()],
        {k: spec.state[k].description for k in view["state"]},
    )
    players = []
    for p in view["players"]:
        bits = [
            "you" if p == me else None,
            view["role"].get(p),
            "forfeited" if p in view["forfeited"] else None,
        ]
        others = view["P"][p] if p != me else {}
        extra = f" {fmt_value(others)}" if others else ""
        players.append(f"- {p} ({', '.join(b for b in bits if b) or 'role unknown'}){extra}")
    players = [line for line in players if not restated(line, line[: line.index(" (") + 2])]
    if players:
        lines += ["PLAYERS:", *players]
    hints = _hints(spec, view, over_budget)
    hints = [line for line in hints if not restated(line, line.split(": ", 1)[0] + ": ")]
    if hints:
        lines += ["NOTES:", *hints]
    events = view["events"] if since_tick is None else [e for e in view["events"] if e.tick >= since_tick]
    header = "EVENTS" if since_tick is None else "NEW EVENTS"
    lines.append(f"{header} (turn {view['turn']}, phase {view['phase']}):")
    seen = set(last_prompt.splitlines()) if last_prompt is not None else set()
    own_move = last_prompt is not None and since_tick is not None
    event_lines = [
        event_line(e, me)
        for e in events
        if not (own_move and e.kind == "action" and e.player == me and e.tick == since_tick)
    ]
    lines += [line for line in event_lines if line not in seen] or ["(none)"]
    if view["done"]:
        lines.append(f"GAME OVER. Payoffs: {fmt_value(view.get('payoffs'))}")
    elif schema is not None:
        branches = schema["anyOf"] if "anyOf" in schema else [schema]
        described = []
        for b in branches:
            name = b["properties"]["action"]["const"]
            params = [
                f"{k}{'' if k in b['required'] else '?'}: {_short_type(s)}"
                for k, s in b["properties"].items()
                if k != "action"
            ]
            desc = spec.actions[name].description
            described.append((name, f"- {name}({', '.join(params)}){f' — {desc}' if desc else ''}"))
        example = (
            f"Answer with one JSON object, e.g. {json.dumps(view.get('example') or example_action(schema))}"
        )
        if described and all(line in stated for _, line in described):
            names = ", ".join(name for name, _ in described)
            lines.append(f"YOUR TURN ({view['phase']}). Legal actions, as in your first turn: {names}.")
        else:
            lines.append(f"YOUR TURN ({view['phase']}). Legal actions:")
            lines += [line for _, line in described]
        if example not in stated:
            lines.append(example)
    else:
        waiting = ", ".join(view["actors"]) or "nobody"
        lines.append(f"WAITING: not your turn (acting: {waiting}).")
    if feedback:
        lines.append(f"FEEDBACK: {feedback}")
    return "\n".join(lines)


def _short_type(s: dict[str, Any]) -> str:
    if "enum" in s:
        return "|".join(str(v) for v in s["enum"]) or "(none)"
    t = s.get("type", "any")
    if t in ("integer", "number"):
        lo, hi = s.get("minimum"), s.get("maximum")
        rng = (
            f" {lo if lo is not None else ''}..{hi if hi is not None else ''}"
            if lo is not None or hi is not None
            else ""
        )
        return ("int" if t == "integer" else "number") + rng
    if t == "string":
        return "text"
    if t == "array":
        lo, hi = s.get("minItems", 0), s.get("maxItems")
        count = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else ''}"
        distinct = ", all different" if s.get("uniqueItems") else ""
        return f"list of {count} ({_short_type(s.get('items', {}))}{distinct})"
    if t == "object":
        req = s.get("required", [])
        inner = ", ".join(
            f"{k}{'' if k in req else '?'}: {_short_type(v)}" for k, v in s.get("properties", {}).items()
        )
        return "{" + inner + "}"
    return str(t)


def transcript(engine: GameEngine) -> str:
    """The omniscient transcript so far (render_mode "ansi")."""
    lines = [f"{engine.spec.name} — seed {engine.seed}"]
    lines.append("Roles: " + ", ".join(f"{p}={engine.role[p]}" for p in engine.players))
    lines += [event_line(e) for e in engine.events]
    if engine.flags:
        lines.append(
            "Conduct flags: " + "; ".join(f"t{f.turn} {f.player} {f.kind}:{f.name}" for f in engine.flags)
        )
    return "\n".join(lines)
