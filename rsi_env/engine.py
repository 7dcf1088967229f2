"""The game engine: runs a compiled spec, one tick at a time. No PettingZoo here (see `env.py`).

The clock is the tick. At each tick a set of players must act (one in a sequential phase, every
actor still to move in a simultaneous one); the others may send anything, which is ignored. This
one clock serves both PettingZoo APIs: the Parallel env is a tick per `step`, the AEC env visits
every live agent once per tick. `max_cycles` counts ticks in both.

Nothing a player sends raises: unreadable or illegal actions become feedback in that player's next
observation and count against its allowance; runtime errors in spec expressions are recorded in
`errors` (the generator's play-test rejects games that have any; the runner records an episode with
any as `game_error`, never as played) and the step goes on.

Beyond one move per turn (sequential) and sealed rounds (simultaneous), a phase may be `free` talk
(every actor may move each round, moves apply at once in seat order, until a round of passes or the
budget is spent), and a move may open a window of out-of-turn `reactions`: the engine keeps a stack
of pending moves, asks the reactors (a tick, all at once), resolves their answers in the declared
order (a reaction may open its own window, or `cancel` the move it answers), then applies the move.

All state is plain data plus the numpy generator, so `snapshot()` / `restore()` are exact.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

from . import actions as act
from .compiled import BATCH_ITEMS, BATCH_MAX, Batch, CEffect, CompiledGame, CRepeat, Target, compiled
from .events import (
    ActionEvent,
    AnnounceEvent,
    CommittedEvent,
    ConductFlag,
    EndEvent,
    Event,
    ForfeitEvent,
    InvalidEvent,
    PassEvent,
    PhaseEvent,
    TellEvent,
)
from .expr import (
    Expr,
    ExprError,
    OverBudget,
    Scope,
    SeededRandom,
    copy_plain,
    is_number,
    seeded_rng,
    select_functions,
)
from .expr_budget import BudgetExceeded, measure
from .spec import MAX_LIST_ITEMS, GameSpec, Param, SpecError

_ZERO = {"int": 0, "float": 0.0, "bool": False, "str": "", "player": None, "list": [], "map": {}, "any": None}
MAX_SETUP_DRAWS = 2000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_EVENTS_KEPT = 5000
MAX_ERRORS_KEPT = 100


@dataclass
class SubmitResult:
    valid: bool
    feedback: str | None = None
    action: str | None = None
    args: dict[str, Any] | None = None


class GameEngine:
    """One running game. Construct, `reset(seed)`, then `tick({player: text})` until `done`."""

    def __init__(self, spec: GameSpec, n_players: int | None = None, max_ticks: int | None = None) -> None:
        self.game: CompiledGame = compiled(spec)
        self.spec = spec
        n = n_players if n_players is not None else (spec.players.default or spec.players.min)
        if not spec.players.min <= n <= spec.players.max:
            raise ValueError(
                f"{spec.id}: n_players={n} is outside the game's range "
                f"[{spec.players.min}, {spec.players.max}]"
            )
        self.players = [f"player_{i}" for i in range(n)]
        self.options = spec.option_values()
        self._check_role_counts(n)
        self.seat = {p: i for i, p in enumerate(self.players)}
        allowance = spec.invalid_actions.allowance
        # Default tick cap: every turn may take the full invalid allowance, plus slack for phase changes;
        # a move that opens reaction windows takes a tick (and its allowance) per window too.
        windows = 1 + _reaction_depth(spec)
        self.max_ticks = max_ticks or spec.end.turn_limit * (allowance + 1) * windows + 10
        self.random = SeededRandom(np.random.default_rng(0))
        # One CEL context per engine, holding just the functions this spec calls.
        self._context = Scope({}, select_functions(self.game.function_names, self.random), memo=True)
        # The evaluation budget (`expr_budget`): its units start again at every tick; setup is one.
        self.budget = self._context.budget
        self._scope: Scope | None = None
        self._actors: list[str] | None = None
        # Evaluated parameter bounds per (player, action) until the next change: a schema and the
        # check of the move it answers read the same ones.
        self._bounds: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._legal: dict[str, list[str]] = {}  # available actions per current actor, until the next change
        # What `view.legal_example` found per player until the next change (it tries up to 8 moves on the
        # engine, and an observation is rendered again after every invalid reply), with its units of work.
        self.examples: dict[str, tuple[Any, int]] = {}
        self.generation = 0  # counts the changes (`_changed`): a result computed across one is stale
        self._any_available_if = any(a.available_if for a in spec.actions.values()) or any(
            ph.available_if for ph in spec.phases
        )
        self._cancel_target: dict[str, Any] | None = None  # the pending move a reaction's effects may cancel
        self._quiet_errors = False  # trying a move out (the example shown to players) records nothing
        self.last_results: dict[str, SubmitResult] = {}
        self.reset(0)

    # --- setup -----------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        self.budget.start_tick()
        self.seed = seed
        self.random.rng = seeded_rng(seed)
        self.tick_no = 0
        self.turn = 0
        self.phase = self.spec.phases[0].name
        self.phase_turn = 0
        self.phase_turns: int | None = None
        self.last_actor: str | None = None
        self.pending: dict[str, dict[str, Any] | None] = {}
        self.round_actors: list[str] = []
        self.stack: list[dict[str, Any]] = []  # moves waiting for reactions, innermost last
        self.phase_moves = 0  # free phase: moves other than passing so far
        self.free_done = False  # free phase: a round of passes, or the budget spent
        self.invalid_streak = dict.fromkeys(self.players, 0)
        self.invalid_total = dict.fromkeys(self.players, 0)
        self.forfeited: list[str] = []
        self.forfeit_payoffs: dict[str, float] = {}
        self.events: list[Event] = []
        self.flags: list[ConductFlag] = []
        self.feedback: dict[str, str | None] = dict.fromkeys(self.players, None)
        self.errors: list[str] = []
        self.game_error: str | None = None  # why the game stopped on a spec error, if it did
        self.done = False
        self.truncated = False
        self.end_reason: str | None = None
        self.payoffs: dict[str, float] | None = None
        self.best: dict[str, float | None] | None = None
        self.outcomes: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self.pstate: dict[str, dict[str, Any]] = {p: {} for p in self.players}
        self._assign_roles()
        self._dirty()
        self._setup_vars()
        self._run_effects(self.game.setup, {})
        self._build_channels()
        if self.errors and self.game_error is None:
            # A setup that failed is no game to play: scores from a half-drawn state mean nothing.
            self._abort(f"setup failed: {self.errors[0].split(': ', 1)[-1]}", record=False)
        self._enter_phase(self.phase)
        self._after_turn(count_turn=False)

    def _check_role_counts(self, n: int) -> None:
        """Options may change role counts (a role switched on): a choice that leaves the roles more seats
        than there are players is a SpecError naming the roles the options decide, not a silent game
        with a role missing."""
        depends = [
            r.name
            for r in self.spec.roles
            if (e := self.game.role_counts[r.name]) and "options" in e.variables
        ]
        if not depends:
            return
        scope = Scope({"n": n, "options": self.options})
        counts: dict[str, int] = {}
        for r in self.spec.roles:
            e = self.game.role_counts[r.name]
            try:
                v = e(scope) if e is not None else None
            except ExprError:
                continue  # the spec checks report it
            if v is not None and is_number(v):
                counts[r.name] = int(v)
        total = sum(counts.values())
        if total > n:
            chosen = ", ".join(f"{k}={v}" for k, v in self.options.items())
            split = ", ".join(f"{k}: {c}" for k, c in counts.items())
            raise SpecError(
                self.spec.id,
                [
                    f"roles.{depends[0]}.count: with options {chosen}, roles need {total} seats ({split}) "
                    "but "
                    f"there are n={n} players; the options decide the count of {', '.join(depends)}"
                ],
            )

    def _assign_roles(self) -> None:
        n = len(self.players)
        seats = list(self.players)
        if self.spec.role_assignment == "shuffle":
            seats = self.random.shuffle(seats)
        self.role: dict[str, str] = {}
        scope = Scope({"n": n, "options": self.spec.option_values()})
        i = 0  # roles fill seats in order; `count` is CEL over n (and the options)
        for r in self.spec.roles:
            expr = self.game.role_counts[r.name]
            count = (n - i) if expr is None else int(self._eval(expr, scope, default=0))
            for p in seats[i : i + max(0, count)]:
                self.role[p] = r.name
            i += max(0, count)
        fallback = self.spec.roles[-1].name
        for p in seats[i:]:
            self.role[p] = fallback  # more seats than counted roles: the last role fills them
        teams = {r.name: r.team for r in self.spec.roles}
        self.team = {p: teams.get(self.role[p]) for p in self.players}

    def _setup_vars(self) -> None:
        for name, var in self.spec.state.items():
            self.state[name] = self._draw(
                var.type, self.game.var_init[name], self.game.var_where[name], {}, f"state.{name}"
            )
            self._touch("state", name)  # later draws may read it: re-convert just this field
        for name, var in self.spec.player_state.items():
            for p in self.players:
                self.pstate[p][name] = self._draw(
                    var.type,
                    self.game.pvar_init[name],
                    self.game.pvar_where[name],
                    {"p": p},
                    f"player_state.{name}",
                )
                self._touch("P")

    def _draw(self, vtype: str, init: Expr | None, where: Expr | None, bind: dict, path: str) -> Any:
        if init is None:
            return copy.deepcopy(_ZERO[vtype])
        for _ in range(MAX_SETUP_DRAWS if where is not None else 1):
            value = _typed(vtype, self._eval(init, self._scoped(**bind), path=f"{path}.init"))
            if not _fits(vtype, value):
                self._error(f"{path}.init: expected {vtype} (the declared type), got {_show(value)}")
                # The zero value instead: a wrong start must not cascade into unrelated errors.
                return copy.deepcopy(_ZERO[vtype])
            if where is None or self._test(where, self._scoped(**bind, value=value), f"{path}.where"):
                return value
        self._abort(f"{path}.where: no value satisfied the constraint in {MAX_SETUP_DRAWS} draws")
        return value

    def _build_channels(self) -> None:
        g = nx.DiGraph()
        g.add_nodes_from(self.players)
        scope = self._scoped()
        for a in self.players:
            for b in self.players:
                if a != b and self._test(self.game.channel, scope.bind(a=a, b=b), "channels.private"):
                    g.add_edge(a, b)
        self.channels = g

    # --- scopes and evaluation -------------------------------------------------------------------

    def _base_values(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "P": self.pstate,
            "players": self.players,
            "n": len(self.players),
            "role": self.role,
            "team": self.team,
            "phase": self.phase,
            "turn": self.turn,
            "forfeited": self.forfeited,
            "options": self.options,
        }

    def _scoped(self, **bindings: Any) -> Scope:
        """The scope of the current state (rebuilt after changes), with per-call bindings."""
        if self._scope is None:
            # `state` and `P` are refreshed after every write (`_touch`); the players, their roles and
            # teams and the options are never changed in place (a new game makes new objects).
            self._scope = self._context.reset(
                self._base_values(), kept=("state", "P", "players", "role", "team", "options")
            )
        if "me" in bindings and "my" not in bindings:
            bindings["my"] = self.pstate.get(bindings["me"], {})
        return self._scope.bind(**bindings) if bindings else self._scope

    def _changed(self) -> None:
        """Something a player's options depend on changed (state, turn, phase, forfeits)."""
        self._actors = None
        self._bounds = {}
        self._legal = {}
        self.examples = {}
        self.generation += 1

    def _dirty(self) -> None:
        """The state or the turn changed: drop the scope and the cached actors."""
        self._scope = None
        self._changed()

    def _touch(self, root: str, field: Any = None) -> None:
        """Refresh one root variable in the context after an effect wrote it (for `state`, the field
        written, when known), live scope or not: so `_scoped` need not convert `state` and `P` again."""
        self._changed()
        if root == "state":
            self._context.refresh("state", self.state, field=field)
        else:
            self._context.refresh("P", self.pstate, stale=("my",))

    def _eval(self, expr: Expr | None, scope: Scope, default: Any = None, path: str = "") -> Any:
        """The value of `expr` here; `default` when it fails (the error is recorded) or is missing
        (None: it did not compile, which only a non-strict compile lets through)."""
        if expr is None or self.game_error is not None:
            return default  # a game stopped on a spec error evaluates nothing more
        try:
            return expr(scope)
        except OverBudget as exc:
            self._abort(f"{path or 'expression'}: {exc}")
            return default
        except ExprError as exc:
            self._error(f"{path or 'expression'}: {exc}")
            return default

    def _test(self, expr: Expr | None, scope: Scope, path: str) -> bool:
        """A condition's value. CEL has no truthiness, so anything but true/false is a spec error
        (and counts as false, like a condition that fails to evaluate)."""
        value = self._eval(expr, scope, default=False, path=path)
        if isinstance(value, bool):
            return value
        self._error(f"{path}: expected true or false, got {_show(value)}")
        return False

    def _payoff(self, expr: Expr | None, scope: Scope, path: str) -> float:
        """A payoff as float; NaN (never 0) when there is no number, so it cannot pass as a score."""
        value = self._number(expr, scope, path) if expr is not None else None
        return float("nan") if value is None else value

    def _number(self, expr: Expr, scope: Scope, path: str, nullable: bool = False) -> float | None:
        """The number `expr` gives, else None; anything but a number (or an allowed null) is a spec error."""
        value = self._eval(expr, scope, default=_FAILED, path=path)
        if is_number(value):
            return float(value)
        if value is not _FAILED and not (nullable and value is None):
            self._error(f"{path}: expected a number, got {_show(value)}")
        return None

    def _error(self, message: str) -> None:
        if self._quiet_errors:
            raise _TryFailed
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(f"tick {self.tick_no}: {message}")

    def record_error(self, message: str) -> None:
        """A spec failure found outside the engine's own step (a hint over the evaluation budget while
        an observation is rendered): recorded once, as the engine's own failures are, so the episode
        ends as `game_error`, never as played with the hint silently left out."""
        if not any(line.split(": ", 1)[-1] == message for line in self.errors):
            self._error(message)

    def failure(self) -> str | None:
        """Why a finished game's payoffs are not a score (`game_error: ...`), or None if they are. One
        rule for everything that records a result (the runner, the TextArena adapter): the game
        stopped on a spec error; a payoff is not a finite number (its expression failed: NaN); or an
        expression failed while it ran (an effect, a default move, a condition), so the game played
        is not the one written."""
        if self.game_error is not None:
            return f"game_error: {self.game_error}"
        broken = sorted(p for p, v in (self.payoffs or {}).items() if not math.isfinite(v))
        if broken:
            why = next((x for x in reversed(self.errors) if "payoffs." in x), None)
            return f"game_error: payoff of {', '.join(broken)} is not a finite number" + (
                f" ({why})" if why else ""
            )
        if self.errors:
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return f"game_error: {self.errors[0]}{more}"
        return None

    def _abort(self, message: str, record: bool = True) -> None:
        """Stop the game on a spec error it cannot play on with: over the evaluation budget, a value
        nested or grown past the limits, a setup that fails or cannot be satisfied. The game is done
        with no payoffs (`end_reason` game_error); the runner records the episode as aborted."""
        if self.game_error is not None:
            return
        if record:
            self._error(message)
        self.game_error = message
        self.done = True
        self.truncated = False
        self.end_reason = "game_error"
        self.payoffs = None
        self.best = None
        self._changed()
        self._log(EndEvent(**self._stamp(), text=f"The game stopped on a spec error: {message}"))

    # --- effects ---------------------------------------------------------------------------------

    def _run_effects(self, effects: list[CEffect], bind: dict[str, Any]) -> None:
        for eff in effects:
            if eff.for_each is not None:
                items = self._eval(
                    eff.for_each, self._scoped(**bind), default=[], path=f"{eff.path}.for_each"
                )
                if isinstance(items, dict):
                    items = list(items)
                if not isinstance(items, list):
                    continue
                if eff.batch is not None and 1 < len(items) <= BATCH_MAX:
                    if self._run_batch(eff, eff.batch, items, bind):
                        continue
                for item in items:
                    self._run_effect(eff, {**bind, eff.as_: item})
            else:
                self._run_effect(eff, bind)

    def _run_batch(self, eff: CEffect, batch: Batch, items: list[Any], bind: dict[str, Any]) -> bool:
        """Run a `for_each` whose items cannot see each other's writes from one evaluation of them all
        (`compiled.Batch`): the same writes and announcements, in the same order, and the same units
        charged as item by item. False when it fails (an error, a limit), with nothing written and
        nothing charged: then the items run one by one, and fail where and as they would have."""
        if self.game_error is not None:
            return True  # a game stopped on a spec error evaluates nothing more
        budget = self.budget
        before = budget.tick_used
        scope = self._scoped(**bind, **{BATCH_ITEMS: items})
        try:
            got = batch.expr(scope)
        except ExprError:
            budget.tick_used = before
            return False
        held = sum(1 for g in got if g) if batch.has_cond else len(items)
        if not budget.replay(batch.units(len(items), held)):
            budget.tick_used = before  # over the tick's limit: item by item, it stops where it would
            return False
        for item, parts in zip(items, got, strict=True):
            if self.game_error is not None:
                break
            if not parts:
                continue  # its condition is false
            if eff.op == "announce":
                if parts[0] is not None:
                    self._log(AnnounceEvent(**self._stamp(), text=str(parts[0])))
                continue
            assert eff.target is not None
            self._write(eff.target, eff.op, parts[0], scope, {**bind, eff.as_: item}, eff.path, parts[1:])
        return True

    def _run_effect(self, eff: CEffect, bind: dict[str, Any]) -> None:
        scope = self._scoped(**bind)
        if eff.cond is not None and not self._test(eff.cond, scope, f"{eff.path}.if"):
            return
        if eff.repeat is not None:
            return self._repeat(eff.repeat, bind, eff.path)
        value = (
            self._eval(eff.value, scope, default=_FAILED, path=eff.path) if eff.value is not None else None
        )
        if value is _FAILED:
            return  # the error is recorded; writing a stand-in value would only add a second one
        if eff.op == "announce":
            if value is not None:  # null: nothing to announce this time
                self._log(AnnounceEvent(**self._stamp(), text=str(value)))
            return
        if eff.op == "cancel":
            if not isinstance(value, bool):
                self._error(f"{eff.path}.cancel: expected true or false, got {_show(value)}")
            elif value and self._cancel_target is None:
                self._error(
                    f"{eff.path}.cancel: there is no pending move to cancel here (only reactions cancel)"
                )
            elif value and self._cancel_target is not None:
                self._cancel_target["cancelled"] = True
            return
        if eff.op == "tell":
            text = self._eval(eff.text, scope, path=f"{eff.path}.text")
            if value in self.seat and text is not None:
                self._log(TellEvent(**self._stamp(), text=str(text), visible_to=[value]))
            else:
                self._error(f"{eff.path}.tell: {value!r} is not a player")
            return
        assert eff.target is not None
        self._write(eff.target, eff.op, value, scope, bind, eff.path)

    def _repeat(self, rep: CRepeat, bind: dict[str, Any], path: str) -> None:
        """Run the block until its condition holds after a pass; reaching the declared maximum first is
        a spec error (the bound was wrong), never a silent stop."""
        for i in range(rep.max):
            inner = {**bind, "iteration": i}
            self._run_effects(rep.effects, inner)
            if rep.until is None or self._test(rep.until, self._scoped(**inner), f"{path}.repeat.until"):
                return
        self._error(f"{path}.repeat: `until` did not hold after {rep.max} passes (the declared max)")

    def _write(
        self,
        target: Target,
        op: str,
        value: Any,
        scope: Scope,
        bind: dict,
        path: str,
        evaluated: list[Any] | None = None,
    ) -> None:
        """Write `value` at `target` (`evaluated`: the values of its key expressions, when known)."""
        if target.root == "state":
            variables: dict[str, Any] = self.state
        else:
            who = (
                bind.get("me")
                if target.root == "my"
                else self._eval(target.player, scope, default=_FAILED, path=path)
            )
            if who is _FAILED:
                return
            if who is None:
                self._error(f"{path}: {target.source}: the player index is null (no player to write to)")
                return
            if who not in self.pstate:
                self._error(f"{path}: {target.source}: {who!r} is not a player")
                return
            variables = self.pstate[who]
        container: Any = variables
        given = iter(evaluated) if evaluated is not None else None
        keys: list[Any] = [
            k
            if isinstance(k, str)
            else next(given)
            if given is not None
            else self._eval(k, scope, default=_FAILED, path=path)
            for k in target.keys
        ]
        if _FAILED in keys:
            return
        if None in keys:
            self._error(f"{path}: {target.source}: a key is null (nothing to write to)")
            return
        for k in keys[:-1]:
            if isinstance(container, dict) and k in container:
                container = container[k]
            elif isinstance(container, list) and isinstance(k, int) and -len(container) <= k < len(container):
                container = container[k]
            else:
                self._error(f"{path}: {target.source}: no key {k!r}")
                return
        last = keys[-1]
        if isinstance(container, list) and not (
            isinstance(last, int) and -len(container) <= last < len(container)
        ):
            self._error(f"{path}: {target.source}: index {last!r} out of range")
            return
        if not isinstance(container, dict | list):
            self._error(f"{path}: {target.source}: cannot index into {type(container).__name__}")
            return
        if op == "add":
            current = container[last] if (isinstance(container, list) or last in container) else 0
            try:
                value = current + value
            except TypeError:
                self._error(f"{path}: cannot add {value!r} to {current!r}")
                return
        if len(keys) == 1:
            decl = self.spec.state.get(last) if target.root == "state" else self.spec.player_state.get(last)
            if decl is not None:
                value = _typed(decl.type, value)
                if not _fits(decl.type, value):
                    self._error(f"{path}: {target.source} is declared {decl.type}, got {_show(value)}")
                    return
        had, old = (
            (last in container, container.get(last))
            if isinstance(container, dict)
            else (True, container[last])
        )
        container[last] = copy_plain(value)
        try:  # the whole variable, as it is now: a value may grow by small writes into it
            measure(variables[keys[0]], self.budget.limits, f"{target.source} would hold")
        except BudgetExceeded as exc:
            if had:
                container[last] = old
            else:
                del container[last]
            self._abort(f"{path}: {exc}")
            return
        self._touch("state" if target.root == "state" else "P", keys[0])

    # --- events ----------------------------------------------------------------------------------

    def _stamp(self) -> dict[str, Any]:
        """Where in the game an event happens: its tick, turn and phase."""
        return {"tick": self.tick_no, "turn": self.turn, "phase": self.phase}

    def _log(self, event: Event) -> None:
        if len(self.events) < MAX_EVENTS_KEPT:
            self.events.append(event)

    # --- phases and turns ------------------------------------------------------------------------

    def _phase_spec(self) -> Any:
        return self.spec.phases[self.game.phases[self.phase].index]

    def _phase_actors(self) -> list[str]:
        raw = self._eval(
            self.game.phases[self.phase].actors,
            self._scoped(),
            default=[],
            path=f"phases.{self.phase}.actors",
        )
        if not isinstance(raw, list):
            self._error(f"phases.{self.phase}.actors: expected a list of players, got {raw!r}")
            return []
        return [p for p in dict.fromkeys(raw) if p in self.seat and p not in self.forfeited]

    def _enter_phase(self, name: str) -> None:
        self.phase = name
        self.phase_turn = 0
        self.last_actor = None
        self.pending = {}
        self.phase_moves = 0
        self.free_done = False
        self._dirty()
        cp = self.game.phases[name]
        self._log(PhaseEvent(**self._stamp(), text=f"Phase: {name}"))
        self._run_effects(cp.on_enter, {})
        self.phase_turns = None
        if cp.turns is not None:
            t = self._eval(cp.turns, self._scoped(), default=1, path=f"phases.{name}.turns")
            self.phase_turns = max(0, int(t)) if isinstance(t, int | float) else 1
        if self._phase_spec().mode != "sequential":
            self.round_actors = self._phase_actors()
        self._changed()

    def current_actors(self) -> list[str]:
        """Who must act at this tick (cached until the state, turn or pending moves change)."""
        if self._actors is None:
            self._actors = self._compute_actors()
        return self._actors

    def _compute_actors(self) -> list[str]:
        if self.done:
            return []
        if self.stack:  # a reaction window: the reactors still to answer
            top = self.stack[-1]
            return [p for p in top["reactors"] if p not in top["answers"] and p not in self.forfeited]
        if self._phase_spec().mode != "sequential":
            return [p for p in self.round_actors if p not in self.pending and p not in self.forfeited]
        actors = self._phase_actors()
        if not actors:
            return []
        if self.last_actor is None:
            cp = self.game.phases[self.phase]
            if cp.first is not None:
                first = self._eval(cp.first, self._scoped(), path=f"phases.{self.phase}.first")
                if first in actors:
                    return [first]
            return [actors[0]]
        if self.last_actor in actors:
            return [actors[(actors.index(self.last_actor) + 1) % len(actors)]]
        after = [p for p in actors if self.seat[p] > self.seat[self.last_actor]]
        return [after[0] if after else actors[0]]

    def _after_turn(self, count_turn: bool = True) -> None:
        """Advance counters, then end the game or the phase when their conditions hold."""
        if count_turn:
            self.turn += 1
            self.phase_turn += 1
            self._dirty()
        for _ in range(4 * len(self.spec.phases) + 4):  # phases whose actors are all gone are skipped
            if self._test(self.game.end_when, self._scoped(), "end.when"):
                return self._finish("end condition")
            if self.turn >= self.spec.end.turn_limit:
                return self._finish("turn limit")
            cp = self.game.phases[self.phase]
            no_actors = not self.current_actors() and not self.pending
            limit_hit = self.phase_turns is not None and self.phase_turn >= self.phase_turns
            until = (
                cp.until is not None
                and self.phase_turn > 0
                and self._test(cp.until, self._scoped(), f"phases.{self.phase}.until")
            )
            if not (limit_hit or until or no_actors or self.free_done):
                return None
            self._run_effects(cp.on_exit, {})
            target = self._next_phase(cp)
            if target == "end":
                return self._finish("phase transition", exited=True)
            self._enter_phase(target)
        return self._finish("no actors left")

    def _next_phase(self, cp: Any) -> str:
        for i, (cond, goto) in enumerate(cp.next):
            if self._test(cond, self._scoped(), f"phases.{self.phase}.next[{i}].if"):
                return goto
        phases = self.spec.phases
        return phases[(cp.index + 1) % len(phases)].name

    def _finish(self, reason: str, truncated: bool = False, exited: bool = False) -> None:
        """End the game: the current phase exits (unless a transition already exited it), then
        payoffs and outcomes are computed, with the conduct `flags` readable by both."""
        if self.done:
            return
        if not exited:
            self._run_effects(self.game.phases[self.phase].on_exit, {})
        self.done = True
        self.truncated = truncated
        self.end_reason = reason
        self._dirty()
        payoffs: dict[str, float] = {}
        best: dict[str, float | None] = {}
        flags = [f.model_dump() for f in self.flags]  # CEL reads plain maps
        for p in self.players:
            if p in self.forfeit_payoffs:
                payoffs[p] = self.forfeit_payoffs[p]
                continue
            scope = self._scoped(p=p, flags=flags)
            payoffs[p] = self._payoff(self.game.payoff, scope, "payoffs.value")
            if self.game.payoff_best is not None:
                best[p] = self._number(self.game.payoff_best, scope, "payoffs.best", nullable=True)
        self.payoffs = payoffs
        self.best = best or None
        for k, e in self.game.outcomes.items():
            if e is not None:
                self.outcomes[k] = self._eval(e, self._scoped(flags=flags), path=f"outcomes.{k}")
        self._log(EndEvent(**self._stamp(), text=f"Game over ({reason}).", payoffs=payoffs))

    # --- acting ----------------------------------------------------------------------------------

    def tick(self, moves: dict[str, Any]) -> dict[str, SubmitResult]:
        """Advance one tick: each current actor's text is parsed and applied; others are ignored."""
        self.budget.start_tick()
        results: dict[str, SubmitResult] = {}
        self.last_results = results
        if self.done:
            return results
        for p in self.current_actors():
            if self.done:
                break
            results[p] = self._submit(p, moves.get(p, ""))
        self.tick_no += 1
        if not self.done and self.tick_no >= self.max_ticks:
            self._finish("tick limit", truncated=True)
        return results

    def legal_actions(self, player: str) -> list[str]:
        """The actions `player` may take now: the phase's (or, in a reaction window, the reactions'),
        those whose `available_if` holds."""
        if player not in self.current_actors():
            return []
        hit = self._legal.get(player)
        if hit is None:
            offered = self._offered()
            hit = self._legal[player] = (
                [a for a in offered if self._available(player, a)]
                if self._any_available_if
                else list(offered)
            )
        return list(hit)

    def _offered(self) -> list[str]:
        """The actions of this moment before `available_if`: a reaction window's, else the phase's."""
        if self.stack:
            reactions = self.spec.actions[self.stack[-1]["action"]].reactions
            assert reactions is not None
            return reactions.actions
        return self._phase_spec().actions

    def pending_move(self) -> dict[str, Any] | None:
        """The move the open reaction window waits on ({player, action, args}), if any."""
        return _move_of(self.stack[-1]) if self.stack else None

    def _pending_bind(self) -> dict[str, Any]:
        """`pending` (the move a reaction answers) while a reaction window is open."""
        return {"pending": _move_of(self.stack[-1])} if self.stack else {}

    def _available(self, player: str, name: str) -> bool:
        scope = self._scoped(me=player, **self._pending_bind())
        cond = self.game.actions[name].available
        if cond is not None and not self._test(cond, scope, f"actions.{name}.available_if"):
            return False
        here = None if self.stack else self.game.phases[self.phase].available.get(name)
        return here is None or self._test(here, scope, f"phases.{self.phase}.available_if.{name}")

    def _submit(self, player: str, text: Any) -> SubmitResult:
        names = self.legal_actions(player)
        if not names:
            self._error(
                f"phases.{self.phase}: no action is available to {player} (every `available_if` is false)"
            )
            self._pass(player)
            return SubmitResult(valid=False, feedback="No action was available to you; your turn passed.")
        parsed = act.parse_action(text, self._offered())
        if parsed.error is None and parsed.name not in names:
            args: dict[str, Any] = {}
            problems = [f"`{parsed.name}` is not available now; legal actions: {names}"]
        elif parsed.error is None:
            assert parsed.name is not None
            args, problems = self._check(player, parsed.name, parsed.args)
        else:
            args, problems = {}, [parsed.error]
        if problems:
            return self._invalid(player, text, parsed.name, "; ".join(problems))
        self.invalid_streak[player] = 0
        self.feedback[player] = None
        assert parsed.name is not None
        self._check_conduct(player, parsed.name, args)
        self._accept(player, parsed.name, args)
        return SubmitResult(valid=True, action=parsed.name, args=args)

    def _accept(self, player: str, name: str, args: dict[str, Any]) -> None:
        """A checked move (or a default move): sealed, applied, or held for reactions, by mode."""
        mode = self._phase_spec().mode
        if self.stack:
            self.stack[-1]["answers"][player] = {"action": name, "args": args}
            self._changed()
            self._committed(player, name, args, "hidden until every reactor has answered")
            self._resolve_reactions()
        elif mode == "simultaneous":
            self.pending[player] = {"action": name, "args": args}
            self._changed()
            self._committed(player, name, args, "hidden until all have moved")
            self._maybe_resolve()
        elif mode == "free":
            self._apply(player, name, args)
            self.pending[player] = {"action": name, "args": args}
            if name != self._phase_spec().pass_action:
                self.phase_moves += 1
            self._changed()
            self._maybe_end_round()
        else:
            self._move(player, name, args)

    def _committed(self, player: str, name: str, args: dict[str, Any], until: str) -> None:
        self._log(
            CommittedEvent(
                **self._stamp(),
                player=player,
                visible_to=[player],
                action=name,
                args=args,
                text=f"You committed: {_describe(name, args)} ({until}).",
            )
        )

    def _move(self, player: str, name: str, args: dict[str, Any]) -> None:
        """A sequential move: applied at once, or held while the players who may react answer."""
        reactors = self._reactors(player, name, args)
        if not reactors:
            self._apply(player, name, args)
            self.last_actor = player
            self._changed()
            self._after_turn()
            return
        self._declare(player, name, args)
        self.stack.append(_frame(player, name, args, reactors))
        self._changed()

    # --- reactions -------------------------------------------------------------------------------

    def _reactors(self, player: str, name: str, args: dict[str, Any]) -> list[str]:
        """Who may react to this move (its action's `reactions.by`), the mover and forfeited left out."""
        ca = self.game.actions[name]
        if ca.reactions is None or ca.reactions.by is None:
            return []
        raw = self._eval(
            ca.reactions.by,
            self._scoped(me=player, args=args),
            default=[],
            path=f"actions.{name}.reactions.by",
        )
        if not isinstance(raw, list):
            self._error(f"actions.{name}.reactions.by: expected a list of players, got {_show(raw)}")
            return []
        return [p for p in dict.fromkeys(raw) if p in self.seat and p != player and p not in self.forfeited]

    def _resolve_reactions(self) -> None:
        """Resolve the reaction windows as far as the answers in allow: each window's answers in
        order (a reaction with reactions of its own opens a window and waits), then its move."""
        while self.stack:
            top = self.stack[-1]
            if top["queue"] is None:
                if any(p not in top["answers"] and p not in self.forfeited for p in top["reactors"]):
                    return  # still waiting for answers
                top["queue"] = self._chosen_reactions(top)
                if not top["queue"]:
                    self._log(
                        AnnounceEvent(
                            **self._stamp(), text=f"Nobody reacts to {top['player']}'s {top['action']}."
                        )
                    )
            if top["queue"]:
                r = top["queue"].pop(0)
                reactors = self._reactors(r["player"], r["action"], r["args"])
                if reactors:
                    self._declare(r["player"], r["action"], r["args"], pending=_move_of(top))
                    self.stack.append(_frame(r["player"], r["action"], r["args"], reactors))
                    self._changed()
                    continue
                self._apply(r["player"], r["action"], r["args"], pending=_move_of(top), cancels=top)
                continue
            self.stack.pop()
            parent = self.stack[-1] if self.stack else None
            if top["cancelled"]:
                self._log(
                    AnnounceEvent(**self._stamp(), text=f"{top['player']}'s {top['action']} is cancelled.")
                )
            else:
                pending = {"pending": _move_of(parent)} if parent is not None else {}
                self._effects(top["player"], top["action"], top["args"], pending, cancels=parent)
            self._changed()
            if parent is None:
                self.last_actor = top["player"]
                self._after_turn()
                return

    def _chosen_reactions(self, frame: dict[str, Any]) -> list[dict[str, Any]]:
        """The answers that react (not `pass`), in the declared order (just the first with
        `resolve: first`)."""
        reactions = self.spec.actions[frame["action"]].reactions
        assert reactions is not None
        answers = frame["answers"]
        order: list[str] = []
        expr = self.game.actions[frame["action"]].reactions
        if expr is not None and expr.order is not None:
            raw = self._eval(
                expr.order,
                self._scoped(me=frame["player"], args=frame["args"]),
                default=[],
                path=f"actions.{frame['action']}.reactions.order",
            )
            order = [p for p in raw if p in answers] if isinstance(raw, list) else []
        else:
            i = self.seat[frame["player"]]
            order = [p for p in self.players[i + 1 :] + self.players[:i] if p in answers]
        order += [p for p in self.players if p in answers and p not in order]
        chosen = [
            {"player": p, **answers[p]}
            for p in order
            if answers[p] is not None and answers[p]["action"] != reactions.pass_
        ]
        return chosen[:1] if reactions.resolve == "first" else chosen

    # --- free talk -------------------------------------------------------------------------------

    def _maybe_end_round(self) -> None:
        """A free phase's round is over once every actor has moved (or passed, or forfeited): the phase
        ends after a round of passes only, or once the budget of moves is spent."""
        if any(p not in self.pending and p not in self.forfeited for p in self.round_actors):
            return
        phase = self._phase_spec()
        all_passed = all(m is None or m["action"] == phase.pass_action for m in self.pending.values())
        budget = self.game.phases[self.phase].budget
        spent = False
        if budget is not None:
            limit = self._number(budget, self._scoped(), f"phases.{self.phase}.budget")
            spent = limit is not None and self.phase_moves >= limit
        self.free_done = all_passed or spent
        self.pending = {}
        self.round_actors = self._phase_actors()
        self._after_turn()

    def _invalid(self, player: str, text: Any, name: str | None, why: str) -> SubmitResult:
        self.invalid_streak[player] += 1
        self.invalid_total[player] += 1
        allowance = self.spec.invalid_actions.allowance
        left = allowance - self.invalid_streak[player]
        shown = str(text)[:200]
        msg = f"Your last reply was invalid: {why}."
        if left > 0:
            msg += f" {left} attempt(s) left this turn."
        self.feedback[player] = msg
        self._log(
            InvalidEvent(
                **self._stamp(), player=player, visible_to=[player], action=name, text=msg, raw=shown
            )
        )
        if left <= 0:
            self.invalid_streak[player] = 0
            if self.spec.invalid_actions.then == "forfeit":
                self._forfeit(player)
            else:
                self._pass(player)
        return SubmitResult(valid=False, feedback=msg, action=name)

    def _pass(self, player: str) -> None:
        phase = self._phase_spec()
        self.feedback[player] = (self.feedback[player] or "") + " Your turn was passed."
        self._log(PassEvent(**self._stamp(), player=player, text=f"{player} passed (out of attempts)."))
        if self.stack:  # a reactor out of attempts does not react
            self.stack[-1]["answers"][player] = None
            self._changed()
            self._resolve_reactions()
            return
        move = self._default_move(player) if phase.default_move is not None else None
        if phase.mode == "simultaneous":
            self.pending[player] = move
            self._changed()
            self._maybe_resolve()
        elif phase.mode == "free":
            if move is not None:
                self._apply(player, move["action"], move["args"])
            self.pending[player] = move
            if move is not None and move["action"] != phase.pass_action:
                self.phase_moves += 1
            self._changed()
            self._maybe_end_round()
        elif move is not None:
            self._move(player, move["action"], move["args"])
        else:
            self.last_actor = player
            self._changed()
            self._after_turn()

    def _default_move(self, player: str) -> dict[str, Any] | None:
        """The phase's default move for `player` (of a list, the first legal one), checked like any
        move: when none is legal here (an argument fails, out of bounds, unavailable, a failed
        `valid_if`) it is a spec error and no move."""
        why: list[str] = []
        scope = self._scoped(me=player)
        for dpath, name, exprs in self.game.phases[self.phase].default_moves:
            path = f"phases.{self.phase}.{dpath}"
            raw: dict[str, Any] = {}
            for k, e in exprs.items():
                v = self._eval(e, scope, default=_FAILED, path=f"{path}.args.{k}")
                if v is _FAILED:
                    return None
                if v is not None:
                    raw[k] = v
            if name not in self.legal_actions(player):
                why.append(f"{path}: `{name}` is not available to {player} now")
                continue
            args, problems = self._check(player, name, raw)
            if problems:
                move = _describe(name, raw)
                why.append(f"{path}: `{move}` is not a legal move for {player}: {'; '.join(problems)}")
                continue
            return {"action": name, "args": args}
        self._error("; ".join(why))
        return None

    def _forfeit(self, player: str) -> None:
        v = self._payoff(self.game.payoff_forfeit, self._scoped(p=player), "payoffs.forfeit")
        self.forfeit_payoffs[player] = v
        self.forfeited.append(player)
        self._dirty()
        self._log(ForfeitEvent(**self._stamp(), player=player, text=f"{player} forfeits (out of attempts)."))
        if self.stack:
            self._changed()
            self._resolve_reactions()
        elif self._phase_spec().mode == "simultaneous":
            self._maybe_resolve()
        elif self._phase_spec().mode == "free":
            self._changed()
            self._maybe_end_round()
        else:
            self.last_actor = player
            self._changed()
            self._after_turn()

    def _maybe_resolve(self) -> None:
        waiting = [p for p in self.round_actors if p not in self.pending and p not in self.forfeited]
        if waiting:
            return
        moves = {p: m for p, m in self.pending.items() if m is not None}
        for p in sorted(moves, key=self.seat.__getitem__):
            self._apply(p, moves[p]["action"], moves[p]["args"])
        self._run_effects(self.game.phases[self.phase].on_resolve, {"moves": moves})
        self.pending = {}
        self.round_actors = self._phase_actors()
        self._after_turn()

    def _apply(
        self,
        player: str,
        name: str,
        args: dict[str, Any],
        pending: dict[str, Any] | None = None,
        cancels: dict[str, Any] | None = None,
    ) -> None:
        """A move happens: its event (the log line reads the state before), then its effects."""
        bind = {"pending": pending} if pending is not None else {}
        self._declare(player, name, args, pending)
        self._effects(player, name, args, bind, cancels)

    def _effects(
        self,
        player: str,
        name: str,
        args: dict[str, Any],
        bind: dict[str, Any],
        cancels: dict[str, Any] | None = None,
    ) -> None:
        """A move's effects; a reaction's `cancel` effects cancel `cancels` (the move it answers)."""
        self._cancel_target = cancels
        try:
            self._run_effects(self.game.actions[name].effects, {"me": player, "args": args, **bind})
        finally:
            self._cancel_target = None

    def _audience(self, player: str, name: str, args: dict[str, Any], scope: Scope) -> list[str] | None:
        """Who sees a move (None: everyone), by its action's visibility."""
        spec_action = self.spec.actions[name]
        vis = spec_action.visibility
        if vis == "private":
            return [player]
        if vis == "team":
            return [
                p for p in self.players if self.team[p] is not None and self.team[p] == self.team[player]
            ] or [player]
        if vis == "recipient":
            to = args.get(spec_action.recipient) if spec_action.recipient else None
            return list(dict.fromkeys([player, *(to if isinstance(to, list) else [to] if to else [])]))
        if vis == "group":
            members = self._group_members(name, scope)
            return list(dict.fromkeys([player, *(members or [])]))
        return None

    def _group_members(self, name: str, scope: Scope) -> list[str] | None:
        expr = self.game.actions[name].group
        if expr is None:
            return None
        members = self._eval(expr, scope, default=None, path=f"actions.{name}.group")
        if not isinstance(members, list):
            if members is not None:
                self._error(
                    f"actions.{name}.group: a group's members must be a list of players, got {_show(members)}"
                )
            return None
        return [p for p in members if p in self.seat]

    def _declare(
        self, player: str, name: str, args: dict[str, Any], pending: dict[str, Any] | None = None
    ) -> None:
        """The event of a move (its log line evaluated on the state before its effects)."""
        ca = self.game.actions[name]
        bind = {"me": player, "args": args, **({"pending": pending} if pending is not None else {})}
        scope = self._scoped(**bind)
        text = None
        if ca.log is not None:
            text = self._eval(ca.log, scope, path=f"actions.{name}.log")
        visible = self._audience(player, name, args, scope)
        self._log(
            ActionEvent(
                **self._stamp(),
                player=player,
                visible_to=visible,
                action=name,
                args={k: v for k, v in args.items() if k != "message"},
                message=args.get("message"),
                text=str(text) if text is not None else None,
            )
        )

    def _check_conduct(self, player: str, name: str, args: dict[str, Any]) -> None:
        for c, expr in self.game.conduct:
            if c.action != name or expr is None:
                continue
            scope = self._scoped(me=player, args=args, **self._pending_bind())
            if self._test(expr, scope, f"conduct.{c.name}.when"):
                self.flags.append(
                    ConductFlag(
                        tick=self.tick_no,
                        turn=self.turn,
                        player=player,
                        name=c.name,
                        kind=c.kind,
                        action=name,
                        args=args,
                        description=c.description,
                    )
                )

    # --- snapshot / restore ----------------------------------------------------------------------

    _SNAPSHOT_FIELDS = (
        "seed", "tick_no", "turn", "phase", "phase_turn", "phase_turns", "last_actor", "pending",
        "round_actors", "stack", "phase_moves", "free_done", "invalid_streak", "invalid_total", "forfeited",
        "forfeit_payoffs",
        "feedback",
        "errors", "game_error", "done", "truncated", "end_reason", "payoffs", "best", "outcomes", "state",
        "pstate", "role", "team",
    )  # fmt: skip
    _RECORD_LOGS = ("events", "flags")  # lists of immutable records: copying the lists is enough

    def snapshot(self) -> dict[str, Any]:
        """An exact, independent copy of the game state (plain data + the generator's state)."""
        snap = copy.deepcopy({k: getattr(self, k) for k in self._SNAPSHOT_FIELDS})
        snap.update({k: list(getattr(self, k)) for k in self._RECORD_LOGS})
        snap["rng"] = copy.deepcopy(self.random.rng.bit_generator.state)
        snap["channels"] = sorted(self.channels.edges())
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        data = copy.deepcopy({k: snap[k] for k in self._SNAPSHOT_FIELDS})
        for k in self._SNAPSHOT_FIELDS:
            setattr(self, k, data[k])
        for k in self._RECORD_LOGS:
            setattr(self, k, list(snap[k]))
        self.random.rng.bit_generator.state = copy.deepcopy(snap["rng"])
        self.channels = nx.DiGraph()
        self.channels.add_nodes_from(self.players)
        self.channels.add_edges_from(tuple(e) for e in snap["channels"])
        self._dirty()

    # --- validation of one action ----------------------------------------------------------------

    def param_bounds(self, player: str, name: str) -> dict[str, dict[str, Any]]:
        """Evaluated bounds/choices of each parameter for `player` now (for checks and schemas).
        Cached until the next change: callers must not modify it."""
        hit = self._bounds.get((player, name))
        if hit is None:
            hit = self._bounds[(player, name)] = self._param_bounds(player, name)
        return hit

    def _param_bounds(self, player: str, name: str) -> dict[str, dict[str, Any]]:
        scope = self._scoped(me=player, **self._pending_bind())
        spec_action = self.spec.actions[name]
        out: dict[str, dict[str, Any]] = {}
        for pname, prm in spec_action.params.items():
            recipient = spec_action.visibility == "recipient" and pname == spec_action.recipient
            out[pname] = self._bounds_of(
                prm,
                self.game.actions[name].bounds[pname],
                scope,
                player,
                f"actions.{name}.params.{pname}",
                recipient,
            )
        return out

    def _bounds_of(
        self, prm: Param, exprs: dict[str, Any], scope: Scope, player: str, path: str, recipient: bool
    ) -> dict[str, Any]:
        """One parameter's bounds, evaluated; a list's `items` and an object's `fields` in turn."""
        b: dict[str, Any] = {}
        for key, e in exprs.items():
            if key not in ("items", "fields"):
                b[key] = self._eval(e, scope, path=f"{path}.{key}")
        if prm.type in ("int", "float"):
            self._check_range(b, path)
        if prm.type == "enum" and isinstance(prm.values, list):
            b["values"] = prm.values
        if prm.type == "player":
            cands = b.get("candidates")
            if not isinstance(cands, list):
                cands = [p for p in self.players if p != player]
            b["candidates"] = [p for p in cands if p in self.seat and p not in self.forfeited]
            if recipient:  # only players the channel graph lets `player` message
                b["candidates"] = [p for p in b["candidates"] if self.channels.has_edge(player, p)]
        if prm.type == "list" and prm.items is not None:
            b["items"] = self._bounds_of(
                prm.items, exprs.get("items", {}), scope, player, f"{path}.items", recipient
            )
            self._check_range(b, path, ("min_items", "max_items"))
            lo, hi = b.get("min_items"), b.get("max_items")
            b["min_items"] = int(lo) if lo is not None and is_number(lo) else 0
            b["max_items"] = (
                min(int(hi), MAX_LIST_ITEMS) if hi is not None and is_number(hi) else MAX_LIST_ITEMS
            )
        if prm.type == "object" and prm.fields is not None:
            fields = exprs.get("fields", {})
            b["fields"] = {
                k: self._bounds_of(f, fields.get(k, {}), scope, player, f"{path}.fields.{k}", False)
                for k, f in prm.fields.items()
            }
        return b

    def _check_range(self, b: dict[str, Any], path: str, keys: tuple[str, str] = ("min", "max")) -> None:
        """Bounds that are not numbers, or min above max, leave no valid value (or none enforced):
        a spec error, reported here because bounds may depend on state."""
        for key in keys:
            if key in b and b[key] is not None and not is_number(b[key]):
                self._error(f"{path}.{key}: expected a number, got {_show(b.pop(key))}")
        lo, hi = b.get(keys[0]), b.get(keys[1])
        if lo is not None and hi is not None and lo > hi:
            self._error(f"{path}: {keys[0]} ({lo}) is above {keys[1]} ({hi}): no value is valid")

    def _check(self, player: str, name: str, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        spec_action = self.spec.actions[name]
        bounds = self.param_bounds(player, name)
        args: dict[str, Any] = {}
        problems: list[str] = []
        for pname, prm in spec_action.params.items():
            b = bounds[pname]
            if pname not in raw or raw[pname] is None:
                if not prm.optional:
                    problems.append(f"`{name}` needs `{pname}` ({_param_hint(prm, b)})")
                continue
            value, why = _coerce(prm, b, raw[pname], self.players)
            if why:
                problems.append(f"`{pname}` {why}")
            else:
                args[pname] = value
        if spec_action.message != "none":
            msg = act.clip_text(raw.get("message"), 600)
            if msg:
                args["message"] = msg
            elif spec_action.message == "required":
                problems.append(f"`{name}` needs a `message` (text)")
        if problems:
            return args, problems
        scope = self._scoped(me=player, args=args, **self._pending_bind())
        if spec_action.visibility == "group":
            members = self._group_members(name, scope)
            if members is not None and player not in members:
                problems.append("you are not a member of that group")
        for i, (expr, message) in enumerate(self.game.actions[name].valid_if):
            if not self._test(expr, scope, f"actions.{name}.valid_if[{i}].expr"):
                problems.append(message)
        return args, problems

    def accepts(self, player: str, move: dict[str, Any]) -> bool:
        """Whether `move` ({"action": ..., params...}) would be a legal move of `player` now; nothing
        is recorded (an expression that fails here just means no)."""
        name = move.get("action")
        if name not in self.legal_actions(player):
            return False
        self._quiet_errors = True
        try:
            _args, problems = self._check(player, name, {k: v for k, v in move.items() if k != "action"})
        except _TryFailed:
            return False
        finally:
            self._quiet_errors = False
        return not problems


class _TryFailed(Exception):
    """An expression failed while a move was only being tried out (see `GameEngine.accepts`)."""


def _frame(player: str, name: str, args: dict[str, Any], reactors: list[str]) -> dict[str, Any]:
    """A move waiting for reactions: who may react, their answers, then the reactions to resolve."""
    return {
        "player": player,
        "action": name,
        "args": args,
        "reactors": reactors,
        "answers": {},
        "queue": None,
        "cancelled": False,
    }


def _move_of(frame: dict[str, Any]) -> dict[str, Any]:
    """A pending move as reactions read it: `pending.player`, `pending.action`, `pending.args`."""
    return {"player": frame["player"], "action": frame["action"], "args": frame["args"]}


def _reaction_depth(spec: GameSpec) -> int:
    """How many reaction windows one move can open in a row (a reaction to a reaction...), at most 8."""
    depth = 0
    frontier = {n for n, a in spec.actions.items() if a.reactions is not None}
    seen: set[str] = set()
    while frontier and depth < 8:
        depth += 1
        seen |= frontier
        frontier = {
            r for n in frontier
            for r in spec.actions[n].answers()
            if spec.actions.get(r) is not None and spec.actions[r].reactions is not None and r not in seen
        }  # fmt: skip
    return depth


_FAILED = object()  # an expression that raised (already recorded as an error)


_FITS: dict[str, type | tuple[type, ...]] = {
    "int": (int, float), "float": (int, float), "bool": bool, "str": str, "player": str, "list": list,
    "map": dict, "any": object,
}  # fmt: skip


def _fits(vtype: str, value: Any) -> bool:
    """Whether a variable declared `vtype` may hold `value` (null is every type's "not yet")."""
    if value is None:
        return True
    if isinstance(value, bool) and vtype in ("int", "float"):
        return False
    return isinstance(value, _FITS[vtype])


def _show(value: Any) -> str:
    """A value with its CEL type, for errors: `'win' (string)`."""
    kinds = {bool: "bool", int: "int", float: "double", str: "string", list: "list", dict: "map"}
    kind = "null" if value is None else kinds.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind})"


