"""A GameSpec with every expression compiled once, shared by all env instances of that spec.

Compilation collects every problem (with its field path) instead of stopping at the first, so a
bad spec gets one line per problem. Effect targets (`state.pool.books`, `P[args.to].coins`) are
parsed here into a root plus a list of key steps.

Named expressions (`let:` at spec, phase and action level, and the channel `groups`) are bound
here, at compile time: an expression that reads some is compiled as `[(<let>)].map(NAME, <expr>)[0]`
(CEL has no `bind` in this package, and a one-element comprehension is one), innermost last, so each
is computed once per evaluation and nothing in the engine knows about lets. The expression keeps
its own text for messages and for the static checks, which check each let where it is declared and
again in the context of every expression that reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cel

from .expr import RANDOM_FUNCTION_NAMES, Expr, ExprError, split_state
from .expr_budget import instrument
from .spec import Effect, GameSpec, Param, SpecError


@dataclass(frozen=True)
class Target:
    """Where an effect writes: root `state` / `my` / `P[player]`, then keys (str or Expr)."""

    root: str
    player: Expr | None
    keys: tuple[str | Expr, ...]
    source: str


@dataclass(frozen=True)
class CRepeat:
    max: int
    until: Expr | None
    effects: list[CEffect]


@dataclass(frozen=True)
class CEffect:
    op: str  # set | add | announce | tell | repeat | cancel
    target: Target | None
    value: Expr | None  # set/add: the value; announce: the line; tell: the player; cancel: the condition
    text: Expr | None
    cond: Expr | None
    for_each: Expr | None
    as_: str
    path: str  # field path in the spec, for error messages
    repeat: CRepeat | None = None
    batch: Batch | None = None  # its items evaluated in one call, when they cannot see each other


BATCH_ITEMS = "_rsi_items"  # the items of a batched `for_each` (`Batch`), bound per call
# A batch's own `map` is not charged to the budget (the engine wrote it, not the spec): cel-rust
# copies the list a `map` has built at every step, so it stays short.
BATCH_MAX = 64


@dataclass(frozen=True)
class Batch:
    """A `for_each` effect evaluated for all its items in one CEL call, when no item can see what an
    earlier one wrote: its condition, value and keys read nothing of the field it writes (an
    announcement writes nothing). The engine then applies the results in order, as if each item had
    been evaluated in turn.

    Why: a change of a per-call variable (the item) makes the next evaluation rebuild the whole CEL
    environment, ~40 µs in diplomacy, whose orders resolution walks every army a dozen times.

    The program is `_rsi_items.map(x, IF ? [VALUE, KEY...] : [])`, each part its own program's text
    (its lets bound, its comprehensions instrumented), so it charges the budget what the parts
    charge; what their own evaluations were charged on top (`Budget.start_eval`) is charged per item
    after it (`cond_units`, `body_units`). The engine evaluates the items one by one when the batch
    fails (an error, a limit), and so gives the same errors, at the same item."""

    expr: Expr
    has_cond: bool
    cond_units: int  # per item: what evaluating the condition alone is charged beyond its hooks
    body_units: int  # per item whose condition holds: the same for the value and the keys

    def units(self, items: int, held: int) -> int:
        """What `items` evaluated one by one, `held` of them past their condition, would have been
        charged beyond the batch's own evaluation."""
        return items * self.cond_units + held * self.body_units - _eval_units(self.expr)


def _eval_units(e: Expr) -> int:
    """The units `Budget.start_eval` charges an evaluation of `e`: `charge(2)`, and `charge(5 * lets - 1)`
    when it binds lets (each `charge(u)` is `int(u) + 1`)."""
    return 3 + (5 * e.let_count if e.let_count else 0)


