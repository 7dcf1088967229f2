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
from collections.abc import Mapping
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
    Field(description="CEL expression."),
]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
Lets = Annotated[
    dict[Name, Expression],
    Field(description="Named CEL expressions, readable by name below; each may read the ones before it."),
]
MAX_LIST_ITEMS = 64  # the most items a list parameter accepts, whatever its spec says
MAX_REPEAT = 1000  # the most iterations a `repeat` effect may declare


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

    # A `list` holds `items` (each a parameter of its own, bounds and all) between `min_items` and
    # `max_items`, all different with `unique`; an `object` holds named `fields`. Both are carried into
    # the action's JSON Schema (`minItems`, `uniqueItems`, ...) and checked on every move.

    type: Literal["int", "float", "enum", "player", "text", "bool", "list", "object"]
    description: str = ""
    min: Expression | None = None
    max: Expression | None = None
    values: list[str] | Expression | None = Field(None, description="enum: a list, or CEL giving a list.")
    candidates: Expression | None = Field(
        None, description="player: CEL list of the players allowed here; default every other player."
    )
    max_length: int = Field(300, ge=1, le=4000, description="text: the longest accepted string.")
    optional: bool = False
    items: Param | None = Field(None, description="list: each item's type and bounds.")
    min_items: Expression | None = Field(None, description="list: CEL, fewest items.")
    max_items: Expression | None = Field(
        None, description=f"list: CEL, most items (at most {MAX_LIST_ITEMS})."
    )
    unique: bool = Field(False, description="list: items all different.")
    fields: dict[Name, Param] | None = Field(None, description="object: its fields.")


class Check(_Model):
    """A validity condition with the feedback a player gets when it fails."""

    expr: Expression
    message: str


class Repeat(_Model):
    """Run `effects` again until `until` holds (bounded); `iteration` counts passes from 0."""

    # `until` is checked after each pass; reaching `max` without it is a spec error (the declared
    # bound was wrong), never a silent stop.

    max: int = Field(ge=1, le=MAX_REPEAT, description="Most passes (reaching it is an error).")
    until: Expression = Field(description="CEL: stop after a pass where it holds.")
    effects: list[Effect] = Field(min_length=1)


EFFECT_OPS = ("set", "add", "announce", "tell", "repeat", "cancel")


class Effect(_Model):
    """One change to the state. Exactly one of set / add / announce / tell / repeat / cancel.

    Targets are paths: `state.NAME`, `my.NAME`, `P[expr].NAME`, optionally followed by `[expr]` or
    `.key` to update inside a map. `for_each` repeats the effect with `as` bound to each element.
    """

    set: str | None = None
    add: str | None = None
    value: Expression | None = None
    announce: Expression | None = Field(None, description="CEL string for everyone; null: nothing.")
    tell: Expression | None = Field(None, description="CEL player id who privately receives `text`.")
    text: Expression | None = None
    repeat: Repeat | None = None
    cancel: Expression | None = Field(None, description="Reactions: CEL bool; true cancels `pending`.")
    if_: Expression | None = Field(None, alias="if")
    for_each: Expression | None = None
    as_: Name = Field("x", alias="as")

    @model_validator(mode="after")
    def _one_operation(self) -> Effect:
        ops = [k for k in EFFECT_OPS if getattr(self, k) is not None]
        given = self.model_fields_set
        nulls = [k for k in ("announce", "tell", "cancel") if k in given and getattr(self, k) is None]
        if not ops and nulls:
            # `announce: null` unquoted is YAML's null (no value), not the CEL expression `null`.
            skip = " (an announcement of null says nothing)" if nulls[0] == "announce" else ""
            raise ValueError(
                f"`{nulls[0]}: null` is YAML's null, not an expression; quote it as CEL: "
                f"{nulls[0]}: 'null'{skip}"
            )
        if len(ops) != 1:
            raise ValueError(f"an effect needs exactly one of {'/'.join(EFFECT_OPS)}, got {ops or 'none'}")
        if ops[0] in ("set", "add") and self.value is None:
            if "value" in given:
                raise ValueError(
                    "`value: null` is YAML's null, not an expression; quote it as CEL: value: 'null'"
                )
            raise ValueError(f"`{ops[0]}` needs a `value`")
        if ops[0] == "tell" and self.text is None:
            raise ValueError("`tell` needs a `text`")
        return self


