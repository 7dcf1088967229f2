"""Static checks of a spec, beyond its schema: run at load by `games validate` and the generator.

- every expression compiles (see `compiled.CompiledGame`);
- every name an expression reads exists in its context (`args` only inside actions, `p` only in
  per-player expressions, random functions only in setup and effects, ...), and every
  `state.X` / `my.X` / `P[..].X` / `args.X` field is declared;
- references between parts hold (phase actions, transitions, conduct, policy, default moves);
- every action is allowed in some phase and every phase is reachable from the first (networkx);
- expressions give the type their field needs where it can be inferred (`expr_types.infer_type`):
  conditions give true/false, payoffs and bounds numbers, `init` and `set` the declared type;
- parameters can take a value (min <= max when constant, an enum has values, a list's items are
  typed) and role counts fit every player count in the range, under every option's values;
- v2 constructs are used where they mean something: named expressions (`let`) are read, read only
  the ones before them and nothing their reader's context lacks; `pending` and `cancel` only in
  reactions; reactions only in sequential phases, a free phase's pass among its actions; a group
  visibility names declared groups; `options.X` is declared;
- what players see is theirs to see: a policy or hint (through its lets too) reads no non-public
  state and no other player's private or hidden field;
- a dry run: reset with a few seeds at the smallest and largest player counts, so setup
  constraints that never hold and expressions that fail on real values are caught before play.
  The engine checks types there too, and a problem repeated every tick is reported once. Each
  phase's default move is tried too (a player runs out of attempts there once per episode).

`load_checked_spec(path)` is all of it for one file, as `python -m rsi_env.games validate` runs it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import networkx as nx

from .compiled import CEffect, CompiledGame
from .expr import (
    KNOWN_FUNCTIONS,
    RANDOM_FUNCTION_NAMES,
    STDLIB_NAMESPACES,
    Expr,
    ExprError,
    Scope,
    is_number,
    select_functions,
)
from .expr_types import (
    BOOL,
    DOUBLE,
    INT,
    LIST,
    MAP,
    NULL,
    NUMBER,
    STRING,
    CelTypes,
    MapOf,
    Record,
    Shape,
    infer_type,
)
from .spec import MAX_LIST_ITEMS, Action, GameSpec, Param, SpecError, Var, read_spec_file

BASE = frozenset({"state", "P", "players", "n", "role", "team", "phase", "turn", "forfeited", "options"})
ACTION = BASE | {"me", "my", "args"}
PLAYER = BASE | {"p", "flags"}  # payoffs: conduct flags are readable once the game is over
VIEW = frozenset(
    {"state", "P", "players", "n", "role", "team", "phase", "turn", "forfeited", "me", "my", "actors",
     "is_turn", "game", "events", "done", "payoffs", "options", "pending"}
)  # fmt: skip
# Names the engine binds somewhere: a named expression may not take one of them.
RESERVED = ACTION | PLAYER | VIEW | {"moves", "pending", "iteration", "groups", "value", "a", "b"}
_OPTION_READ = re.compile(r"(?<![\w.])options\s*\.\s*([A-Za-z_]\w*)")
_PENDING_READ = re.compile(r"(?<![\w.])pending\s*\.\s*([A-Za-z_]\w*)")
_PLAYER_INDEX = re.compile(r"(?<![\w.])P\s*\[")
_FIELD_AFTER = re.compile(r"\s*\.\s*([A-Za-z_]\w*)")
_MY_READ = re.compile(r"(?<![\w.])my\s*\.\s*([A-Za-z_]\w*)")
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


class Expect(NamedTuple):
    """The CEL types a field's expression must be able to give, and how to say so."""

    types: CelTypes
    what: str


COND = Expect(BOOL, "true or false")
NUMBER_ = Expect(NUMBER, "a number")
LIST_ = Expect(LIST, "a list")
PLAYER_ID = Expect(STRING | NULL, "a player id")

# Names every context provides, by their CEL types (`state`, `my`, `P`, `args` come from the spec).
_NAME_SHAPES: dict[str, Shape] = {
    **dict.fromkeys(("n", "turn"), INT),
    **dict.fromkeys(("players", "forfeited", "flags", "actors", "events"), LIST),
    **dict.fromkeys(("phase", "me", "p", "a", "b", "game"), STRING),
    **dict.fromkeys(("role", "team", "moves"), MAP),
    **dict.fromkeys(("is_turn", "done"), BOOL),
}
# A variable reads as its declared type (`_typed` in the engine keeps floats double).
_VAR_SHAPES: dict[str, Shape] = {
    "int": INT, "float": DOUBLE, "bool": BOOL, "str": STRING, "player": STRING, "list": LIST, "map": MAP,
    "any": None,
}  # fmt: skip
# What `init` / `set` may give a variable: int-valued doubles are stored as ints, and null is a
# common "not yet" value (an offer not made, a player not chosen).
_VAR_ACCEPTS: dict[str, CelTypes] = {
    "int": NUMBER | NULL, "float": NUMBER | NULL, "bool": BOOL | NULL, "str": STRING | NULL,
    "player": STRING | NULL, "list": LIST | NULL, "map": MAP | NULL,
}  # fmt: skip
_ADD_ACCEPTS: dict[str, CelTypes] = {"int": NUMBER, "float": NUMBER, "str": STRING, "list": LIST}
_PARAM_SHAPES: dict[str, Shape] = {
    "int": INT, "float": DOUBLE, "bool": BOOL, "enum": STRING, "player": STRING, "text": STRING,
    "list": LIST, "object": MAP,
}  # fmt: skip
# Which parameter types each optional key applies to (elsewhere it would be silently ignored).
_PARAM_KEYS = {
    "min": ("int", "float"),
    "max": ("int", "float"),
    "values": ("enum",),
    "candidates": ("player",),
    "items": ("list",),
    "min_items": ("list",),
    "max_items": ("list",),
    "fields": ("object",),
}
MAX_PARAM_DEPTH = 3  # a list of objects of scalars: deep enough for batch orders