def _batch(
    cond: Expr | None, value: Expr | None, target: Target | None, op: str, as_: str, lets: Lets
) -> Batch | None:
    """The batch of a `for_each` effect (`Batch`), or None when its items must run one by one."""
    if value is None or op not in ("set", "add", "announce"):
        return None
    keys = [k for k in target.keys if isinstance(k, Expr)] if target is not None else []
    if op != "announce":
        if target is None or target.root != "state" or not isinstance(target.keys[0], str):
            return None  # writes to players: `P` and `my` are read whole
    parts = ([cond] if cond is not None else []) + [value, *keys]
    if any(RANDOM_FUNCTION_NAMES & let_functions(e, lets.exprs) for e in parts):
        return None  # the order of draws stays the engine's
    if op != "announce":
        written = target.keys[0] if target is not None else None
        if any(e.run_split is None or written in e.state_fields for e in parts):
            return None  # an item could read what an earlier one wrote

    def text(attr: str) -> str | None:
        texts = []
        for e in parts:
            program = getattr(e, attr)
            if program is None:
                return None
            texts.append(f"(\n{program.source}\n)")
        body = "[" + ", ".join(texts[1:] if cond is not None else texts) + "]"
        if cond is not None:
            body = f"{texts[0]} ? {body} : []"
        return f"{BATCH_ITEMS}.map({as_}, {body})"

    source = text("run")
    whole = _compile(source)
    if source is None or whole is None:
        return None
    out = Expr(BATCH_ITEMS)
    out.source = source
    out.program = out.run = whole
    out.run_split = _compile(text("run_split"))
    out.state_fields = frozenset().union(*(e.state_fields for e in parts)) if out.run_split else frozenset()
    out.variables = (frozenset().union(*(reads(e) for e in parts)) - {as_}) | {BATCH_ITEMS}
    out.functions = frozenset().union(*(let_functions(e, lets.exprs) for e in parts))
    return Batch(
        expr=out,
        has_cond=cond is not None,
        cond_units=_eval_units(cond) if cond is not None else 0,
        body_units=sum(_eval_units(e) for e in [value, *keys]),
    )


class LetExpr(Expr):
    """An expression that reads named expressions: its program binds them, its text is its own."""

    __slots__ = ("lets", "reads")
    lets: tuple[str, ...]  # the lets its program binds, in binding order
    reads: frozenset[str]  # the names its program reads, through its lets too (its lets' names aside)


@dataclass(frozen=True)
class Lets:
    """The named expressions visible at one level (the spec's, plus a phase's or an action's), in
    binding order: a let may read the ones before it."""

    exprs: Mapping[str, Expr] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)

    def inner(self, more: Mapping[str, Expr], sources: Mapping[str, str]) -> Lets:
        return Lets({**self.exprs, **more}, {**self.sources, **sources})

    def needed(self, names: frozenset[str]) -> list[str]:
        """The lets an expression reading `names` needs, transitively, in binding order."""
        want = {n for n in names if n in self.exprs}
        todo = list(want)
        while todo:
            e = self.exprs[todo.pop()]
            for n in e.variables:
                if n in self.exprs and n not in want:
                    want.add(n)
                    todo.append(n)
        return [n for n in self.exprs if n in want]


NO_LETS = Lets()


@dataclass
class Problems:
    """Collects spec problems as `field.path: message` lines."""

    lines: list[str] = field(default_factory=list)
    exprs: list[tuple[str, Expr]] = field(default_factory=list)

    def expr(self, path: str, source: Any, lets: Lets = NO_LETS) -> Expr | None:
        if source is None:
            return None
        try:
            e = Expr(source)
        except ExprError as exc:
            self.lines.append(f"{path}: expression does not compile: {exc}")
            return None
        needed = lets.needed(e.variables) if lets.exprs else []
        if needed:
            e = _bind_lets(e, needed, lets)
        self.exprs.append((path, e))
        return e

    def add(self, line: str) -> None:
        self.lines.append(line)


