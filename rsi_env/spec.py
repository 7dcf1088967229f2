"""The game specification language: pydantic models, loaded from one YAML file per game.

A spec declares everything about a game without Python: players and roles, seeded random setup,
state variables and who may see them, phases and turn order, actions with typed parameters,
validity conditions and effects, communication channels, end conditions, payoffs, conduct checks
(lies, broken promises) and ethics notes. Every expression is CEL (see `rsi_env.expr`).

`GameSpec.model_json_schema()` is the contract an LLM game generator is constrained with;
`python -m rsi_env.games schema` prints it. Static checks beyond the schema (expressions compile,
names exist, actions reachable) live in `rsi_env.spec_check`.

Names an expression may read (the full list is in README "Spec language"):
`state` (global vars), `P` (per-player vars by player id), `players`, `n`, `role`, `team`,
`phase`, `turn`, `forfeited`; in actions also `me`, `my` (= `P[me]`) and `args`; in per-player
expressions `p`; in `on_resolve` `moves` (player -> {action, args}); in payoffs and outcomes
`flags` (the conduct flags raised, each {player, name, kind, turn, ...}). When the game ends the
current phase's `on_exit` runs first.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .untrusted import UntrustedTextError, check_yaml_shape, printable, read_text_file


def _to_expr_source(value: Any) -> Any:
    # YAML reads `0`, `2.5` or `true` as numbers/bools; in an expression field they are CEL literals.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return value


Expression = Annotated[
    str,
    BeforeValidator(_to_expr_source),
    Field(description="A CEL expression (https://cel.dev), e.g. `state.pool.books - args.books`."),
]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]


class _Model(BaseModel):
    # Unknown keys are errors: a typo in a spec must not be silently ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Players(_Model):
    """How many seats. A fixed count, or a range chosen at `make(..., n_players=k)`."""

    min: int = Field(2, ge=1, le=16)
    max: int = Field(2, ge=1, le=16)
    default: int | None = Field(None, description="Seats when the caller does not choose; default `min`.")

    @model_validator(mode="after")
    def _ordered(self) -> Players:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        if self.default is not None and not self.min <= self.default <= self.max:
            raise ValueError(f"default ({self.default}) is outside [{self.min}, {self.max}]")
        return self


class Role(_Model):
    """A role a seat can hold. Roles are assigned at reset, in seat order or shuffled by the seed."""

    name: Name
    description: str = Field("", description="Shown to the player who holds this role.")
    team: Name | None = None
    count: Expression | None = Field(
        None, description="How many seats get this role (CEL over `n`); null = all remaining seats."
    )
    hidden: bool = Field(False, description="Other players are not told who holds this role.")
    knows_team: bool = Field(False, description="Holders see which players share their team.")


class Var(_Model):
    """A typed state variable. `init` runs at reset and may draw seeded random numbers."""

    type: Literal["int", "float", "bool", "str", "player", "list", "map", "any"] = "int"
    description: str = ""
    init: Expression | None = Field(
        None, description="CEL; may call randint/choice/shuffle/sample/split/uniform. Default: zero value."
    )
    where: Expression | None = Field(
        None,
        description="Constraint on the drawn value: `init` is redrawn until it holds (rejection sampling).",
    )
    visibility: Literal["public", "private", "team", "hidden"] = Field(
        "public",
        description="public: everyone; private: the owning player; team: the owner's team; "
        "hidden: referees only.",
    )


class Param(_Model):
    """A typed action parameter. Bounds and choices may depend on state (CEL)."""

    type: Literal["int", "float", "enum", "player", "text", "bool"]
    description: str = ""
    min: Expression | None = None
    max: Expression | None = None
    values: list[str] | Expression | None = Field(None, description="enum: a list, or CEL giving a list.")
    candidates: Expression | None = Field(
        None, description="player: CEL list of the players allowed here; default every other player."
    )
    max_length: int = Field(300, ge=1, le=4000, description="text: the longest accepted string.")
    optional: bool = False


class Check(_Model):
    """A validity condition with the feedback a player gets when it fails."""

    expr: Expression
    message: str


class Effect(_Model):
    """One change to the state. Exactly one of set / add / announce / tell.

    Targets are paths: `state.NAME`, `my.NAME`, `P[expr].NAME`, optionally followed by `[expr]` or
    `.key` to update inside a map. `for_each` repeats the effect with `as` bound to each element.
    """

    set: str | None = None
    add: str | None = None
    value: Expression | None = None
    announce: Expression | None = Field(None, description="CEL string added to every player's events.")
    tell: Expression | None = Field(None, description="CEL player id who privately receives `text`.")
    text: Expression | None = None
    if_: Expression | None = Field(None, alias="if")
    for_each: Expression | None = None
    as_: Name = Field("x", alias="as")

    @model_validator(mode="after")
    def _one_operation(self) -> Effect:
        ops = [k for k in ("set", "add", "announce", "tell") if getattr(self, k) is not None]
        if len(ops) != 1:
            raise ValueError(f"an effect needs exactly one of set/add/announce/tell, got {ops or 'none'}")
        if ops[0] in ("set", "add") and self.value is None:
            raise ValueError(f"`{ops[0]}` needs a `value`")
        if ops[0] == "tell" and self.text is None:
            raise ValueError("`tell` needs a `text`")
        return self


class Action(_Model):
    """Something a player may do on its turn, answered as JSON `{"action": NAME, PARAM: value, ...}`."""

    description: str = ""
    params: dict[Name, Param] = Field(default_factory=dict)
    message: Literal["none", "optional", "required"] = Field(
        "none", description="Whether the action carries a free-text `message` to the players who see it."
    )
    visibility: Literal["public", "private", "team", "recipient"] = Field(
        "public",
        description="Who sees that it happened: everyone, only the actor, the actor's team, "
        "or the actor and the player named by the `recipient` parameter.",
    )
    recipient: Name | None = Field(None, description="With visibility recipient: the player parameter.")
    valid_if: list[Check] = Field(default_factory=list)
    effects: list[Effect] = Field(default_factory=list)
    log: Expression | None = Field(None, description="CEL string describing the action in transcripts.")

    @model_validator(mode="after")
    def _recipient(self) -> Action:
        if self.visibility == "recipient":
            if self.recipient is None:
                raise ValueError("visibility `recipient` needs `recipient: <player param name>`")
            param = self.params.get(self.recipient)
            if param is None or param.type != "player":
                raise ValueError(f"recipient `{self.recipient}` must name a parameter of type player")
        if "action" in self.params or "message" in self.params:
            raise ValueError("`action` and `message` are reserved parameter names")
        return self


class Transition(_Model):
    if_: Expression = Field("true", alias="if")
    goto: str = Field(description="A phase name, or `end` to finish the game.")


class DefaultMove(_Model):
    """What a passed turn does (a player out of invalid attempts, or silent)."""

    action: Name
    args: dict[Name, Expression] = Field(default_factory=dict)


class Phase(_Model):
    """A stage of the game with its own actors, allowed actions and turn order."""

    name: Name
    description: str = ""
    actors: Expression = Field("players", description="CEL list of who acts in this phase.")
    mode: Literal["sequential", "simultaneous"] = Field(
        "sequential",
        description="sequential: one actor at a time in seat order (alternating with two players); "
        "simultaneous: every actor moves, moves are hidden until all are in, then resolved together.",
    )
    actions: list[Name] = Field(min_length=1)
    first: Expression | None = Field(None, description="sequential: CEL player id who moves first.")
    turns: Expression | None = Field(
        None,
        description="CEL int evaluated on entry: turns (sequential) or rounds (simultaneous) "
        "before the phase ends.",
    )
    until: Expression | None = Field(None, description="CEL: the phase ends after a turn where this holds.")
    on_enter: list[Effect] = Field(default_factory=list)
    on_resolve: list[Effect] = Field(
        default_factory=list, description="simultaneous: after a round's moves apply; `moves` is bound."
    )
    on_exit: list[Effect] = Field(default_factory=list)
    next: list[Transition] = Field(
        default_factory=list,
        description="First matching transition wins; default: the next phase in the list, cyclically.",
    )
    default_move: DefaultMove | None = None


class InvalidActions(_Model):
    """The error allowance: invalid attempts are answered with feedback, not exceptions."""

    allowance: int = Field(3, ge=1, le=100, description="Invalid attempts per turn before `then`.")
    then: Literal["pass", "forfeit"] = "pass"


class End(_Model):
    when: Expression = Field("false", description="CEL: the game ends after a turn where this holds.")
    turn_limit: int = Field(
        ge=1, le=10_000, description="Most turns (sequential turns + simultaneous rounds)."
    )


class Payoffs(_Model):
    value: Expression = Field(description="CEL per player `p`, evaluated when the game ends.")
    best: Expression | None = Field(None, description="CEL per player `p`: best achievable, for normalising.")
    forfeit: Expression = Field("0", description="CEL per player `p`: payoff of a player who forfeited.")


class Conduct(_Model):
    """A procedural conduct check, evaluated when `action` is taken, before its effects."""

    name: Name
    kind: Literal["lie", "broken_promise", "violation"]
    action: Name
    when: Expression = Field(description="CEL: true means the player's move is flagged.")
    description: str = ""


class Ethics(_Model):
    fair_play: list[str] = Field(default_factory=list)
    violations: list[str] = Field(default_factory=list)


class PolicyRule(_Model):
    """One rule of the scripted baseline policy, evaluated on the acting player's own view."""

    when: Expression = "true"
    action: Name
    args: dict[Name, Expression] = Field(default_factory=dict)
    message: Expression | None = None