def load_checked_spec(path: str | Path, dry_run: bool = True) -> GameSpec:
    """Read a spec file and run every check `python -m rsi_env.games validate` runs.

    Raises one SpecError whose `problems` lists every problem found, one line each, naming the
    field (YAML errors, duplicate keys, schema, static checks, then the dry run).
    """
    spec = read_spec_file(path)
    check_spec(spec, str(path), dry_run=dry_run)
    return spec


def check_spec(spec: GameSpec, source: str = "<spec>", dry_run: bool = True) -> CompiledGame:
    """Compile and check `spec`; raises SpecError with every problem found, one line each."""
    game = CompiledGame(spec, source, strict=False)
    problems: list[str] = list(game.problems.lines)
    _check_names(spec, game, problems)
    _check_lets(spec, game, problems)
    _check_references(spec, problems)
    _check_v2_references(spec, game, problems)
    _check_reachability(spec, problems)
    _check_params(spec, game, problems)
    _check_roles(spec, game, problems)
    if problems:
        raise SpecError(source, problems)
    if dry_run:
        problems += dry_run_errors(spec)
        if problems:
            raise SpecError(source, problems)
    return game


def _type_env(
    spec: GameSpec, allowed: frozenset[str], params: Mapping[str, Shape] | None, local: Mapping[str, Shape]
) -> dict[str, Shape]:
    """The shapes of the names an expression may read in its context."""
    env = {name: _NAME_SHAPES.get(name) for name in allowed}
    player = Record({k: _VAR_SHAPES[v.type] for k, v in spec.player_state.items()})
    records: dict[str, Shape] = {
        "state": Record({k: _VAR_SHAPES[v.type] for k, v in spec.state.items()}),
        "my": player,
        "P": MapOf(player),
        "args": Record(params) if params is not None else None,
    }
    env.update({k: v for k, v in records.items() if k in allowed})
    env.update(local)
    return env


def _arg_shapes(action: Action) -> dict[str, Shape]:
    """`args` of an action: its parameters by type, plus the free-text `message`."""
    return {"message": STRING, **{k: _PARAM_SHAPES[p.type] for k, p in action.params.items()}}


def _check_expr(
    path: str,
    e: Expr | None,
    allowed: frozenset[str],
    problems: list[str],
    spec: GameSpec,
    *,
    params: Mapping[str, Shape] | None = None,
    random_ok: bool = False,
    expect: Expect | None = None,
    local: Mapping[str, Shape] | None = None,
    lets: Mapping[str, Expr] | None = None,
    names: bool = True,
) -> None:
    """Names, fields and functions `e` reads exist here; then, if asked, its type fits the field.

    `params` are the action's parameters (`args`), `local` names bound around the expression
    (`value` in `where`, a `for_each` variable) with their shapes, `lets` the named expressions
    visible here (each one `e` reads is checked again in this context: its names, and what players
    may see). `names=False` skips the unknown-name check (a let where it is declared: what it may
    read depends on where it is read).
    """
    if e is None:
        return
    before = len(problems)
    lets = lets or {}
    used = [n for n in getattr(e, "lets", ()) if n in lets]
    if allowed is VIEW:
        _check_privacy(path, e, spec, problems)
        for n in used:
            _check_privacy(f"{path} (through let `{n}`)", lets[n], spec, problems)
    src = _short_source(e.source)
    scope = allowed | set(local or {})
    unknown = sorted(e.variables - scope - STDLIB_NAMESPACES - set(lets)) if names else []
    if unknown:
        problems.append(f"{path}: unknown name(s) {unknown} in `{src}`; available here: {sorted(scope)}")
    for n in used:
        missing = sorted(lets[n].variables - scope - STDLIB_NAMESPACES - set(lets))
        if missing:
            problems.append(
                f"{path}: reads let `{n}`, which reads {missing}: not available here "
                f"(available: {sorted(scope)})"
            )
        if not random_ok and (rnd := sorted(lets[n].functions & RANDOM_FUNCTION_NAMES)):
            problems.append(
                f"{path}: reads let `{n}`, which calls random function(s) {rnd} (only setup and effects may)"
            )
    code = _STRING_LITERAL.sub('""', e.source)
    for opt in _OPTION_READ.findall(code):
        if "options" in allowed and opt not in spec.options:
            known = ", ".join(sorted(spec.options)) or "none declared"
            problems.append(f"{path}: `options.{opt}` is not declared under `options` ({known})")
    for key in _PENDING_READ.findall(code):
        if "pending" in scope and key not in ("player", "action", "args"):
            problems.append(f"{path}: `pending.{key}`: a pending move has only player, action and args")
    bad_fns = sorted(f for f in e.functions if f not in KNOWN_FUNCTIONS and f not in RANDOM_FUNCTION_NAMES)
    if bad_fns:
        problems.append(f"{path}: unknown function(s) {bad_fns} in `{src}`")
    if not random_ok and (rnd := sorted(e.functions & RANDOM_FUNCTION_NAMES)):
        problems.append(f"{path}: random function(s) {rnd} are only allowed in setup and effects")
    for root, name in e.fields:
        if root == "state" and "state" in allowed and name not in spec.state:
            problems.append(f"{path}: `state.{name}` is not declared under `state`")
        elif root == "my" and "my" in allowed and name not in spec.player_state:
            problems.append(f"{path}: `my.{name}` is not declared under `player_state`")
        elif root == "args" and params is not None and name not in params:
            problems.append(f"{path}: `args.{name}` is not a parameter here (parameters: {sorted(params)})")
    for name in e.player_fields:
        if name not in spec.player_state:
            problems.append(f"{path}: `P[...].{name}` is not declared under `player_state`")
    if expect is not None and len(problems) == before:  # a wrong name already explains a wrong type
        env = _type_env(spec, allowed, params, local or {})
        for n in used:  # each let's shape, in binding order (a let may read the ones before it)
            env[n] = infer_type(lets[n].source, env)
        got = infer_type(e.source, env)
        if isinstance(got, frozenset) and got.isdisjoint(expect.types):
            problems.append(f"{path}: `{src}` gives {' or '.join(sorted(got))}, expected {expect.what}")