def _bind_lets(e: Expr, names: list[str], lets: Lets) -> Expr:
    """`e` with its program wrapped so that each let in `names` is computed once and bound by name."""
    body = e.source
    for name in reversed(names):
        body = f"[(\n{lets.sources[name]}\n)].map({name}, (\n{body}\n))[0]"
    out = LetExpr(e.source)
    try:
        bound = Expr(body)
    except ExprError:
        return e  # a let that does not compile is reported where it is declared
    out.program = bound.program
    # What evaluates, under the budget: the lets' and the expression's own comprehensions are
    # instrumented, not the one-element ones that bind the lets. Their hooks turned every let's value
    # into Python and back (~2.5 µs a string in the cel package) and measured nothing the budget
    # needs (a walk of one item; an item that is the value the evaluation measures anyway); the units
    # they were charged are charged at the start of the evaluation (`Budget.start_eval`) instead.
    fields: set[str] = set()

    def split(source: str) -> str | None:
        got = split_state(source)
        if got is None:
            return None
        fields.update(got[1])
        return instrument(got[0])

    whole = _compile(_bound_text(e, names, lets, instrument))
    out.run = whole or bound.run
    out.run_split = _compile(_bound_text(e, names, lets, split)) if whole is not None else None
    out.state_fields = frozenset(fields)
    out.lets = tuple(names)
    out.let_count = len(names) if whole is not None else 0
    out.reads = frozenset(bound.variables) - set(names)
    return out


def _bound_text(e: Expr, names: list[str], lets: Lets, part: Callable[[str], str | None]) -> str | None:
    """The source of `e` with its lets bound, each part (the lets, the expression) made by `part`."""
    body = part(e.source)
    for name in reversed(names):
        value = part(lets.sources[name])
        if body is None or value is None:
            return None
        body = f"[(\n{value}\n)].map({name}, (\n{body}\n))[0]"
    return body


def _compile(text: str | None) -> cel.Program | None:
    try:
        return cel.compile(text) if text is not None else None
    except (ValueError, RuntimeError):
        return None


def reads(e: Expr) -> frozenset[str]:
    """The names `e` needs in its scope when it runs: its own, and its lets' in place of their names."""
    return e.reads if isinstance(e, LetExpr) else frozenset(e.variables)


def let_functions(e: Expr | None, lets: Mapping[str, Expr]) -> frozenset[str]:
    """The functions `e` calls, its lets' included (a scope must register them all)."""
    if e is None:
        return frozenset()
    out = set(e.functions)
    for name in getattr(e, "lets", ()):
        if name in lets:
            out |= lets[name].functions
    return frozenset(out)


def parse_target(source: str, path: str, problems: Problems, lets: Lets = NO_LETS) -> Target | None:
    """`state.a.b`, `my.coins[args.item]`, `P[x].alive` -> Target."""
    s = source.strip()
    i = 0

    def bracket(start: int) -> tuple[str, int] | None:
        depth = 0
        for j in range(start, len(s)):
            if s[j] == "[":
                depth += 1
            elif s[j] == "]":
                depth -= 1
                if depth == 0:
                    return s[start + 1 : j], j + 1
        return None

    player = None
    if s.startswith("state"):
        root, i = "state", 5
    elif s.startswith("my"):
        root, i = "my", 2
    elif s.startswith("P["):
        got = bracket(1)
        if got is None:
            problems.add(f"{path}: unbalanced [ in target `{source}`")
            return None
        player = problems.expr(f"{path} (player index)", got[0], lets)
        root, i = "P", got[1]
    else:
        problems.add(f"{path}: target `{source}` must start with state., my. or P[...]")
        return None
    keys: list[str | Expr] = []
    while i < len(s):
        if s[i] == ".":
            j = i + 1
            while j < len(s) and (s[j].isalnum() or s[j] == "_"):
                j += 1
            if j == i + 1:
                problems.add(f"{path}: empty field name in target `{source}`")
                return None
            keys.append(s[i + 1 : j])
            i = j
        elif s[i] == "[":
            got = bracket(i)
            if got is None:
                problems.add(f"{path}: unbalanced [ in target `{source}`")
                return None
            key = problems.expr(f"{path} (key)", got[0], lets)
            if key is None:
                return None
            keys.append(key)
            i = got[1]
        else:
            problems.add(f"{path}: unexpected {s[i]!r} in target `{source}`")
            return None
    if not keys:
        problems.add(f"{path}: target `{source}` names no variable")
        return None
    return Target(root=root, player=player, keys=tuple(keys), source=source)


