"""Static checks of a spec, beyond its schema: run at load by `games validate` and the generator.

- every expression compiles (see `compiled.CompiledGame`);
- every name an expression reads exists in its context (`args` only inside actions, `p` only in
  per-player expressions, random functions only in setup and effects, ...), and every
  `state.X` / `my.X` / `P[..].X` / `args.X` field is declared;
- references between parts hold (phase actions, transitions, conduct, policy, default moves);
- every action is allowed in some phase and every phase is reachable from the first (networkx);
- role counts fit the player range;
- a dry run: reset with a few seeds at the smallest and largest player counts, so setup
  constraints that never hold and expressions that fail on real values are caught before play.
"""

from __future__ import annotations

import networkx as nx

from .compiled import CEffect, CompiledGame
from .expr import KNOWN_FUNCTIONS, RANDOM_FUNCTION_NAMES, STDLIB_NAMESPACES, Expr
from .spec import GameSpec, SpecError

BASE = frozenset({"state", "P", "players", "n", "role", "team", "phase", "turn", "forfeited"})
ACTION = BASE | {"me", "my", "args"}
PLAYER = BASE | {"p", "flags"}  # payoffs: conduct flags are readable once the game is over
VIEW = frozenset(
    {"state", "P", "players", "n", "role", "team", "phase", "turn", "forfeited", "me", "my", "actors",
     "is_turn", "game", "events", "done", "payoffs"}
)  # fmt: skip


def check_spec(spec: GameSpec, source: str = "<spec>", dry_run: bool = True) -> CompiledGame:
    """Compile and check `spec`; raises SpecError with every problem found, one line each."""
    game = CompiledGame(spec, source, strict=False)
    problems: list[str] = list(game.problems.lines)
    _check_names(spec, game, problems)
    _check_references(spec, problems)
    _check_reachability(spec, problems)
    _check_roles(spec, problems)
    if problems:
        raise SpecError(source, problems)
    if dry_run:
        problems += dry_run_errors(spec)
        if problems:
            raise SpecError(source, problems)
    return game


def _check_expr(
    path: str,
    e: Expr | None,
    allowed: frozenset[str],
    problems: list[str],
    spec: GameSpec,
    *,
    params: set[str] | None = None,
    random_ok: bool = False,
) -> None:
    if e is None:
        return
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
    unknown = sorted(e.variables - allowed - STDLIB_NAMESPACES)
    if unknown:
        problems.append(f"{path}: unknown name(s) {unknown} in `{src}`; available here: {sorted(allowed)}")
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


def _check_effects(
    effects: list[CEffect],
    allowed: frozenset[str],
    problems: list[str],
    spec: GameSpec,
    params: set[str] | None = None,
) -> None:
    for eff in effects:
        scope = allowed | {eff.as_} if eff.for_each is not None else allowed
        _check_expr(
            f"{eff.path}.for_each", eff.for_each, allowed, problems, spec, params=params, random_ok=True
        )
        for label, e in (("if", eff.cond), ("value", eff.value), ("text", eff.text)):
            _check_expr(f"{eff.path}.{label}", e, scope, problems, spec, params=params, random_ok=True)
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
                _check_expr(f"{eff.path} (target)", k, scope, problems, spec, params=params, random_ok=True)


