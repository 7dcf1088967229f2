"""A GameSpec with every expression compiled once, shared by all env instances of that spec.

Compilation collects every problem (with its field path) instead of stopping at the first, so a
bad spec gets one line per problem. Effect targets (`state.pool.books`, `P[args.to].coins`) are
parsed here into a root plus a list of key steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .expr import Expr, ExprError
from .spec import Effect, GameSpec, SpecError


@dataclass(frozen=True)
class Target:
    """Where an effect writes: root `state` / `my` / `P[player]`, then keys (str or Expr)."""

    root: str
    player: Expr | None
    keys: tuple[str | Expr, ...]
    source: str


@dataclass(frozen=True)
class CEffect:
    op: str  # set | add | announce | tell
    target: Target | None
    value: Expr | None
    text: Expr | None
    cond: Expr | None
    for_each: Expr | None
    as_: str
    path: str  # field path in the spec, for error messages


@dataclass
class Problems:
    """Collects spec problems as `field.path: message` lines."""

    lines: list[str] = field(default_factory=list)
    exprs: list[tuple[str, Expr]] = field(default_factory=list)

    def expr(self, path: str, source: Any) -> Expr | None:
        if source is None:
            return None
        try:
            e = Expr(source)
        except ExprError as exc:
            self.lines.append(f"{path}: expression does not compile: {exc}")
            return None
        self.exprs.append((path, e))
        return e

    def add(self, line: str) -> None:
        self.lines.append(line)


def parse_target(source: str, path: str, problems: Problems) -> Target | None:
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
        player = problems.expr(f"{path} (player index)", got[0])
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
            key = problems.expr(f"{path} (key)", got[0])
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


def compile_effect(e: Effect, path: str, problems: Problems) -> CEffect | None:
    op = next(k for k in ("set", "add", "announce", "tell") if getattr(e, k) is not None)
    target = None
    if op in ("set", "add"):
        target = parse_target(getattr(e, op), f"{path}.{op}", problems)
    value = problems.expr(f"{path}.value", e.value)
    if op == "announce":
        value = problems.expr(f"{path}.announce", e.announce)
    if op == "tell":
        value = problems.expr(f"{path}.tell", e.tell)
    return CEffect(
        op=op,
        target=target,
        value=value,
        text=problems.expr(f"{path}.text", e.text),
        cond=problems.expr(f"{path}.if", e.if_),
        for_each=problems.expr(f"{path}.for_each", e.for_each),
        as_=e.as_,
        path=path,
    )


def compile_effects(effects: list[Effect], path: str, problems: Problems) -> list[CEffect]:
    out = []
    for i, e in enumerate(effects):
        c = compile_effect(e, f"{path}[{i}]", problems)
        if c is not None:
            out.append(c)
    return out


@dataclass
class CAction:
    name: str
    valid_if: list[tuple[Expr, str]]
    effects: list[CEffect]
    bounds: dict[str, dict[str, Expr]]  # param -> {"min"/"max"/"values"/"candidates": Expr}
    log: Expr | None


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
    default_args: dict[str, Expr]


class CompiledGame:
    """All expressions of a spec, compiled. Raises SpecError listing every compile problem."""

    def __init__(self, spec: GameSpec, source: str = "<spec>", strict: bool = True) -> None:
        self.spec = spec
        self.hash = spec.spec_hash()
        p = self.problems = Problems()
        self.role_counts = {r.name: p.expr(f"roles.{r.name}.count", r.count) for r in spec.roles}
        self.var_init = {k: p.expr(f"state.{k}.init", v.init) for k, v in spec.state.items()}
        self.var_where = {k: p.expr(f"state.{k}.where", v.where) for k, v in spec.state.items()}
        self.pvar_init = {k: p.expr(f"player_state.{k}.init", v.init) for k, v in spec.player_state.items()}
        self.pvar_where = {
            k: p.expr(f"player_state.{k}.where", v.where) for k, v in spec.player_state.items()
        }
        self.setup = compile_effects(spec.setup, "setup", p)
        self.channel = p.expr("channels.private", spec.channels.private)
        self.actions: dict[str, CAction] = {}
        for name, a in spec.actions.items():
            base = f"actions.{name}"
            bounds: dict[str, dict[str, Expr]] = {}
            for pname, prm in a.params.items():
                b: dict[str, Expr] = {}
                for key in ("min", "max", "candidates"):
                    if (src := getattr(prm, key)) is not None and (
                        ex := p.expr(f"{base}.params.{pname}.{key}", src)
                    ):
                        b[key] = ex
                if isinstance(prm.values, str) and (
                    ex := p.expr(f"{base}.params.{pname}.values", prm.values)
                ):
                    b["values"] = ex
                bounds[pname] = b
            checks = []
            for i, c in enumerate(a.valid_if):
                if ex := p.expr(f"{base}.valid_if[{i}].expr", c.expr):
                    checks.append((ex, c.message))
            self.actions[name] = CAction(
                name=name,
                valid_if=checks,
                effects=compile_effects(a.effects, f"{base}.effects", p),
                bounds=bounds,
                log=p.expr(f"{base}.log", a.log),
            )
        self.phases: dict[str, CPhase] = {}
        for i, ph in enumerate(spec.phases):
            base = f"phases[{i}]"
            nxt = []
            for j, t in enumerate(ph.next):
                if ex := p.expr(f"{base}.next[{j}].if", t.if_):
                    nxt.append((ex, t.goto))
            dm = ph.default_move
            self.phases[ph.name] = CPhase(
                index=i,
                actors=p.expr(f"{base}.actors", ph.actors) or Expr("players"),
                first=p.expr(f"{base}.first", ph.first),
                turns=p.expr(f"{base}.turns", ph.turns),
                until=p.expr(f"{base}.until", ph.until),
                on_enter=compile_effects(ph.on_enter, f"{base}.on_enter", p),
                on_resolve=compile_effects(ph.on_resolve, f"{base}.on_resolve", p),
                on_exit=compile_effects(ph.on_exit, f"{base}.on_exit", p),
                next=nxt,
                default_args={
                    k: e
                    for k, v in (dm.args.items() if dm else [])
                    if (e := p.expr(f"{base}.default_move.args.{k}", v))
                },
            )
        self.end_when = p.expr("end.when", spec.end.when)
        self.payoff = p.expr("payoffs.value", spec.payoffs.value)
        self.payoff_best = p.expr("payoffs.best", spec.payoffs.best)
        self.payoff_forfeit = p.expr("payoffs.forfeit", spec.payoffs.forfeit)
        self.outcomes = {k: p.expr(f"outcomes.{k}", v) for k, v in spec.outcomes.items()}
        self.conduct = [(c, p.expr(f"conduct[{i}].when", c.when)) for i, c in enumerate(spec.conduct)]
        self.hints = {k: p.expr(f"hints.{k}", v) for k, v in spec.hints.items()}
        self.policy = [
            (
                r,
                p.expr(f"policy[{i}].when", r.when),
                {k: e for k, v in r.args.items() if (e := p.expr(f"policy[{i}].args.{k}", v))},
                p.expr(f"policy[{i}].message", r.message),
            )
            for i, r in enumerate(spec.policy)
        ]
        self.function_names = frozenset(f for _, e in p.exprs for f in e.functions)
        view_exprs = [*self.hints.values(), *(e for _, w, a, m in self.policy for e in (w, m, *a.values()))]
        self.view_function_names = frozenset(f for e in view_exprs if e is not None for f in e.functions)
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