def compile_effect(e: Effect, path: str, problems: Problems, lets: Lets = NO_LETS) -> CEffect | None:
    op = next(k for k in ("set", "add", "announce", "tell", "repeat", "cancel") if getattr(e, k) is not None)
    target = None
    if op in ("set", "add"):
        target = parse_target(getattr(e, op), f"{path}.{op}", problems, lets)
    value = problems.expr(f"{path}.value", e.value, lets)
    if op in ("announce", "tell", "cancel"):
        value = problems.expr(f"{path}.{op}", getattr(e, op), lets)
    repeat = None
    if e.repeat is not None:
        repeat = CRepeat(
            max=e.repeat.max,
            until=problems.expr(f"{path}.repeat.until", e.repeat.until, lets),
            effects=compile_effects(e.repeat.effects, f"{path}.repeat.effects", problems, lets),
        )
    cond = problems.expr(f"{path}.if", e.if_, lets)
    for_each = problems.expr(f"{path}.for_each", e.for_each, lets)
    batch = None if for_each is None or repeat is not None else _batch(cond, value, target, op, e.as_, lets)
    return CEffect(
        op=op,
        target=target,
        value=value,
        text=problems.expr(f"{path}.text", e.text, lets),
        cond=cond,
        for_each=for_each,
        as_=e.as_,
        path=path,
        repeat=repeat,
        batch=batch,
    )


def compile_effects(
    effects: list[Effect], path: str, problems: Problems, lets: Lets = NO_LETS
) -> list[CEffect]:
    out = []
    for i, e in enumerate(effects):
        c = compile_effect(e, f"{path}[{i}]", problems, lets)
        if c is not None:
            out.append(c)
    return out


def compile_lets(
    decls: Mapping[str, str], path: str, problems: Problems, outer: Lets
) -> tuple[Lets, dict[str, Expr]]:
    """One level's lets on top of `outer`'s: each compiled (reading the ones before it) and added."""
    lets = outer
    own: dict[str, Expr] = {}
    for name, source in decls.items():
        e = problems.expr(f"{path}.{name}", source, lets)
        if e is not None:
            own[name] = e
            lets = lets.inner({name: e}, {name: source})
    return lets, own


def compile_bounds(prm: Param, path: str, problems: Problems, lets: Lets) -> dict[str, Any]:
    """A parameter's CEL bounds (`min`, `max`, `values`, `candidates`, `min_items`, `max_items`), with
    a list's `items` and an object's `fields` nested the same way."""
    b: dict[str, Any] = {}
    for key in ("min", "max", "candidates", "min_items", "max_items"):
        if (src := getattr(prm, key)) is not None and (ex := problems.expr(f"{path}.{key}", src, lets)):
            b[key] = ex
    if isinstance(prm.values, str) and (ex := problems.expr(f"{path}.values", prm.values, lets)):
        b["values"] = ex
    if prm.items is not None:
        b["items"] = compile_bounds(prm.items, f"{path}.items", problems, lets)
    if prm.fields is not None:
        b["fields"] = {
            k: compile_bounds(f, f"{path}.fields.{k}", problems, lets) for k, f in prm.fields.items()
        }
    return b


@dataclass
class CReactions:
    by: Expr | None
    order: Expr | None


@dataclass
class CAction:
    name: str
    valid_if: list[tuple[Expr, str]]
    effects: list[CEffect]
    # param -> {"min"/"max"/"values"/"candidates"/"min_items"/"max_items": Expr, "items": {...},
    # "fields": {field: {...}}}
    bounds: dict[str, dict[str, Any]]
    log: Expr | None
    available: Expr | None = None
    group: Expr | None = None  # visibility group: its members (the name looked up in `groups`)
    group_name: Expr | None = None
    reactions: CReactions | None = None
    lets: dict[str, Expr] = field(default_factory=dict)  # this action's own lets