def _player_reads(code: str) -> list[tuple[str, str]]:
    """`P[<index>].<field>` reads as (index text, field), brackets inside the index matched."""
    out = []
    for m in _PLAYER_INDEX.finditer(code):
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"[": 1, "]": -1}.get(code[i], 0)
            i += 1
        if depth == 0 and (f := _FIELD_AFTER.match(code, i)):
            out.append((code[m.end() : i - 1], f.group(1)))
    return out


def _short_source(source: str) -> str:
    src = " ".join(source.split())
    return src if len(src) <= 100 else src[:97] + "..."


def _check_privacy(path: str, e: Expr, spec: GameSpec, problems: list[str]) -> None:
    """An expression on a player's view (policy, hint) reads only what that player can see: public
    state, its own fields that are not hidden, others' public (or team) fields."""
    hidden = sorted(
        n for r, n in e.fields if r == "state" and n in spec.state and spec.state[n].visibility != "public"
    )
    if hidden:
        problems.append(f"{path}: reads non-public state {hidden}, which players cannot see")
    code = _STRING_LITERAL.sub('""', e.source)
    secret = sorted(
        {f"P[{idx.strip()}].{f}" for idx, f in _player_reads(code)
         if f in spec.player_state and (spec.player_state[f].visibility == "hidden"
         or (spec.player_state[f].visibility == "private" and idx.strip() != "me"))}
        | {f"my.{f}" for f in _MY_READ.findall(code)
           if f in spec.player_state and spec.player_state[f].visibility == "hidden"}
    )  # fmt: skip
    if secret:
        problems.append(
            f"{path}: reads {secret}: another player's private field, or a hidden one, "
            "which players cannot see"
        )


def _effect_expect(eff: CEffect, spec: GameSpec) -> Expect | None:
    """What a set/add effect's value must be, when it writes a whole declared variable."""
    t = eff.target
    if eff.op not in ("set", "add") or t is None or len(t.keys) != 1 or not isinstance(t.keys[0], str):
        return None
    decl = (spec.state if t.root == "state" else spec.player_state).get(t.keys[0])
    if decl is None:
        return None
    accepts = (_ADD_ACCEPTS if eff.op == "add" else _VAR_ACCEPTS).get(decl.type)
    verb = "added to" if eff.op == "add" else "stored in"
    return Expect(accepts, f"a value that can be {verb} {decl.type} `{t.source}`") if accepts else None


def _check_effects(
    effects: list[CEffect],
    allowed: frozenset[str],
    problems: list[str],
    spec: GameSpec,
    params: Mapping[str, Shape] | None = None,
    lets: Mapping[str, Expr] | None = None,
    local: Mapping[str, Shape] | None = None,
) -> None:
    outer = dict(local or {})
    for eff in effects:
        local = {**outer, eff.as_: None} if eff.for_each is not None else outer
        if eff.op == "cancel" and "pending" not in allowed:
            problems.append(f"{eff.path}.cancel: only a reaction's effects may cancel (the move they answer)")
        if eff.repeat is not None:
            inner = {**local, "iteration": INT}
            _check_expr(
                f"{eff.path}.repeat.until", eff.repeat.until, allowed, problems, spec,
                params=params, random_ok=True, expect=COND, local=inner, lets=lets,
            )  # fmt: skip
            _check_effects(eff.repeat.effects, allowed, problems, spec, params, lets, inner)
        _check_expr(
            f"{eff.path}.for_each",
            eff.for_each,
            allowed,
            problems,
            spec,
            params=params,
            random_ok=True,
            expect=Expect(LIST | MAP, "a list or a map"),
            local=outer,
            lets=lets,
        )
        # compile_effect keeps an announce/tell/cancel expression in `value`: name it by its own field.
        label = {"announce": "announce", "tell": "tell", "cancel": "cancel"}.get(eff.op, "value")
        value_expect = {"tell": PLAYER_ID, "cancel": COND}.get(eff.op) or _effect_expect(eff, spec)
        for field, e, expect in (
            ("if", eff.cond, COND),
            (label, eff.value, value_expect),
            ("text", eff.text, None),
        ):
            _check_expr(
                f"{eff.path}.{field}",
                e,
                allowed,
                problems,
                spec,
                params=params,
                random_ok=True,
                expect=expect,
                local=local,
                lets=lets,
            )
        if eff.target is not None:
            t = eff.target
            if t.root == "my" and "my" not in allowed:
                problems.append(
                    f"{eff.path}: target `{t.source}` uses `my`, which only exists inside actions"
                )
            first = t.keys[0]
            if isinstance(first, str):
                declared = spec.state if t.root == "state" else spec.player_state
                where = "state" if t.root == "state" else "player_state"
                if first not in declared:
                    problems.append(
                        f"{eff.path}: target `{t.source}`: `{first}` is not declared under `{where}`"
                    )
            for k in (t.player, *[k for k in t.keys if isinstance(k, Expr)]):
                _check_expr(
                    f"{eff.path} (target)",
                    k,
                    allowed,
                    problems,
                    spec,
                    params=params,
                    random_ok=True,
                    local=local,
                    lets=lets,
                )