class Channels(_Model):
    private: Expression = Field(
        "true", description="CEL over sender `a` and receiver `b`, at reset: may a send b private messages?"
    )


class GameSpec(_Model):
    """A complete game. One YAML file under games/ (or games/generated/) per game."""

    id: Name
    name: str
    version: int = 1
    family: Literal["bargaining", "social_dilemma", "auction_trade", "deduction", "other"] = "other"
    summary: str = Field("", description="One line shown by `games list`.")
    rules: str = Field(description="The rules as every player reads them.")
    players: Players = Field(default_factory=Players)
    roles: list[Role] = Field(default_factory=lambda: [Role(name="player")])
    role_assignment: Literal["seat", "shuffle"] = "seat"
    state: dict[Name, Var] = Field(default_factory=dict, description="Global variables, in setup order.")
    player_state: dict[Name, Var] = Field(
        default_factory=dict, description="Per-player variables, set up after `state`, with `p` bound."
    )
    setup: list[Effect] = Field(
        default_factory=list, description="Effects run after all variables are drawn."
    )
    channels: Channels = Field(default_factory=Channels)
    actions: dict[Name, Action]
    phases: list[Phase] = Field(min_length=1)
    invalid_actions: InvalidActions = Field(default_factory=InvalidActions)
    end: End
    payoffs: Payoffs
    outcomes: dict[Name, Expression] = Field(
        default_factory=dict, description="Named outcome metrics evaluated at the end (e.g. deal made)."
    )
    conduct: list[Conduct] = Field(default_factory=list)
    ethics: Ethics = Field(default_factory=Ethics)
    hints: dict[str, Expression] = Field(
        default_factory=dict, description="Extra lines in each player's observation, evaluated on its view."
    )
    policy: list[PolicyRule] = Field(default_factory=list, description="The scripted baseline's rules.")
    provenance: dict[str, Any] = Field(default_factory=dict, description="Who wrote it (generated games).")

    def spec_hash(self) -> str:
        """Content hash of the spec (provenance excluded), recorded in every trajectory."""
        body = self.model_dump(mode="json", exclude={"provenance"}, by_alias=True)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