class Reactions(_Model):
    """Out-of-turn answers to a pending move, resolved in `order`; a reaction reads it as `pending`."""

    # While the move is pending, the players `by` each answer with one of `actions` (all at once,
    # hidden until all are in). `pass` lets the move stand (no effect, not shown). A reaction may
    # `cancel` the move, or have reactions of its own (a block that can be challenged). The move's
    # effects run last, unless it was cancelled.

    by: Expression = Field("players.filter(q, q != me)", description="CEL list: who may react.")
    actions: list[Name] = Field(min_length=1)
    pass_: Name = Field(alias="pass", description="The answer meaning no reaction.")
    order: Expression | None = Field(
        None, description="CEL list: resolution order (default: seats after the mover)."
    )
    resolve: Literal["first", "all"] = "first"

    @model_validator(mode="after")
    def _pass_is_an_answer(self) -> Reactions:
        if self.pass_ not in self.actions:
            raise ValueError(f"pass `{self.pass_}` must be one of the reaction actions {self.actions}")
        return self


class Action(_Model):
    """Something a player may do on its turn, answered as JSON `{"action": NAME, PARAM: value, ...}`."""

    description: str = ""
    let: Lets = Field(default_factory=dict)
    params: dict[Name, Param] = Field(default_factory=dict)
    available_if: Expression | None = Field(None, description="CEL: offered only while it holds.")
    message: Literal["none", "optional", "required"] = Field(
        "none", description="Whether the action carries a free-text `message` to the players who see it."
    )
    visibility: Literal["public", "private", "team", "recipient", "group"] = Field(
        "public",
        description="Who sees that it happened: everyone, only the actor, the actor's team, "
        "the actor and the `recipient` parameter's player(s), or a group's members.",
    )
    recipient: Name | None = Field(None, description="visibility recipient: a player (list) parameter.")
    group: Expression | None = Field(None, description="visibility group: CEL group name.")
    valid_if: list[Check] = Field(default_factory=list)
    effects: list[Effect] = Field(default_factory=list)
    log: Expression | None = Field(None, description="CEL string for transcripts (read before effects).")
    reactions: Reactions | None = None

    def answers(self) -> list[str]:
        """The actions that answer this one out of turn (none without `reactions`)."""
        return self.reactions.actions if self.reactions is not None else []

    @model_validator(mode="after")
    def _recipient(self) -> Action:
        if self.visibility == "recipient":
            if self.recipient is None:
                raise ValueError("visibility `recipient` needs `recipient: <player param name>`")
            param = self.params.get(self.recipient)
            is_players = param is not None and (
                param.type == "player"
                or (param.type == "list" and param.items is not None and param.items.type == "player")
            )
            if not is_players:
                raise ValueError(
                    f"recipient `{self.recipient}` must name a parameter of type player "
                    "(or a list of players)"
                )
        if self.visibility == "group" and self.group is None:
            raise ValueError("visibility `group` needs `group: <CEL group name>`")
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
    mode: Literal["sequential", "simultaneous", "free"] = Field(
        "sequential",
        description="sequential: one actor at a time in seat order (alternating with two players); "
        "simultaneous: every actor moves, moves are hidden until all are in, then resolved together; "
        "free: every actor may move each round, until a round of passes or the budget is spent.",
    )
    let: Lets = Field(default_factory=dict)
    actions: list[Name] = Field(min_length=1)
    available_if: dict[Name, Expression] = Field(default_factory=dict, description="Per action: CEL.")
    pass_action: Name | None = Field(None, description="free: the passing action.")
    budget: Expression | None = Field(None, description="free: CEL int, most non-pass moves.")
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
    default_move: DefaultMove | list[DefaultMove] | None = Field(
        None, description="A passed turn's move; a list: the first legal one."
    )

    def default_moves(self) -> list[tuple[str, DefaultMove]]:
        """The default moves with their field paths, in order of preference."""
        dm = self.default_move
        if dm is None:
            return []
        if isinstance(dm, DefaultMove):
            return [("default_move", dm)]
        return [(f"default_move[{i}]", m) for i, m in enumerate(dm)]

    @model_validator(mode="after")
    def _free_needs_a_pass(self) -> Phase:
        if self.mode == "free" and self.pass_action is None:
            raise ValueError(
                "mode `free` needs `pass_action: <action name>` (a round of passes ends the phase)"
            )
        if self.mode != "free" and (self.pass_action is not None or self.budget is not None):
            raise ValueError("`pass_action` and `budget` apply to mode `free` only")
        return self


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

    # An argument that gives null is left out (for optional parameters). Adjacent rules with a
    # `weight` form one mixed choice: among those that apply, one is drawn in proportion to its weight.

    when: Expression = "true"
    action: Name
    args: dict[Name, Expression] = Field(default_factory=dict)
    message: Expression | None = None
    weight: Expression | None = Field(None, description="CEL number: weight among adjacent weighted rules.")