def _check_vars(
    root: str,
    decls: Mapping[str, Var],
    exprs: tuple[Mapping[str, Expr | None], Mapping[str, Expr | None]],
    allowed: frozenset[str],
    problems: list[str],
    spec: GameSpec,
    lets: Mapping[str, Expr] | None = None,
) -> None:
    """`init` gives the declared type; `where` is a condition on the drawn `value`."""
    inits, wheres = exprs
    for name, var in decls.items():
        init_expect = (
            Expect(_VAR_ACCEPTS[var.type], f"{var.type} (its declared type)") if var.type != "any" else None
        )
        path = f"{root}.{name}"
        _check_expr(
            f"{path}.init",
            inits[name],
            allowed,
            problems,
            spec,
            random_ok=True,
            expect=init_expect,
            lets=lets,
        )
        _check_expr(
            f"{path}.where",
            wheres[name],
            allowed,
            problems,
            spec,
            random_ok=True,
            expect=COND,
            local={"value": _VAR_SHAPES[var.type]},
            lets=lets,
        )


def _reaction_actions(spec: GameSpec) -> set[str]:
    """Actions some action's `reactions` offer: they answer a pending move (and may read `pending`)."""
    return {r for a in spec.actions.values() if a.reactions for r in a.reactions.actions}


def _check_names(spec: GameSpec, game: CompiledGame, problems: list[str]) -> None:
    top = dict(game.top_lets.exprs)
    for name, e in game.role_counts.items():
        _check_expr(f"roles.{name}.count", e, frozenset({"n", "options"}), problems, spec)
    setup_base = frozenset({"players", "n", "role", "team", "state", "options"})
    _check_vars("state", spec.state, (game.var_init, game.var_where), setup_base, problems, spec, top)
    seen: set[str] = set()
    for name in spec.state:
        for e in (game.var_init[name], game.var_where[name]):
            for root, field in e.fields if e else ():
                if root == "state" and field in spec.state and field not in seen:
                    problems.append(
                        f"state.{name}: reads `state.{field}`, which is set up later (order matters)"
                    )
        seen.add(name)
    pbase = setup_base | {"p", "P"}
    _check_vars(
        "player_state", spec.player_state, (game.pvar_init, game.pvar_where), pbase, problems, spec, top
    )
    _check_effects(game.setup, BASE, problems, spec, lets=top)
    _check_expr("channels.private", game.channel, BASE | {"a", "b"}, problems, spec, expect=COND, lets=top)
    phase_actions = {a for ph in spec.phases for a in ph.actions}
    reacting = _reaction_actions(spec)
    for name, ca in game.actions.items():
        a = spec.actions[name]
        lets = dict(game.action_lets[name].exprs)
        # `pending` is the move a reaction answers: only an action that is nothing but a reaction has one.
        action_names = ACTION | {"pending"} if name in reacting and name not in phase_actions else ACTION
        params = _arg_shapes(a)
        for pname, bounds in ca.bounds.items():
            _check_bounds(
                f"actions.{name}.params.{pname}", bounds, action_names - {"args"}, problems, spec, lets
            )
        _check_expr(
            f"actions.{name}.available_if", ca.available, action_names - {"args"}, problems, spec,
            expect=COND, lets=lets,
        )  # fmt: skip
        for i, (e, _) in enumerate(ca.valid_if):
            path = f"actions.{name}.valid_if[{i}].expr"
            _check_expr(path, e, action_names, problems, spec, params=params, expect=COND, lets=lets)
        _check_effects(ca.effects, action_names, problems, spec, params, lets)
        _check_expr(f"actions.{name}.log", ca.log, action_names, problems, spec, params=params, lets=lets)
        _check_expr(
            f"actions.{name}.group", ca.group_name, action_names, problems, spec, params=params,
            expect=Expect(STRING, "a group name"), lets=lets,
        )  # fmt: skip
        if ca.reactions is not None:
            for label, e in (("by", ca.reactions.by), ("order", ca.reactions.order)):
                _check_expr(
                    f"actions.{name}.reactions.{label}", e, action_names, problems, spec, params=params,
                    expect=LIST_, lets=lets,
                )  # fmt: skip
    for ph in spec.phases:
        cp = game.phases[ph.name]
        lets = dict(game.phase_lets[ph.name].exprs)
        base = f"phases.{ph.name}"
        for label, e, expect in (
            ("actors", cp.actors, LIST_),
            ("first", cp.first, PLAYER_ID),
            ("turns", cp.turns, NUMBER_),
            ("until", cp.until, COND),
            ("budget", cp.budget, NUMBER_),
        ):
            _check_expr(f"{base}.{label}", e, BASE, problems, spec, expect=expect, lets=lets)
        for k, e in cp.available.items():
            _check_expr(
                f"{base}.available_if.{k}", e, ACTION - {"args"}, problems, spec, expect=COND, lets=lets
            )
        _check_effects(cp.on_enter, BASE, problems, spec, lets=lets)
        _check_effects(cp.on_exit, BASE, problems, spec, lets=lets)
        _check_effects(cp.on_resolve, BASE | {"moves"}, problems, spec, lets=lets)
        for i, (e, _) in enumerate(cp.next):
            _check_expr(f"{base}.next[{i}].if", e, BASE, problems, spec, expect=COND, lets=lets)
        for dpath, action, exprs in cp.default_moves:
            for k, e in exprs.items():
                dm_params = _arg_shapes(spec.actions[action]) if action in spec.actions else None
                path = f"{base}.{dpath}.args.{k}"
                _check_expr(path, e, ACTION - {"args"}, problems, spec, params=dm_params, lets=lets)
    _check_expr("end.when", game.end_when, BASE, problems, spec, expect=COND, lets=top)
    for label, e, expect in (
        ("value", game.payoff, NUMBER_),
        ("best", game.payoff_best, Expect(NUMBER | NULL, "a number")),
        ("forfeit", game.payoff_forfeit, NUMBER_),
    ):
        _check_expr(f"payoffs.{label}", e, PLAYER, problems, spec, expect=expect, lets=top)
    for k, e in game.outcomes.items():
        _check_expr(f"outcomes.{k}", e, BASE | {"flags"}, problems, spec, lets=top)
    for c, e in game.conduct:
        shapes = _arg_shapes(spec.actions[c.action]) if c.action in spec.actions else None
        lets = dict(game.action_lets[c.action].exprs) if c.action in game.action_lets else top
        names = ACTION | {"pending"} if c.action in reacting and c.action not in phase_actions else ACTION
        _check_expr(f"conduct.{c.name}.when", e, names, problems, spec, params=shapes, expect=COND, lets=lets)
    for k, e in game.hints.items():
        _check_expr(f"hints.{k}", e, VIEW, problems, spec, lets=top)
    for i, (_rule, when, args, message) in enumerate(game.policy):
        _check_expr(f"policy[{i}].when", when, VIEW, problems, spec, expect=COND, lets=top)
        for k, e in args.items():
            _check_expr(f"policy[{i}].args.{k}", e, VIEW, problems, spec, lets=top)
        _check_expr(f"policy[{i}].message", message, VIEW, problems, spec, lets=top)
        weight = game.policy_weights[i]
        _check_expr(f"policy[{i}].weight", weight, VIEW, problems, spec, expect=NUMBER_, lets=top)