def _typed(vtype: str, value: Any) -> Any:
    """Keep declared types stable for CEL, which never mixes int and double."""
    if vtype == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if vtype == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _param_hint(prm: Param, b: dict[str, Any]) -> str:
    ptype = prm.type
    if ptype in ("int", "float"):
        return f"{ptype} from {b.get('min', '-inf')} to {b.get('max', 'inf')}"
    if ptype == "enum":
        return f"one of {b.get('values')}"
    if ptype == "player":
        return f"one of {b.get('candidates')}"
    if ptype == "list" and prm.items is not None:
        return f"a list of {_items_hint(b)} {_param_hint(prm.items, b.get('items', {}))}"
    if ptype == "object" and prm.fields is not None:
        return "an object with " + ", ".join(prm.fields)
    return ptype


def _items_hint(b: dict[str, Any]) -> str:
    lo, hi = b.get("min_items", 0), b.get("max_items", MAX_LIST_ITEMS)
    return f"exactly {lo}" if lo == hi else f"{lo} to {hi}"


def _coerce(prm: Param, b: dict[str, Any], value: Any, players: list[str]) -> tuple[Any, str | None]:
    t = prm.type
    v: Any
    if t == "list":
        return _coerce_list(prm, b, value, players)
    if t == "object":
        return _coerce_object(prm, b, value, players)
    if t == "int":
        v = act.coerce_int(value)
        if v is None:
            return None, f"must be a whole number, got {str(value)[:40]!r}"
        if not INT64_MIN <= v <= INT64_MAX:  # CEL's int is 64 bits: a bigger one cannot be computed with
            return None, f"must be a whole number from {INT64_MIN} to {INT64_MAX}, got {str(value)[:40]}"
    elif t == "float":
        v = act.coerce_float(value)
        if v is None or not math.isfinite(v):
            return None, f"must be a finite number, got {str(value)[:40]!r}"
    elif t == "bool":
        v = act.coerce_bool(value)
        return (v, None) if v is not None else (None, f"must be true or false, got {str(value)[:40]!r}")
    elif t == "enum":
        choices = [str(c) for c in (b.get("values") or [])]
        v = act.coerce_choice(value, choices)
        return (v, None) if v is not None else (None, f"must be one of {choices}, got {str(value)[:40]!r}")
    elif t == "player":
        cands = b.get("candidates") or []
        v = act.coerce_player(value, cands, players)
        return (v, None) if v is not None else (None, f"must be one of {cands}, got {str(value)[:40]!r}")
    else:
        return act.clip_text(value, prm.max_length), None
    lo, hi = b.get("min"), b.get("max")
    if isinstance(lo, int | float) and v < lo:
        return None, f"must be at least {lo}, got {v}"
    if isinstance(hi, int | float) and v > hi:
        return None, f"must be at most {hi}, got {v}"
    return v, None