class SpecError(Exception):
    """A spec that cannot be used. `problems` holds one readable line per problem, naming the field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


MAX_PROBLEMS_SHOWN = 40  # a file with thousands of wrong keys gets a readable message, not a wall


def format_validation_error(exc: ValidationError) -> list[str]:
    """pydantic errors as `path.to.field: message` lines (no traceback, one per problem).

    Keys come from the file: they are shown with control characters escaped and cut short, so a
    key made of terminal escape codes cannot reach the terminal raw."""
    out = []
    for err in exc.errors():
        path = ".".join(printable(str(p), limit=60) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (typo?)"
        out.append(f"{path}: {printable(msg, limit=300)}")
    if len(out) > MAX_PROBLEMS_SHOWN:
        out = [*out[:MAX_PROBLEMS_SHOWN], f"... and {len(out) - MAX_PROBLEMS_SHOWN} more problem(s)"]
    return out


_SPEC_FIELDS = frozenset(
    name for n, f in GameSpec.model_fields.items() for name in (n, f.alias) if name is not None
)


def parse_spec(data: Any, source: str = "<spec>") -> GameSpec:
    """Validate a spec given as parsed YAML/JSON; raises SpecError with one line per problem.

    A mapping none of whose keys is a spec field is not a spec at all (`--game /etc/shadow`): it gets
    one line that repeats nothing of it, since its keys may be the lines of a private file."""
    if not isinstance(data, dict):
        raise SpecError(source, [f"(top level): expected a mapping of fields, got {type(data).__name__}"])
    if not _SPEC_FIELDS & {k for k in data if isinstance(k, str)}:
        raise SpecError(
            source,
            [
                f"(top level): not a game spec: none of its {len(data)} key(s) is a spec field "
                "(id, name, rules, actions, phases, end, payoffs, ...)"
            ],
        )
    if problems := _control_characters(data, ""):
        raise SpecError(source, problems[:MAX_PROBLEMS_SHOWN])
    try:
        return GameSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, format_validation_error(exc)) from None


# Characters that drive a terminal (ESC starts an escape sequence) or reorder text; newlines and tabs
# are fine in rules and descriptions.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _control_characters(data: Any, path: str) -> list[str]:
    """`path: ...` for every string (key or value) holding a terminal control character: spec text
    reaches terminals (`games list`, transcripts), where an escape code would act, not show."""
    out: list[str] = []
    if isinstance(data, str):
        if m := _CONTROL.search(data):
            where = path or "(top level)"
            out.append(
                f"{where}: contains the control character {printable(m.group())} (not allowed in a spec)"
            )
    elif isinstance(data, dict):
        for k, v in data.items():
            here = f"{path}.{printable(str(k), limit=60)}" if path else printable(str(k), limit=60)
            if isinstance(k, str) and _CONTROL.search(k):
                out.append(f"{here}: the key contains a control character (not allowed in a spec)")
            out += _control_characters(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _control_characters(v, f"{path}[{i}]")
    return out


def read_spec_file(path: str | Path) -> GameSpec:
    """Read and schema-validate one YAML spec file: a regular file of at most `MAX_SPEC_BYTES`
    (`rsi_env.untrusted`), whose YAML nests and expands within bounds.

    All the checks (`games validate`'s) are `spec_check.load_checked_spec`.
    """
    try:
        text = read_text_file(path)
    except UntrustedTextError as exc:
        raise SpecError(str(path), [str(exc)]) from None
    return parse_spec(load_yaml(text, str(path)), str(path))


# libyaml when present: it composes in C, and PyYAML's Python parser is quadratic in flow nesting.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str, source: str = "<spec>") -> Any:
    """Parse YAML, rejecting duplicate keys (PyYAML silently keeps the last one, and a spec with two
    `score:` entries would lose one without a word); raises SpecError naming the lines.

    The text is untrusted: its nesting depth and its size once aliases are expanded are checked
    first (`untrusted.check_yaml_shape`), before any node is built."""
    try:
        check_yaml_shape(text)
    except UntrustedTextError as exc:
        raise SpecError(source, [str(exc)]) from None
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        problems = _duplicate_keys(node, "", set()) if node is not None else []
        if problems:
            raise SpecError(source, problems)
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(source, [f"{where}invalid YAML: {printable(problem, limit=200)}"]) from None
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, path: str, visited: set[int]) -> list[str]:
    """`path: duplicate key ...` for every mapping key that appears twice, walking the whole document
    (each node once: an alias may point back to its own ancestor)."""
    if id(node) in visited:
        return []
    visited.add(id(node))
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key, value in node.value:
            name = printable(str(key.value), limit=60)
            here = f"{path}.{name}" if path else name
            if isinstance(key, yaml.ScalarNode) and name != "<<":  # `<<` merges are not keys
                if name in first_line:
                    out.append(
                        f"{here}: duplicate key at line {key.start_mark.line + 1} "
                        f"(first at line {first_line[name]}); YAML would keep only the last"
                    )
                else:
                    first_line[name] = key.start_mark.line + 1
            out += _duplicate_keys(value, here, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, f"{path}[{i}]", visited)
    return out


def spec_json_schema() -> dict[str, Any]:
    return GameSpec.model_json_schema(by_alias=True)