def _check_bounds(
    path: str,
    bounds: Mapping[str, Any],
    allowed: frozenset[str],
    problems: list[str],
    spec: GameSpec,
    lets: Mapping[str, Expr],
) -> None:
    """A parameter's bounds (a list's items and an object's fields in turn): numbers and lists."""
    for key, e in bounds.items():
        if key == "items":
            _check_bounds(f"{path}.items", e, allowed, problems, spec, lets)
        elif key == "fields":
            for k, sub in e.items():
                _check_bounds(f"{path}.fields.{k}", sub, allowed, problems, spec, lets)
        else:
            expect = NUMBER_ if key in ("min", "max", "min_items", "max_items") else LIST_
            _check_expr(f"{path}.{key}", e, allowed, problems, spec, expect=expect, lets=lets)


def _check_lets(spec: GameSpec, game: CompiledGame, problems: list[str]) -> None:
    """Each named expression: a free name, reading only the ones before it, and read somewhere.

    What it may read depends on where it is read, so its names are checked at every reader (see
    `_check_expr`); here its fields, functions and compile errors."""
    levels: list[tuple[str, Mapping[str, str], Mapping[str, Expr], frozenset[str]]] = [
        ("let", spec.let, game.lets, frozenset())
    ]
    top_names = frozenset(spec.let)
    for name, a in spec.actions.items():
        levels.append((f"actions.{name}.let", a.let, game.actions[name].lets, top_names))
    for ph in spec.phases:
        levels.append((f"phases.{ph.name}.let", ph.let, game.phases[ph.name].lets, top_names))
    all_names = ACTION | PLAYER | VIEW | {"moves", "pending", "iteration"}
    read: set[str] = set()
    for _path, e in game.problems.exprs:
        read |= set(getattr(e, "lets", ()))
    for path, decls, exprs, outer in levels:
        declared: list[str] = []
        for name in decls:
            here = f"{path}.{name}"
            if name in RESERVED:
                problems.append(f"{here}: `{name}` is a name the game already provides; choose another")
            elif name in outer:
                problems.append(f"{here}: `{name}` is already a spec-level let; choose another name")
            let = exprs.get(name)
            if let is not None:
                later = sorted((set(decls) - set(declared)) & let.variables)
                if later:
                    problems.append(
                        f"{here}: reads {later}, declared at or after it "
                        "(a let reads only the ones before it)"
                    )
                _check_expr(
                    here, let, all_names, problems, spec, random_ok=True, names=False,
                    lets=dict(game.top_lets.exprs) if path != "let" else {},
                )  # fmt: skip
                if name not in read and name != "groups":
                    problems.append(f"{here}: never read (a named expression no expression uses)")
            declared.append(name)


def _check_references(spec: GameSpec, problems: list[str]) -> None:
    phase_names = [p.name for p in spec.phases]
    if len(set(phase_names)) != len(phase_names):
        problems.append(f"phases: duplicate phase names in {phase_names}")
    for ph in spec.phases:
        for a in ph.actions:
            if a not in spec.actions:
                problems.append(f"phases.{ph.name}.actions: `{a}` is not declared under `actions`")
        for t in ph.next:
            if t.goto != "end" and t.goto not in phase_names:
                problems.append(f"phases.{ph.name}.next: goto `{t.goto}` is neither a phase nor `end`")
        for dpath, dm in ph.default_moves():
            if dm.action not in ph.actions:
                problems.append(f"phases.{ph.name}.{dpath}: `{dm.action}` is not allowed in this phase")
            if dm.action in spec.actions:
                params = spec.actions[dm.action].params
                for k in dm.args:
                    if k not in params:
                        problems.append(
                            f"phases.{ph.name}.{dpath}.args: `{k}` is not a parameter of the action"
                        )
    for c in spec.conduct:
        if c.action not in spec.actions:
            problems.append(f"conduct.{c.name}.action: `{c.action}` is not declared under `actions`")
    for i, r in enumerate(spec.policy):
        if r.action not in spec.actions:
            problems.append(f"policy[{i}].action: `{r.action}` is not declared under `actions`")
        elif unknown := sorted(set(r.args) - set(spec.actions[r.action].params)):
            problems.append(f"policy[{i}].args: {unknown} are not parameters of `{r.action}`")
    names = [r.name for r in spec.roles]
    if len(set(names)) != len(names):
        problems.append(f"roles: duplicate role names in {names}")