def _coerce_list(prm: Param, b: dict[str, Any], value: Any, players: list[str]) -> tuple[Any, str | None]:
    """A list parameter: its length, every item by the item's own type and bounds, and `unique`.
    Text holding a JSON list, or scalars separated by commas, is read as the list it says."""
    assert prm.items is not None
    if isinstance(value, str):
        value = act.coerce_list(value)
    if not isinstance(value, list):
        return None, f"must be a list ({_items_hint(b)} items), got {str(value)[:40]!r}"
    lo, hi = b.get("min_items", 0), b.get("max_items", MAX_LIST_ITEMS)
    if len(value) < lo or len(value) > hi:
        return None, f"must have {_items_hint(b)} items, got {len(value)}"
    out = []
    for i, item in enumerate(value):
        v, why = _coerce(prm.items, b.get("items", {}), item, players)
        if why:
            return None, f"item {i + 1} {why}"
        out.append(v)
    if prm.unique:
        seen: list[Any] = []
        for v in out:
            if v in seen:
                return None, f"must not repeat an item ({act.clip_text(v, 40)} appears twice)"
            seen.append(v)
    return out, None


def _coerce_object(prm: Param, b: dict[str, Any], value: Any, players: list[str]) -> tuple[Any, str | None]:
    """An object parameter: each declared field by its own type and bounds (unknown keys ignored)."""
    assert prm.fields is not None
    if isinstance(value, str):
        value = act.coerce_object(value)
    if not isinstance(value, dict):
        return None, f"must be an object with {', '.join(prm.fields)}, got {str(value)[:40]!r}"
    out: dict[str, Any] = {}
    for k, f in prm.fields.items():
        if value.get(k) is None:
            if not f.optional:
                return None, f"needs `{k}` ({_param_hint(f, b.get('fields', {}).get(k, {}))})"
            continue
        v, why = _coerce(f, b.get("fields", {}).get(k, {}), value[k], players)
        if why:
            return None, f"`{k}` {why}"
        out[k] = v
    return out, None


def _describe(name: str, args: dict[str, Any]) -> str:
    inner = ", ".join(f"{k}={v}" for k, v in args.items() if k != "message")
    return f"{name}({inner})"