@dataclass
class CPhase:
    index: int
    actors: Expr
    first: Expr | None
    turns: Expr | None
    until: Expr | None
    on_enter: list[CEffect]
    on_resolve: list[CEffect]
    on_exit: list[CEffect]
    next: list[tuple[Expr, str]]
    default_moves: list[tuple[str, str, dict[str, Expr]]] = field(default_factory=list)  # path, action, args
    available: dict[str, Expr] = field(default_factory=dict)
    budget: Expr | None = None
    lets: dict[str, Expr] = field(default_factory=dict)  # this phase's own lets


class CompiledGame:
    """All expressions of a spec, compiled. Raises SpecError listing every compile problem."""

    def __init__(self, spec: GameSpec, source: str = "<spec>", strict: bool = True) -> None:
        self.spec = spec
        self.hash = spec.spec_hash()
        p = self.problems = Problems()
        self.role_counts = {r.name: p.expr(f"roles.{r.name}.count", r.count) for r in spec.roles}
        # Spec-level lets, then the channel groups as one more: `groups` maps each name to its members.
        top, self.lets = compile_lets(spec.let, "let", p, NO_LETS)
        self.groups: Expr | None = None
        if spec.channels.groups:
            for name, src in spec.channels.groups.items():
                p.expr(f"channels.groups.{name}", src, top)  # compiled alone: problems at the group's path
            groups_src = "{" + ", ".join(f'"{k}": ({v})' for k, v in spec.channels.groups.items()) + "}"
            if (g := p.expr("channels.groups", groups_src, top)) is not None:
                self.groups = g
                self.lets = {**self.lets, "groups": g}
                top = top.inner({"groups": g}, {"groups": groups_src})
        self.top_lets = top
        self.var_init = {k: p.expr(f"state.{k}.init", v.init, top) for k, v in spec.state.items()}
        self.var_where = {k: p.expr(f"state.{k}.where", v.where, top) for k, v in spec.state.items()}
        self.pvar_init = {
            k: p.expr(f"player_state.{k}.init", v.init, top) for k, v in spec.player_state.items()
        }
        self.pvar_where = {
            k: p.expr(f"player_state.{k}.where", v.where, top) for k, v in spec.player_state.items()
        }
        self.setup = compile_effects(spec.setup, "setup", p, top)
        self.channel = p.expr("channels.private", spec.channels.private, top)
        self.actions: dict[str, CAction] = {}
        self.action_lets: dict[str, Lets] = {}
        for name, a in spec.actions.items():
            base = f"actions.{name}"
            lets, own = compile_lets(a.let, f"{base}.let", p, top)
            self.action_lets[name] = lets
            bounds = {
                pname: compile_bounds(prm, f"{base}.params.{pname}", p, lets)
                for pname, prm in a.params.items()
            }
            checks = []
            for i, c in enumerate(a.valid_if):
                if ex := p.expr(f"{base}.valid_if[{i}].expr", c.expr, lets):
                    checks.append((ex, c.message))
            group_name = p.expr(f"{base}.group", a.group, lets)
            group = None
            if group_name is not None and self.groups is not None:
                # The members: the group's name looked up in `groups` (the spec checks read `group_name`).
                group = Expr(f"groups[({a.group})]")
                group = _bind_lets(group, lets.needed(group.variables), lets)
            reactions = None
            if a.reactions is not None:
                reactions = CReactions(
                    by=p.expr(f"{base}.reactions.by", a.reactions.by, lets),
                    order=p.expr(f"{base}.reactions.order", a.reactions.order, lets),
                )
            self.actions[name] = CAction(
                name=name,
                valid_if=checks,
                effects=compile_effects(a.effects, f"{base}.effects", p, lets),
                bounds=bounds,
                log=p.expr(f"{base}.log", a.log, lets),
                available=p.expr(f"{base}.available_if", a.available_if, lets),
                group=group,
                group_name=group_name,
                reactions=reactions,
                lets=own,
            )
        self.phases: dict[str, CPhase] = {}
        self.phase_lets: dict[str, Lets] = {}
        for i, ph in enumerate(spec.phases):
            base = f"phases[{i}]"
            lets, own = compile_lets(ph.let, f"{base}.let", p, top)
            self.phase_lets[ph.name] = lets
            nxt = []
            for j, t in enumerate(ph.next):
                if ex := p.expr(f"{base}.next[{j}].if", t.if_, lets):
                    nxt.append((ex, t.goto))
            defaults = [
                (
                    dpath,
                    m.action,
                    {k: e for k, v in m.args.items() if (e := p.expr(f"{base}.{dpath}.args.{k}", v, lets))},
                )
                for dpath, m in ph.default_moves()
            ]
            self.phases[ph.name] = CPhase(
                index=i,
                actors=p.expr(f"{base}.actors", ph.actors, lets) or Expr("players"),
                first=p.expr(f"{base}.first", ph.first, lets),
                turns=p.expr(f"{base}.turns", ph.turns, lets),
                until=p.expr(f"{base}.until", ph.until, lets),
                on_enter=compile_effects(ph.on_enter, f"{base}.on_enter", p, lets),
                on_resolve=compile_effects(ph.on_resolve, f"{base}.on_resolve", p, lets),
                on_exit=compile_effects(ph.on_exit, f"{base}.on_exit", p, lets),
                next=nxt,
                default_moves=defaults,
                available={
                    k: e
                    for k, v in ph.available_if.items()
                    if (e := p.expr(f"{base}.available_if.{k}", v, lets))
                },
                budget=p.expr(f"{base}.budget", ph.budget, lets),
                lets=own,
            )
        self.end_when = p.expr("end.when", spec.end.when, top)
        self.payoff = p.expr("payoffs.value", spec.payoffs.value, top)
        self.payoff_best = p.expr("payoffs.best", spec.payoffs.best, top)
        self.payoff_forfeit = p.expr("payoffs.forfeit", spec.payoffs.forfeit, top)
        self.outcomes = {k: p.expr(f"outcomes.{k}", v, top) for k, v in spec.outcomes.items()}
        self.conduct = [
            (c, p.expr(f"conduct[{i}].when", c.when, self.action_lets.get(c.action, top)))
            for i, c in enumerate(spec.conduct)
        ]
        self.hints = {k: p.expr(f"hints.{k}", v, top) for k, v in spec.hints.items()}
        # What the hints read of a view (rendered with every observation: `view._hints`): its
        # variables, and of `state` only the fields they read when every hint reads it only so.
        hint_exprs = [e for e in self.hints.values() if e is not None]
        self.hint_reads: frozenset[str] = frozenset().union(*(reads(e) for e in hint_exprs)) - {"events"}
        self.hint_fields: frozenset[str] | None = (
            frozenset().union(*(e.state_fields for e in hint_exprs))
            if all(e.run_split is not None for e in hint_exprs)
            else None
        )
        self.policy = [
            (
                r,
                p.expr(f"policy[{i}].when", r.when, top),
                {k: e for k, v in r.args.items() if (e := p.expr(f"policy[{i}].args.{k}", v, top))},
                p.expr(f"policy[{i}].message", r.message, top),
            )
            for i, r in enumerate(spec.policy)
        ]
        self.policy_weights = [
            p.expr(f"policy[{i}].weight", r.weight, top) for i, r in enumerate(spec.policy)
        ]
        self.function_names = frozenset(f for _, e in p.exprs for f in e.functions)
        view_exprs = [
            *self.hints.values(),
            *(e for _, w, a, m in self.policy for e in (w, m, *a.values())),
            *self.policy_weights,
        ]
        self.view_function_names = frozenset(f for e in view_exprs for f in let_functions(e, top.exprs))
        if p.lines and strict:
            raise SpecError(source, p.lines)


_CACHE: dict[str, CompiledGame] = {}
_BY_ID: dict[int, tuple[GameSpec, CompiledGame]] = {}


def compiled(spec: GameSpec, source: str = "<spec>") -> CompiledGame:
    """The compiled form of `spec`, cached by content hash (envs of one game share it).

    Hashing a spec costs ~0.2 ms, so the same spec object is looked up by identity first.
    """
    hit = _BY_ID.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    key = spec.spec_hash()
    game = _CACHE.get(key)
    if game is None:
        game = _CACHE[key] = CompiledGame(spec, source)
    _BY_ID[id(spec)] = (spec, game)
    return game