def phase_graph(spec: GameSpec) -> nx.DiGraph:
    """Phases as nodes, possible transitions as edges (plus `end`)."""
    g = nx.DiGraph()
    phases = spec.phases
    g.add_nodes_from([p.name for p in phases] + ["end"])
    for i, ph in enumerate(phases):
        unconditional = any(t.if_.strip() == "true" for t in ph.next)
        for t in ph.next:
            g.add_edge(ph.name, t.goto)
        if not unconditional:
            g.add_edge(ph.name, phases[(i + 1) % len(phases)].name)
    return g


def _check_reachability(spec: GameSpec, problems: list[str]) -> None:
    g = phase_graph(spec)
    reachable = nx.descendants(g, spec.phases[0].name) | {spec.phases[0].name}
    for ph in spec.phases:
        if ph.name not in reachable:
            problems.append(f"phases.{ph.name}: unreachable from the first phase `{spec.phases[0].name}`")
    used = {a for ph in spec.phases if ph.name in reachable for a in ph.actions}
    frontier = set(used)
    while frontier:  # reactions to a usable move are usable (and reactions to those)
        more = {r for a in frontier if a in spec.actions for r in spec.actions[a].answers()}
        frontier = more - used
        used |= more
    for name in spec.actions:
        if name not in used:
            problems.append(f"actions.{name}: not allowed in any reachable phase")


def _over_n(e: Expr | None, spec: GameSpec) -> dict[int, Any] | None:
    """The value of `e` at every player count of the game, if it reads nothing but `n` (and the
    spec's options, at their current values).

    None when it reads anything else, draws random numbers or fails (the dry run reports a failure).
    """
    if e is None or not e.variables <= {"n", "options"} or e.functions & RANDOM_FUNCTION_NAMES:
        return None
    scope = Scope({"options": spec.option_values()}, select_functions(e.functions))
    out: dict[int, Any] = {}
    for n in range(spec.players.min, spec.players.max + 1):
        try:
            out[n] = e(scope.bind(n=n))
        except ExprError:
            return None
    return out


def _check_params(spec: GameSpec, game: CompiledGame, problems: list[str]) -> None:
    """Every parameter can take some value, and says nothing that its type would ignore."""
    for name, a in spec.actions.items():
        for pname, prm in a.params.items():
            _check_param(
                f"actions.{name}.params.{pname}", prm, game.actions[name].bounds[pname], spec, problems
            )


def _check_param(
    path: str, prm: Param, bounds: Mapping[str, Any], spec: GameSpec, problems: list[str], depth: int = 1
) -> None:
    misplaced = [k for k, ok in _PARAM_KEYS.items() if getattr(prm, k) is not None and prm.type not in ok]
    if prm.unique and prm.type != "list":
        misplaced.append("unique")
    if misplaced:
        problems.append(f"{path}: {misplaced} do not apply to a parameter of type {prm.type}")
    if prm.type == "enum" and prm.values is None:
        problems.append(f"{path}: an enum needs `values`")
    elif prm.type == "enum" and isinstance(prm.values, list) and not prm.values:
        problems.append(f"{path}.values: an enum needs at least one value (none could be chosen)")
    if prm.type in ("list", "object") and depth > MAX_PARAM_DEPTH:
        problems.append(
            f"{path}: parameters nest at most {MAX_PARAM_DEPTH} levels (a list of objects of values)"
        )
        return
    if prm.type == "list":
        if prm.items is None:
            problems.append(f"{path}: a list needs `items` (the type of every item)")
        else:
            _check_param(f"{path}.items", prm.items, bounds.get("items", {}), spec, problems, depth + 1)
            if prm.items.optional:
                problems.append(f"{path}.items: an item cannot be optional (leave the item out instead)")
    if prm.type == "object":
        if not prm.fields:
            problems.append(f"{path}: an object needs `fields`")
        for k, f in (prm.fields or {}).items():
            _check_param(
                f"{path}.fields.{k}", f, bounds.get("fields", {}).get(k, {}), spec, problems, depth + 1
            )
    for lo_key, hi_key, what in (("min", "max", "value"), ("min_items", "max_items", "length")):
        lows, highs = _over_n(bounds.get(lo_key), spec), _over_n(bounds.get(hi_key), spec)
        if lows is None or highs is None:
            continue  # state-dependent: the engine reports min > max when it happens
        for n, lo in lows.items():
            hi = highs[n]
            if is_number(lo) and is_number(hi) and lo > hi:
                at = f" with n={n}" if bounds[lo_key].variables or bounds[hi_key].variables else ""
                problems.append(f"{path}: {lo_key} ({lo}) is above {hi_key} ({hi}){at}: no {what} is valid")
                break
    lows = _over_n(bounds.get("min_items"), spec)
    if prm.type == "list" and lows is not None:
        too_long = {n: lo for n, lo in lows.items() if is_number(lo) and lo > MAX_LIST_ITEMS}
        if too_long:
            problems.append(f"{path}.min_items: above the most items a list may hold ({MAX_LIST_ITEMS})")
        pool = prm.items.values if prm.items is not None and prm.unique else None
        if isinstance(pool, list):
            short = {n: lo for n, lo in lows.items() if is_number(lo) and lo > len(pool)}
            if short:
                n, lo = next(iter(short.items()))
                problems.append(
                    f"{path}: {lo} different items needed (n={n}) but the items have only {len(pool)} values"
                )