class Channels(_Model):
    private: Expression = Field(
        "true", description="CEL over sender `a` and receiver `b`, at reset: may a send b private messages?"
    )
    groups: dict[Name, Expression] = Field(default_factory=dict, description="Group name: CEL member list.")


class Option(_Model):
    """A typed game option with its default and bounds."""

    # Chosen at `make(..., options=...)` or `play --option NAME=VALUE`; recorded with each episode and
    # part of the spec hash (`with_options` makes the chosen values the defaults).

    type: Literal["int", "float", "bool", "enum"]
    default: int | float | bool | str
    description: str = ""
    min: float | None = None
    max: float | None = None
    values: list[str] | None = None

    @model_validator(mode="after")
    def _default_fits(self) -> Option:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum option needs `values`")
        if self.type != "enum" and self.values is not None:
            raise ValueError("`values` applies to enum options only")
        if self.type not in ("int", "float") and (self.min is not None or self.max is not None):
            raise ValueError("`min`/`max` apply to int and float options only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        value, why = self.coerce(self.default)
        if why:
            raise ValueError(f"default: {why}")
        self.default = value
        return self

    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """`value` as this option's type (text from a command line included), or why it does not fit."""
        t = self.type
        if isinstance(value, str) and t != "enum":
            text = value.strip().lower()
            if t == "bool":
                if text not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                    return None, f"expected true or false, got {value!r}"
                value = text in ("true", "yes", "1", "on")
            else:
                try:
                    value = float(text) if t == "float" else int(text)
                except ValueError:
                    return None, f"expected {'a number' if t == 'float' else 'a whole number'}, got {value!r}"
        if t == "bool":
            return (
                (value, None) if isinstance(value, bool) else (None, f"expected true or false, got {value!r}")
            )
        if t == "enum":
            if str(value) not in (self.values or []):
                return None, f"expected one of {self.values}, got {value!r}"
            return str(value), None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"expected a number, got {value!r}"
        if t == "int":
            if isinstance(value, float) and not value.is_integer():
                return None, f"expected a whole number, got {value!r}"
            value = int(value)
        else:
            value = float(value)
        if self.min is not None and value < self.min:
            return None, f"{value!r} is below the minimum {self.min:g}"
        if self.max is not None and value > self.max:
            return None, f"{value!r} is above the maximum {self.max:g}"
        return value, None


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
    options: dict[Name, Option] = Field(default_factory=dict, description="Read as `options.NAME`.")
    let: Lets = Field(default_factory=dict)
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
        """Content hash of the spec (provenance excluded), recorded in every trajectory. The options'
        values are their defaults, so a spec with options chosen (`with_options`) hashes differently."""
        body = _without_unused_v2_fields(self.model_dump(mode="json", exclude={"provenance"}, by_alias=True))
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def option_values(self) -> dict[str, Any]:
        """The options as expressions read them (`options.NAME`)."""
        return {k: o.default for k, o in self.options.items()}

    def with_options(self, values: Mapping[str, Any] | None) -> GameSpec:
        """This game with some options chosen: a copy whose option defaults are the chosen values
        (validated and converted; text such as `"3"` or `"true"` from a command line is accepted).
        Raises SpecError naming each bad option."""
        if not values:
            return self
        problems = []
        chosen: dict[str, Option] = {}
        for name, raw in values.items():
            opt = self.options.get(name)
            if opt is None:
                known = ", ".join(sorted(self.options)) or "none"
                problems.append(f"options.{name}: {self.id} has no such option (its options: {known})")
                continue
            value, why = opt.coerce(raw)
            if why:
                problems.append(f"options.{name}: {why}")
            else:
                chosen[name] = opt.model_copy(update={"default": value})
        if problems:
            raise SpecError(self.id, problems)
        return self.model_copy(update={"options": {**self.options, **chosen}})


# Fields the language gained in v2. Left at their defaults they are left out of the hash, so a v1
# spec keeps the hash it always had (and runs recorded before keep matching their episode ids).
_V2_FIELDS = frozenset(
    {"options", "let", "available_if", "group", "reactions", "repeat", "cancel", "pass_action", "budget",
     "groups", "weight", "items", "min_items", "max_items", "unique", "fields"}
)  # fmt: skip


def _without_unused_v2_fields(value: Any) -> Any:
    # Every name a spec author chooses (a variable, a parameter, an outcome) maps to a non-empty
    # value, so only the language's own fields are ever dropped here.
    if isinstance(value, dict):
        return {
            k: _without_unused_v2_fields(v)
            for k, v in value.items()
            if not (k in _V2_FIELDS and (v is None or v is False or v == {} or v == []))
        }
    if isinstance(value, list):
        return [_without_unused_v2_fields(v) for v in value]
    return value


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
        problems += _split_by_comma(node, "", set()) if node is not None else []
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


Param.model_rebuild()
Repeat.model_rebuild()
Effect.model_rebuild()


def _split_by_comma(node: yaml.Node, path: str, visited: set[int]) -> list[str]:
    """Values cut in two by an unquoted comma inside `{...}`: YAML reads the rest as a key of its own
    with no value (`{description: players out, in the order they went out}` has a key `in the order
    they went out`). Named by line, with the quoting that keeps the value whole."""
    if id(node) in visited:
        return []
    visited.add(id(node))
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        prev: tuple[yaml.Node, yaml.Node] | None = None
        for key, value in node.value:
            name = str(key.value)
            here = f"{path}.{name}" if path else name
            if (
                node.flow_style
                and isinstance(key, yaml.ScalarNode)
                and not key.style  # plain (PyYAML: None, libyaml: "")
                and " " in name.strip()
                and isinstance(value, yaml.ScalarNode)
                and value.tag == "tag:yaml.org,2002:null"
                and value.value == ""
                and prev is not None
                and isinstance(prev[1], yaml.ScalarNode)
            ):
                whole = f"{prev[1].value}, {name}".replace("'", "''")
                out.append(
                    f"line {key.start_mark.line + 1}: `{name}` reads as a key of its own: an unquoted comma "
                    f"inside {{...}} ends the value of `{prev[0].value}` there; quote the value: "
                    f"{prev[0].value}: '{whole}'"
                )
            out += _split_by_comma(value, here, visited)
            prev = (key, value)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _split_by_comma(item, f"{path}[{i}]", visited)
    return out


def spec_json_schema() -> dict[str, Any]:
    """GameSpec's JSON Schema, without the per-property titles pydantic derives from field names
    (they repeat the names and cost a generator's prompt a tenth of the schema)."""
    return _without_property_titles(GameSpec.model_json_schema(by_alias=True))


def _without_property_titles(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_property_titles(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "$defs":  # a definition keeps its title (the model's name)
            out[k] = {name: {**_without_property_titles(d), "title": d["title"]} if "title" in d else
                      _without_property_titles(d) for name, d in v.items()}  # fmt: skip
        elif k == "properties":
            out[k] = {name: _without_property_titles(d) for name, d in v.items()}
        elif k != "title" or "$defs" in node:
            out[k] = _without_property_titles(v)
    return out
