"""Static checks of a spec, beyond its schema: run at load by `games validate` and the generator.

- every expression compiles (see `compiled.CompiledGame`);
- every name an expression reads exists in its context (`args` only inside actions, `p` only in
  per-player expressions, random functions only in setup and effects, ...), and every
  `state.X` / `my.X` / `P[..].X` / `args.X` field is declared;
- references between parts hold (phase actions, transitions, conduct, policy, default moves);
- every action is allowed in some phase and every phase is reachable from the first (networkx);
- expressions give the type their field needs where it can be inferred (`expr_types.infer_type`):
  conditions give true/false, payoffs and bounds numbers, `init` and `set` the declared type;
- parameters can take a value (min <= max when constant, an enum has values) and role counts fit
  every player count in the range;
- a dry run: reset with a few seeds at the smallest and largest player counts, so setup
  constraints that never hold and expressions that fail on real values are caught before play.
  The engine checks types there too, and a problem repeated every tick is reported once.

`load_checked_spec(path)` is all of it for one file, as `python -m rsi_env.games validate` runs it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
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
from .spec import Action, GameSpec, SpecError, Var, read_spec_file

BASE = frozenset({"state", "P", "players", "n", "role", "team", "phase", "turn", "forfeited"})
ACTION = BASE | {"me", "my", "args"}
PLAYER = BASE | {"p", "flags"}  # payoffs: conduct flags are readable once the game is over
VIEW = frozenset(
    {"state", "P", "players", "n", "role", "team", "phase", "turn", "forfeited", "me", "my", "actors",
     "is_turn", "game", "events", "done", "payoffs"}
)  # fmt: skip


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
}  # fmt: skip
# Which parameter types each optional key applies to (elsewhere it would be silently ignored).
_PARAM_KEYS = {
    "min": ("int", "float"),
    "max": ("int", "float"),
    "values": ("enum",),
    "candidates": ("player",),
}


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
    _check_references(spec, problems)
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
) -> None:
    """Names, fields and functions `e` reads exist here; then, if asked, its type fits the field.

    `params` are the action's parameters (`args`), `local` names bound around the expression
    (`value` in `where`, a `for_each` variable) with their shapes.
    """
    if e is None:
        return
    before = len(problems)
    if allowed is VIEW:
        hidden = sorted(
            n
            for r, n in e.fields
            if r == "state" and n in spec.state and spec.state[n].visibility != "public"
        )
        if hidden:
            problems.append(f"{path}: reads non-public state {hidden}, which players cannot see")
    src = " ".join(e.source.split())
    src = src if len(src) <= 100 else src[:97] + "..."
    scope = allowed | set(local or {})
    unknown = sorted(e.variables - scope - STDLIB_NAMESPACES)
    if unknown:
        problems.append(f"{path}: unknown name(s) {unknown} in `{src}`; available here: {sorted(scope)}")
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
        got = infer_type(e.source, _type_env(spec, allowed, params, local or {}))
        if isinstance(got, frozenset) and got.isdisjoint(expect.types):
            problems.append(f"{path}: `{src}` gives {' or '.join(sorted(got))}, expected {expect.what}")


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
) -> None:
    for eff in effects:
        local = {eff.as_: None} if eff.for_each is not None else {}
        _check_expr(
            f"{eff.path}.for_each",
            eff.for_each,
            allowed,
            problems,
            spec,
            params=params,
            random_ok=True,
            expect=Expect(LIST | MAP, "a list or a map"),
        )
        # compile_effect keeps an announce/tell expression in `value`: name it by its own field.
        label = {"announce": "announce", "tell": "tell"}.get(eff.op, "value")
        value_expect = PLAYER_ID if eff.op == "tell" else _effect_expect(eff, spec)
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
                )


def _check_vars(
    root: str,
    decls: Mapping[str, Var],
    exprs: tuple[Mapping[str, Expr | None], Mapping[str, Expr | None]],
    allowed: frozenset[str],
    problems: list[str],
    spec: GameSpec,
) -> None:
    """`init` gives the declared type; `where` is a condition on the drawn `value`."""
    inits, wheres = exprs
    for name, var in decls.items():
        init_expect = (
            Expect(_VAR_ACCEPTS[var.type], f"{var.type} (its declared type)") if var.type != "any" else None
        )
        path = f"{root}.{name}"
        _check_expr(f"{path}.init", inits[name], allowed, problems, spec, random_ok=True, expect=init_expect)
        _check_expr(
            f"{path}.where",
            wheres[name],
            allowed,
            problems,
            spec,
            random_ok=True,
            expect=COND,
            local={"value": _VAR_SHAPES[var.type]},
        )


def _check_names(spec: GameSpec, game: CompiledGame, problems: list[str]) -> None:
    for name, e in game.role_counts.items():
        _check_expr(f"roles.{name}.count", e, frozenset({"n"}), problems, spec)
    setup_base = frozenset({"players", "n", "role", "team", "state"})
    _check_vars("state", spec.state, (game.var_init, game.var_where), setup_base, problems, spec)
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
    _check_vars("player_state", spec.player_state, (game.pvar_init, game.pvar_where), pbase, problems, spec)
    _check_effects(game.setup, BASE, problems, spec)
    _check_expr("channels.private", game.channel, BASE | {"a", "b"}, problems, spec, expect=COND)
    for name, ca in game.actions.items():
        params = _arg_shapes(spec.actions[name])
        for pname, bounds in ca.bounds.items():
            for key, e in bounds.items():
                expect = NUMBER_ if key in ("min", "max") else LIST_
                path = f"actions.{name}.params.{pname}.{key}"
                _check_expr(path, e, ACTION - {"args"}, problems, spec, expect=expect)
        for i, (e, _) in enumerate(ca.valid_if):
            path = f"actions.{name}.valid_if[{i}].expr"
            _check_expr(path, e, ACTION, problems, spec, params=params, expect=COND)
        _check_effects(ca.effects, ACTION, problems, spec, params)
        _check_expr(f"actions.{name}.log", ca.log, ACTION, problems, spec, params=params)
    for ph in spec.phases:
        cp = game.phases[ph.name]
        base = f"phases.{ph.name}"
        for label, e, expect in (
            ("actors", cp.actors, LIST_),
            ("first", cp.first, PLAYER_ID),
            ("turns", cp.turns, NUMBER_),
            ("until", cp.until, COND),
        ):
            _check_expr(f"{base}.{label}", e, BASE, problems, spec, expect=expect)
        _check_effects(cp.on_enter, BASE, problems, spec)
        _check_effects(cp.on_exit, BASE, problems, spec)
        _check_effects(cp.on_resolve, BASE | {"moves"}, problems, spec)
        for i, (e, _) in enumerate(cp.next):
            _check_expr(f"{base}.next[{i}].if", e, BASE, problems, spec, expect=COND)
        dm = ph.default_move
        for k, e in cp.default_args.items():
            dm_params = _arg_shapes(spec.actions[dm.action]) if dm and dm.action in spec.actions else None
            path = f"{base}.default_move.args.{k}"
            _check_expr(path, e, ACTION - {"args"}, problems, spec, params=dm_params)
    _check_expr("end.when", game.end_when, BASE, problems, spec, expect=COND)
    for label, e, expect in (
        ("value", game.payoff, NUMBER_),
        ("best", game.payoff_best, Expect(NUMBER | NULL, "a number")),
        ("forfeit", game.payoff_forfeit, NUMBER_),
    ):
        _check_expr(f"payoffs.{label}", e, PLAYER, problems, spec, expect=expect)
    for k, e in game.outcomes.items():
        _check_expr(f"outcomes.{k}", e, BASE | {"flags"}, problems, spec)
    for c, e in game.conduct:
        shapes = _arg_shapes(spec.actions[c.action]) if c.action in spec.actions else None
        _check_expr(f"conduct.{c.name}.when", e, ACTION, problems, spec, params=shapes, expect=COND)
    for k, e in game.hints.items():
        _check_expr(f"hints.{k}", e, VIEW, problems, spec)
    for i, (_rule, when, args, message) in enumerate(game.policy):
        _check_expr(f"policy[{i}].when", when, VIEW, problems, spec, expect=COND)
        for k, e in args.items():
            _check_expr(f"policy[{i}].args.{k}", e, VIEW, problems, spec)
        _check_expr(f"policy[{i}].message", message, VIEW, problems, spec)


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
        if ph.default_move and ph.default_move.action not in ph.actions:
            problems.append(
                f"phases.{ph.name}.default_move: `{ph.default_move.action}` is not allowed in this phase"
            )
        if ph.default_move and ph.default_move.action in spec.actions:
            params = spec.actions[ph.default_move.action].params
            for k in ph.default_move.args:
                if k not in params:
                    problems.append(
                        f"phases.{ph.name}.default_move.args: `{k}` is not a parameter of the action"
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
    for name in spec.actions:
        if name not in used:
            problems.append(f"actions.{name}: not allowed in any reachable phase")


def _over_n(e: Expr | None, spec: GameSpec) -> dict[int, Any] | None:
    """The value of `e` at every player count of the game, if it reads nothing but `n`.

    None when it reads anything else, draws random numbers or fails (the dry run reports a failure).
    """
    if e is None or not e.variables <= {"n"} or e.functions & RANDOM_FUNCTION_NAMES:
        return None
    scope = Scope({}, select_functions(e.functions))
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
            path = f"actions.{name}.params.{pname}"
            misplaced = [
                k for k, ok in _PARAM_KEYS.items() if getattr(prm, k) is not None and prm.type not in ok
            ]
            if misplaced:
                problems.append(f"{path}: {misplaced} do not apply to a parameter of type {prm.type}")
            if prm.type == "enum" and prm.values is None:
                problems.append(f"{path}: an enum needs `values`")
            elif prm.type == "enum" and isinstance(prm.values, list) and not prm.values:
                problems.append(f"{path}.values: an enum needs at least one value (none could be chosen)")
            bounds = game.actions[name].bounds[pname]
            lows, highs = _over_n(bounds.get("min"), spec), _over_n(bounds.get("max"), spec)
            if lows is None or highs is None:
                continue  # state-dependent: the engine reports min > max when it happens
            for n, lo in lows.items():
                hi = highs[n]
                if is_number(lo) and is_number(hi) and lo > hi:
                    at = f" with n={n}" if bounds["min"].variables or bounds["max"].variables else ""
                    problems.append(f"{path}: min ({lo}) is above max ({hi}){at}: no value is valid")
                    break


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


def dry_run_errors(
    spec: GameSpec, seeds: tuple[int, ...] = (0, 1, 2), episodes: int = 3, max_ticks: int | None = None
) -> list[str]:
    """Reset and play a few random episodes; any runtime expression error is a problem.

    An error repeated at every tick is one problem: each distinct message is reported once, with
    the episode it was first seen in, its ticks there and how often it came up. `max_ticks` caps each
    episode (whether a game ends is a separate question from whether its expressions run).
    """
    from .agents.baseline import RandomAgent  # the dry run plays; agents sit above the spec layer
    from .engine import MAX_ERRORS_KEPT, GameEngine
    from .view import action_schema

    seen: dict[str, _Sighting] = {}
    for n in sorted({spec.players.min, spec.players.max}):
        try:
            engine = GameEngine(spec, n_players=n)
        except ValueError as exc:
            return [f"players: {exc}"]
        for seed in seeds[:episodes]:
            engine.reset(seed)
            agents = {p: RandomAgent(seed * 100 + i) for i, p in enumerate(engine.players)}
            ticks = 0
            while not engine.done and (max_ticks is None or ticks < max_ticks):
                ticks += 1
                moves = {}
                for p in engine.current_actors():
                    moves[p] = agents[p].choose({"action_schema": action_schema(engine, p)})
                engine.tick(moves)
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