def _check_v2_references(spec: GameSpec, game: CompiledGame, problems: list[str]) -> None:
    """The v2 constructs fit together: reactions, free phases, per-phase availability, groups."""
    reacting = _reaction_actions(spec)
    phase_actions = {a for ph in spec.phases for a in ph.actions}
    for name, a in spec.actions.items():
        r = a.reactions
        if r is not None:
            for x in r.actions:
                if x not in spec.actions:
                    problems.append(
                        f"actions.{name}.reactions.actions: `{x}` is not declared under `actions`"
                    )
            if r.pass_ in spec.actions and spec.actions[r.pass_].available_if is not None:
                problems.append(
                    f"actions.{r.pass_}.available_if: `{r.pass_}` is how a reactor lets a move stand; "
                    "it must "
                    "always be available"
                )
        if a.visibility == "group" and not spec.channels.groups:
            problems.append(f"actions.{name}.group: visibility `group` needs groups under `channels.groups`")
        elif a.visibility == "group" and a.group is not None:
            literal = re.fullmatch(r"""\s*(['"])([^'"]*)\1\s*""", a.group)
            if literal and literal.group(2) not in spec.channels.groups:
                problems.append(
                    f"actions.{name}.group: `{literal.group(2)}` is not a group "
                    f"(groups: {sorted(spec.channels.groups)})"
                )
    for ph in spec.phases:
        base = f"phases.{ph.name}"
        for k in ph.available_if:
            if k not in ph.actions:
                problems.append(f"{base}.available_if: `{k}` is not one of this phase's actions")
        if ph.mode == "free" and ph.pass_action is not None and ph.pass_action not in ph.actions:
            problems.append(f"{base}.pass_action: `{ph.pass_action}` is not one of this phase's actions")
        if ph.mode != "sequential":
            with_reactions = [a for a in ph.actions if a in spec.actions and spec.actions[a].reactions]
            if with_reactions:
                problems.append(
                    f"{base}: {with_reactions} have reactions, which only a sequential phase can wait for"
                )
    both = sorted(reacting & phase_actions)
    for name in both:
        if any(
            "pending" in e.variables
            for _path, e in game.problems.exprs
            if _path.startswith(f"actions.{name}.")
        ):
            problems.append(
                f"actions.{name}: reads `pending`, but it is also a phase action, where no move is pending"
            )


def _check_roles(spec: GameSpec, game: CompiledGame, problems: list[str]) -> None:
    open_ended = [r.name for r in spec.roles if r.count is None]
    if len(open_ended) > 1:
        problems.append(f"roles: only one role may omit `count` (fill the rest); got {open_ended}")
        return
    counts = {name: _over_n(e, spec) for name, e in game.role_counts.items()}
    found: dict[str, tuple[str, list[int]]] = {}  # field path -> (problem at the first n, every n)
    for n in range(spec.players.min, spec.players.max + 1):
        path, problem = _role_count_problem(spec, counts, n)
        if path is not None:
            found.setdefault(path, (problem, []))[1].append(n)
    for path, (problem, ns) in found.items():
        also = f" (also n={', '.join(map(str, ns[1:]))})" if len(ns) > 1 else ""
        problems.append(f"{path}: {problem}{also}")
    if found or not any(e is not None and "options" in e.variables for e in game.role_counts.values()):
        return
    # Counts that read the options must fit under every option value too (a role switched on, more of
    # a role): each option's other values are tried one at a time, and a failure names that option
    # and the role whose count it changed.
    for label, variant in _option_variants(spec):
        changed_counts = {name: _over_n(e, variant) for name, e in game.role_counts.items()}
        for n in range(spec.players.min, spec.players.max + 1):
            path, problem = _role_count_problem(variant, changed_counts, n)
            if path is None:
                continue
            changed = [
                f"{r} from {counts[r][n]} to {changed_counts[r][n]}"  # type: ignore[index]
                for r in counts
                if counts[r] is not None
                and changed_counts[r] is not None
                and counts[r][n] != changed_counts[r][n]  # type: ignore[index]
            ]
            first = changed[0].split(" ", 1)[0] if changed else path.split(".")[1]
            problems.append(
                f"roles.{first}.count: with {label}, {problem} "
                f"(the option changes {', '.join(changed) or 'no count'})"
            )
            break


def _option_variants(spec: GameSpec) -> list[tuple[str, GameSpec]]:
    """The spec with one option at a time set to each of its other values (bool: the other; enum: each;
    int/float: min and max)."""
    out = []
    for name, o in spec.options.items():
        if o.type == "bool":
            alts: list[Any] = [not o.default]
        elif o.type == "enum":
            alts = [v for v in o.values or [] if v != o.default]
        else:
            alts = [x for x in (o.min, o.max) if x is not None and x != o.default]
        for v in alts[:8]:
            shown = str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else v
            out.append((f"option {name}={shown}", spec.with_options({name: v})))
    return out


def _role_count_problem(
    spec: GameSpec, counts: Mapping[str, dict[int, Any] | None], n: int
) -> tuple[str | None, str]:
    """The role count that does not fit `n` players, and why (None when all fit)."""
    taken: dict[str, int] = {}  # role -> seats, in assignment order
    for r in spec.roles:
        values = counts[r.name]
        if values is None:  # open-ended, or not known statically
            continue
        v = values[n]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return f"roles.{r.name}.count", f"gives {v!r} with n={n}; a count is a whole number >= 0"
        taken[r.name] = v
    total = sum(taken.values())
    split = ", ".join(f"{k}: {c}" for k, c in taken.items())
    if total > n:
        # Seats go in role order: the role where they run out is the one to name.
        running = 0
        short = []
        for name, c in taken.items():
            if running + c > n:
                short.append(name)
            running += c
        return (
            f"roles.{short[0]}.count",
            f"roles need {total} seats ({split}) but there are n={n} players; "
            f"{', '.join(short)} would get fewer seats than counted",
        )
    # Fewer counted seats than players is fine: the engine gives the rest to the last role.
    return None, ""