def _check_names(spec: GameSpec, game: CompiledGame, problems: list[str]) -> None:
    for name, e in game.role_counts.items():
        _check_expr(f"roles.{name}.count", e, frozenset({"n"}), problems, spec)
    seen: set[str] = set()
    setup_base = frozenset({"players", "n", "role", "team", "state"})
    for name in spec.state:
        _check_expr(f"state.{name}.init", game.var_init[name], setup_base, problems, spec, random_ok=True)
        _check_expr(
            f"state.{name}.where",
            game.var_where[name],
            setup_base | {"value"},
            problems,
            spec,
            random_ok=True,
        )
        for e in (game.var_init[name], game.var_where[name]):
            for root, field in e.fields if e else ():
                if root == "state" and field in spec.state and field not in seen:
                    problems.append(
                        f"state.{name}: reads `state.{field}`, which is set up later (order matters)"
                    )
        seen.add(name)
    pbase = setup_base | {"p", "P"}
    for name in spec.player_state:
        _check_expr(f"player_state.{name}.init", game.pvar_init[name], pbase, problems, spec, random_ok=True)
        _check_expr(
            f"player_state.{name}.where",
            game.pvar_where[name],
            pbase | {"value"},
            problems,
            spec,
            random_ok=True,
        )
    _check_effects(game.setup, BASE, problems, spec)
    _check_expr("channels.private", game.channel, BASE | {"a", "b"}, problems, spec)
    for name, ca in game.actions.items():
        params = set(spec.actions[name].params) | {"message"}
        for pname, bounds in ca.bounds.items():
            for key, e in bounds.items():
                allowed = ACTION - {"args"}
                _check_expr(f"actions.{name}.params.{pname}.{key}", e, allowed, problems, spec)
        for i, (e, _) in enumerate(ca.valid_if):
            _check_expr(f"actions.{name}.valid_if[{i}]", e, ACTION, problems, spec, params=params)
        _check_effects(ca.effects, ACTION, problems, spec, params)
        _check_expr(f"actions.{name}.log", ca.log, ACTION, problems, spec, params=params)
    for ph in spec.phases:
        cp = game.phases[ph.name]
        base = f"phases.{ph.name}"
        for label, e in (
            ("actors", cp.actors),
            ("first", cp.first),
            ("turns", cp.turns),
            ("until", cp.until),
        ):
            _check_expr(f"{base}.{label}", e, BASE, problems, spec)
        _check_effects(cp.on_enter, BASE, problems, spec)
        _check_effects(cp.on_exit, BASE, problems, spec)
        _check_effects(cp.on_resolve, BASE | {"moves"}, problems, spec)
        for i, (e, _) in enumerate(cp.next):
            _check_expr(f"{base}.next[{i}].if", e, BASE, problems, spec)
        dm = ph.default_move
        for k, e in cp.default_args.items():
            params = set(spec.actions[dm.action].params) if dm and dm.action in spec.actions else None
            _check_expr(f"{base}.default_move.args.{k}", e, ACTION - {"args"}, problems, spec, params=params)
    _check_expr("end.when", game.end_when, BASE, problems, spec)
    for label, e in (("value", game.payoff), ("best", game.payoff_best), ("forfeit", game.payoff_forfeit)):
        _check_expr(f"payoffs.{label}", e, PLAYER, problems, spec)
    for k, e in game.outcomes.items():
        _check_expr(f"outcomes.{k}", e, BASE | {"flags"}, problems, spec)
    for c, e in game.conduct:
        params = set(spec.actions[c.action].params) | {"message"} if c.action in spec.actions else None
        _check_expr(f"conduct.{c.name}.when", e, ACTION, problems, spec, params=params)
    for k, e in game.hints.items():
        _check_expr(f"hints.{k}", e, VIEW, problems, spec)
    for i, (_rule, when, args, message) in enumerate(game.policy):
        _check_expr(f"policy[{i}].when", when, VIEW, problems, spec)
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
    for name, a in spec.actions.items():
        for pname, prm in a.params.items():
            if prm.type == "enum" and prm.values is None:
                problems.append(f"actions.{name}.params.{pname}: an enum needs `values`")
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


def _check_roles(spec: GameSpec, problems: list[str]) -> None:
    open_ended = [r.name for r in spec.roles if r.count is None]
    if len(open_ended) > 1:
        problems.append(f"roles: only one role may omit `count` (fill the rest); got {open_ended}")


def dry_run_errors(spec: GameSpec, seeds: tuple[int, ...] = (0, 1, 2), episodes: int = 3) -> list[str]:
    """Reset and play a few random episodes; any runtime expression error is a problem."""
    from .agents.baseline import RandomAgent  # the dry run plays; agents sit above the spec layer
    from .engine import GameEngine
    from .view import action_schema

    problems: list[str] = []
    for n in sorted({spec.players.min, spec.players.max}):
        try:
            engine = GameEngine(spec, n_players=n)
        except ValueError as exc:
            return [f"players: {exc}"]
        for seed in seeds[:episodes]:
            engine.reset(seed)
            agents = {p: RandomAgent(seed * 100 + i) for i, p in enumerate(engine.players)}
            while not engine.done:
                moves = {}
                for p in engine.current_actors():
                    moves[p] = agents[p].choose({"action_schema": action_schema(engine, p)})
                engine.tick(moves)
            for err in engine.errors[:5]:
                line = f"dry run (n={n}, seed={seed}): {err}"
                if line not in problems:
                    problems.append(line)
            if engine.errors:
                break
    return problems