_TICK = re.compile(r"^tick (\d+): ")
DRY_RUN_MAX_TICKS = 2_000  # per episode: whether a game ends is the play-test's question, not this one's
DRY_RUN_HINT_TICKS = 200  # ticks per episode at which the acting player's hints are evaluated too
DRY_RUN_NO_VALID_TICKS = 200  # random play this long without one valid move: no move can be valid
DRY_RUN_UNITS = 20_000_000  # the work of the whole dry run (~5 s here; the built-in games need < 100,000)


def dry_run_errors(
    spec: GameSpec,
    seeds: tuple[int, ...] = (0, 1, 2),
    episodes: int = 3,
    max_ticks: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Reset and play a few random episodes; any runtime expression error is a problem.

    An error repeated at every tick is one problem: each distinct message is reported once, with
    the episode it was first seen in, its ticks there and how often it came up. Each episode stops
    after `max_ticks` ticks, at most DRY_RUN_MAX_TICKS (a turn limit of 10,000 with an allowance of
    100 would be a million ticks). The acting player's hints are evaluated on the first ticks too: a
    hint over the evaluation budget is a problem (one that merely fails is not shown to players).
    The whole dry run does at most DRY_RUN_UNITS units of work (`expr_budget`). `progress` is told
    each episode as it starts (`spec_guard` reports it when a child process is stopped).
    """
    from .agents.baseline import RandomAgent  # the dry run plays; agents sit above the spec layer
    from .engine import MAX_ERRORS_KEPT, GameEngine
    from .view import _hints, action_schema, player_view

    cap = DRY_RUN_MAX_TICKS if max_ticks is None else min(max_ticks, DRY_RUN_MAX_TICKS)
    units = 0

    seen: dict[str, _Sighting] = {}
    defaults = {ph.name: ph.default_move is not None for ph in spec.phases}
    allowance = spec.invalid_actions.allowance if spec.invalid_actions.then == "pass" else 0
    if not allowance:
        defaults = {}  # out of attempts means forfeiting: no default move is ever played
    for n in sorted({spec.players.min, spec.players.max}):
        try:
            engine = GameEngine(spec, n_players=n)
        except ValueError as exc:
            return [f"players: {exc}"]
        for seed in seeds[:episodes]:
            if progress is not None:
                progress(f"dry run n={n}, seed={seed}")
            engine.reset(seed)
            units += engine.budget.tick_used
            agents = {p: RandomAgent(seed * 100 + i) for i, p in enumerate(engine.players)}
            ticks = valid = 0
            hints: list[str] = []
            tried: set[str] = set()  # phases whose default move this episode has tried
            forcing: dict[str, str] = {}  # phase -> the player sending nothing until its turn passes
            while not engine.done and ticks < cap:
                ticks += 1
                moves = {}
                for p in engine.current_actors():
                    ph = engine.phase
                    if defaults.get(ph) and not engine.stack and ph not in tried:
                        tried.add(ph)
                        forcing[ph] = p
                    if forcing.get(ph) == p and not engine.stack:
                        if engine.invalid_streak[p] + 1 >= allowance:
                            del forcing[ph]  # this empty reply uses up the allowance: the default move
                        moves[p] = ""
                        continue
                    moves[p] = agents[p].choose({"action_schema": action_schema(engine, p)})
                    if spec.hints and ticks <= DRY_RUN_HINT_TICKS and not hints:
                        _hints(spec, player_view(engine, p), hints)
                valid += sum(r.valid for r in engine.tick(moves).values())
                units += engine.budget.tick_used
                if units > DRY_RUN_UNITS:
                    engine.errors.append(
                        f"tick {engine.tick_no}: the dry run did more than {DRY_RUN_UNITS:,} units of work: "
                        "the expressions cost too much for every tick to run them"
                    )
                    break
            for h in hints:
                engine.record_error(h)
            if not valid and ticks >= DRY_RUN_NO_VALID_TICKS and not engine.errors:
                engine.errors.append(
                    f"tick {engine.tick_no}: not one valid move in {ticks:,} ticks of random play: every "
                    "action is refused (check the `valid_if` checks and the parameter bounds)"
                )
            capped = len(engine.errors) >= MAX_ERRORS_KEPT
            for err in engine.errors:
                m = _TICK.match(err)
                message = err[m.end() :] if m else err
                sighting = seen.setdefault(message, _Sighting(f"n={n}, seed={seed}"))
                sighting.add(f"n={n}, seed={seed}", int(m.group(1)) if m else None, capped)
            if engine.errors:
                break
    return [f"{message} ({s.describe()})" for message, s in seen.items()]


@dataclass
class _Sighting:
    """One distinct dry-run error: where it first came up, and how often."""

    where: str  # the first episode with it
    ticks: list[int] = dataclasses.field(default_factory=list)  # its ticks in that episode
    count: int = 0  # over all episodes
    capped: bool = False  # the engine stopped recording errors, so there were more

    def add(self, where: str, tick: int | None, capped: bool) -> None:
        self.count += 1
        self.capped |= capped
        if where == self.where and tick is not None:
            self.ticks.append(tick)

    def describe(self) -> str:
        ticks = sorted(set(self.ticks))
        at = ""
        if len(ticks) > 4:
            at = f"ticks {ticks[0]}-{ticks[-1]}"
        elif ticks:
            at = ("tick " if len(ticks) == 1 else "ticks ") + ", ".join(map(str, ticks))
        times = f"{self.count}{'+' if self.capped else ''} times" if self.count > 1 else ""
        detail = ", ".join(x for x in (at, times) if x)
        return f"dry run {self.where}" + (f": {detail}" if detail else "")
