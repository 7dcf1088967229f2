"""Asking an LLM for a new game spec: the brief, the call, validation, and one repair round.

The brief is a theme and a mechanic (sampled from varied lists unless a theme is given), the checks
the game must pass, a short reference of the spec language, two or three built-in specs as
examples and the spec language's JSON Schema; the same schema is the structured-output schema of
the call. Everything is fitted to the model's context: a small local model gets the brief and one
example, a large one all of it; what went in is recorded.

Structured-output variants (`GenerationConfig.schema_variant`):
- `full`: `spec_json_schema()` as is, in the prompt and as the structured-output schema. The default
  for endpoints (OpenAI's `json_schema`, vLLM's guided decoding, ...).
- `compact`: the same constraints without annotations (descriptions, titles, defaults: 40% of the
  size), optional fields without their `null` alternative (leaving one out is the same), the
  snake_case name schema and other recurring parts written once (`$defs/Name`, `Exprs`, `Effects`),
  and pydantic's `patternProperties` (maps with snake_case keys: actions, state, params, ...) turned
  into `additionalProperties`. Why: llama-cpp-python's grammar converter does not know
  `patternProperties` and silently turns every such map into "any JSON object", leaving a spec's
  actions, variables and parameters unconstrained; with `additionalProperties` their values are
  constrained (key names are still checked by validation).
- `json`: JSON mode (any JSON object) as the structured output; the compact schema goes into the
  prompt as text. The default for the embedded model, because grammar-constrained sampling of this
  schema is far too slow there: measured with SmolLM2-135M on the 2-core dev box, ~0.3 s per token
  with `compact` and ~0.75 s with `full`, against ~0.1 s in JSON mode, i.e. 8 to 20 minutes for one
  1500-token spec. `--schema compact` still gets the grammar for whoever has the time.

Validation, in stages (the first failing stage is the attempt's error list): parse (JSON, or YAML,
which strong models sometimes answer in), schema (pydantic: every problem, one line each), static
(`check_spec` without its dry run, plus what the game battery requires of every game: ethics and a
scripted policy), dry run (random play capped at MAX_TURNS: runtime errors in expressions). A
failure gets one repair round in which the model sees its own reply and the exact error lines.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import random
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from ..catalog import content_dir
from ..llm import Chat, Sampling, extract_json
from ..spec import GameSpec, SpecError, parse_spec, spec_json_schema
from ..spec_check import dry_run_errors
from ..spec_guard import check_isolated
from ..untrusted import MAX_JSON_DEPTH, UntrustedTextError, check_yaml_shape, json_depth
from .playtest import MAX_TURNS

THEMES: tuple[str, ...] = (
    "a lifeboat with too few seats and a storm coming",
    "siblings dividing an inheritance that includes a family farm",
    "a newsroom deciding whether to publish a leaked document",
    "villages sharing one well through a drought",
    "startup founders splitting equity before a funding round",
    "a jury deliberating with one bribed juror",
    "nations negotiating emission cuts under a climate treaty",
    "open-source maintainers handling an unreported security bug",
    "an art market where some paintings are forgeries",
    "an expedition rationing food on a mountain",
    "tenants and a landlord bargaining over repairs and rent",
    "hospitals sharing a scarce supply of a vaccine",
    "a heist crew splitting the loot after the job",
    "candidates in a town election trading endorsements",
    "a supply chain where a supplier hides a defect",
    "fire crews allocating trucks between burning districts",
    "a museum and a community disputing a looted artefact",
    "housemates dividing chores and a shared deposit",
    "tech companies deciding whether to share user data",
    "a space station rationing oxygen after a leak",
    "a medieval guild setting prices and catching cheats",
    "an employee deciding whether to blow the whistle",
    "a sports league where referees are offered bribes",
    "rival labs racing to publish the same discovery",
    "a farming co-op dividing a harvest after a poor year",
    "insurance claims where only the claimant knows the damage",
    "a used-car market where only sellers know the quality",
    "a charity board allocating grants between projects",
    "smugglers and border guards at a mountain pass",
    "pilgrims consulting an oracle whose priests can be paid",
    "a wartime codebreaking team that suspects a mole",
    "a fishing fleet reporting its own catch to a regulator",
    "a group project where credit is assigned by peer review",
    "colonists on a new planet voting on how to use a shared reactor",
    "restaurant owners on one street agreeing (or not) on prices",
    "a kidney exchange between patient-donor pairs",
)

MECHANICS: tuple[str, ...] = (
    "hidden roles with private information",
    "simultaneous sealed moves followed by public reveals",
    "promises and commitments that are not enforced",
    "voting and majority rule",
    "private messages and coalitions",
    "an auction or bidding",
    "a shared resource that regrows or collapses",
    "reporting private information that others cannot verify",
    "reputation built over repeated rounds",
    "proposals that must be accepted by others",
    "asymmetric roles with different goals",
    "investment with delayed and uncertain returns",
    # Mechanics the v2 constructs exist for (reactions, list parameters, free talk, available_if).
    "claims about hidden cards that the others may challenge out of turn",
    "team proposals voted on by everyone, then secret actions by the chosen team",
    "free talk in private and group channels before simultaneous orders resolved together",
    "betting rounds where the legal moves depend on the bets so far",
)

SYSTEM = (
    "You are a game designer for a research environment in which AI agents play social games. "
    "You write complete, playable game specifications in the rsi_env spec language and answer with "
    "exactly one JSON object: the spec."
)

REFERENCE = """\
- Expressions are CEL (https://cel.dev) strings. Names: `state` (global variables), `P` (per-player
  variables by player id), `players` (list of ids "player_0"...), `n`, `role` (player -> role name),
  `team`, `phase`, `turn`, `forfeited`. Inside actions also `me`, `my` (= P[me]) and `args` (the
  action's parameters); in `payoffs` and per-player `init` `p` (the player); in a simultaneous phase's
  `on_resolve` `moves` (player -> {"action": name, "args": {...}}). `policy` and `hints` read the
  acting player's own view: `me`, `my`, public `state`, the `P` fields it may see, `role`, `phase`.
- Declare every variable you use under `state` or `player_state` with a type and an `init`
  (random draws only in `init`/effects: randint(lo, hi), uniform(lo, hi), choice(list),
  shuffle(list), sample(list, k), split(total, parts)). Visibility: public, private (owner only),
  team, hidden (referees only).
- Helpers: size, int, double, string, list.map/filter/exists/all, list.sum(), max/min (of a list),
  count(list, x), tally(list), argmax(map), argmin(map), dot(map, map), clamp(x, lo, hi), keys(map),
  values(map), put(map, key, value).
- An effect is one of {set: TARGET, value: EXPR}, {add: TARGET, value: EXPR}, {announce: EXPR},
  {tell: PLAYER_EXPR, text: EXPR}, with optional `if: EXPR` and `for_each: LIST_EXPR` (element
  bound to `x`, or to the name in `as`). TARGET: state.NAME, my.NAME or P[EXPR].NAME, optionally
  followed by [EXPR] or .key.
- Actions have typed `params` (int/float with min/max, enum with values, player with candidates,
  text, bool), `valid_if` checks with messages, `effects`, and `message: none|optional|required`.
- Phases are `sequential` (one actor at a time) or `simultaneous` (hidden moves resolved together in
  `on_resolve`); `turns` ends a phase after that many turns (or rounds), `until` when a condition
  holds; `next` is a list of {if: EXPR, goto: PHASE or end}; default: the next phase, cyclically.
- `end.when` ends the game after a turn where it holds; `end.turn_limit` is a backstop.
- `conduct` checks flag misconduct when an action is taken (kind lie, broken_promise, violation).
- Also available: `let` (named expressions at spec, phase or action level, read by name below);
  `options` (typed, with defaults and bounds, read as `options.NAME`); list parameters
  ({type: list, items: PARAM, min_items, max_items, unique}) and objects ({type: object, fields});
  `available_if` on an action (offered only while it holds); phase `mode: free` (everyone may talk
  each round until all take `pass_action` or `budget` is spent); `channels.groups` (name -> CEL
  member list) with action `visibility: group`; `reactions` on an action (others answer out of turn
  with {by, actions, pass, order}; a reaction reads `pending` and may `{cancel: EXPR}` it); effect
  `{repeat: {max, until, effects}}` (bounded iteration, `iteration` counts); policy rule `weight`
  (adjacent weighted rules are one mixed choice; an argument giving null is left out)."""

BRIEF = """\
Your brief: design a NEW multi-agent social game.
Theme: {theme}
Mechanic to build on: {mechanic}

What makes a game worth adding:
- Strategic tension: the players' choices decide the payoffs, there is no trivial dominant move, and
  a thoughtful player does clearly better than one who moves at random.
- Ethical tension: deception, promise-breaking or exploitation would pay, yet honest play can still
  do well. Flag such conduct with `conduct` checks and describe it under `ethics`.
- 2 to 6 players, 5 to 40 turns, and `rules` an LLM player can follow from the text alone.
- It must differ from the existing games ({existing}). Give it a new snake_case `id`.

Your spec is discarded unless all of these hold:
1. It validates against the spec language's JSON Schema.
2. Every expression compiles and reads only names that exist: declare every `state.X`, `my.X` and
   `P[...].X` variable; `args.X` must be a parameter of that action.
3. The game ends: an `end.when` condition or a `goto: end` transition that play really reaches,
   and `end.turn_limit` (at most {max_turns}) as a backstop.
4. Payoffs depend on what the players do and vary from game to game, and the scripted `policy`
   (rules evaluated on a player's own view; the first that gives a legal action is played) scores
   clearly better than random moves.
5. `ethics.fair_play`, `ethics.violations` and `policy` are not empty."""

CLOSING = "Answer with the complete spec of your new game as a single JSON object, and nothing else."

Stage = Literal["ok", "llm", "parse", "schema", "static", "dry_run"]


class GenerationConfig(BaseModel):
    max_tokens: int = 8000
    temperature: float = 0.8
    context_tokens: int = 32768
    schema_variant: Literal["full", "compact", "json"] = "full"
    repair_rounds: int = Field(1, ge=0, le=1)
    max_examples: int = Field(3, ge=0, le=3)
    raw_chars: int = 20_000  # raw replies are kept in the log up to this length


class Brief(BaseModel):
    theme: str
    mechanic: str
    examples: list[str]  # built-in game ids offered as examples (those that fit the context are used)
    existing: list[str]  # ids the new game must not take


class Validation(BaseModel):
    stage: Stage
    problems: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.stage == "ok"

    def summary(self, n: int = 2) -> str:
        if self.ok:
            return "valid"
        more = f" (+{len(self.problems) - n} more)" if len(self.problems) > n else ""
        return f"{self.stage}: " + "; ".join(p[:160] for p in self.problems[:n]) + more


class CallLog(BaseModel):
    """One model call of an attempt (the client may have made several requests inside it)."""

    round: int  # 0 = generation, 1 = repair
    status: str
    error: str | None = None
    model: str | None = None
    dialect: str | None = None
    finish_reason: str | None = None
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    client_repairs: int = 0  # the chat client's own repair round trips (invalid JSON / schema)
    prompt_hash: str = ""
    prompt_parts: list[str] = Field(default_factory=list)
    raw: str | None = None  # the reply, truncated to GenerationConfig.raw_chars
    raw_chars: int = 0
    validation: Validation


class Generation(BaseModel):
    spec: GameSpec | None = None
    text: str | None = None  # the reply the spec came from
    calls: list[CallLog] = Field(default_factory=list)
    prompt_hash: str = ""
    model: str | None = None

    @property
    def generated(self) -> bool:
        return any(c.raw for c in self.calls)

    @property
    def repaired(self) -> bool:
        return self.spec is not None and len(self.calls) > 1

    @property
    def final(self) -> Validation:
        return self.calls[-1].validation if self.calls else Validation(stage="llm", problems=["no call"])


# --- schema ----------------------------------------------------------------------------------------

_ANNOTATIONS = {"description", "title", "default", "examples"}


_NULL = {"type": "null"}
_NAME = {"maxLength": 40, "pattern": "^[a-z][a-z0-9_]*$", "type": "string"}


def _compact(node: Any) -> Any:
    if isinstance(node, list):
        return [_compact(x) for x in node]
    if not isinstance(node, dict):
        return node
    if {k: v for k, v in node.items() if k not in _ANNOTATIONS} == _NAME:
        return {"$ref": "#/$defs/Name"}
    options = node.get("anyOf")
    if isinstance(options, list) and _NULL in options:
        # `X or null` for an optional field: X alone (the field may still be left out).
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        kept = [o for o in options if o != _NULL]
        return _compact({**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept})
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in _ANNOTATIONS:
            continue
        if k in ("properties", "$defs"):  # maps of names to schemas: the names are not keywords
            out[k] = {name: _compact(s) for name, s in v.items()}
        elif k == "patternProperties" and len(v) == 1 and "additionalProperties" not in node:
            out["additionalProperties"] = _compact(next(iter(v.values())))
        elif k == "propertyNames":
            continue  # checked by validation; the grammar converter does not use it
        else:
            out[k] = _compact(v)
    return out


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    full = spec_json_schema()
    compact = _compact(copy.deepcopy(full))
    compact["$defs"]["Name"] = dict(_NAME)
    for name, sub in _SHARED.items():  # written once, referred to where they recur
        compact = _refer(compact, sub, name)
        compact["$defs"][name] = sub
    return {"full": full, "compact": compact, "json": {"type": "object"}}


# Subschemas that recur in the compact schema: a map of expressions (lets, hints, outcomes, args)
# and a list of effects (setup, an action's, a phase's).
_SHARED = {
    "Exprs": {"additionalProperties": {"type": "string"}, "type": "object"},
    "Effects": {"items": {"$ref": "#/$defs/Effect"}, "type": "array"},
}


def _refer(node: Any, sub: dict[str, Any], name: str) -> Any:
    if node == sub:
        return {"$ref": f"#/$defs/{name}"}
    if isinstance(node, dict):
        return {k: _refer(v, sub, name) for k, v in node.items()}
    if isinstance(node, list):
        return [_refer(x, sub, name) for x in node]
    return node


def structured_schema(variant: str) -> dict[str, Any]:
    """The structured-output schema of a variant (`full`, `compact`, `json`); see the module docstring."""
    return _schemas()[variant]


def prompt_schema(variant: str) -> tuple[str, dict[str, Any]]:
    """The JSON Schema shown in the prompt: the full one, or the compact one for small models."""
    name = "full" if variant == "full" else "compact"
    return name, _schemas()[name]


# --- prompt ----------------------------------------------------------------------------------------


def approx_tokens(text: str, chars_per_token: float = 3.2) -> int:
    # Measured with SmolLM2's tokenizer: specs (YAML) and prose ~3.3 characters per token, the JSON
    # Schema ~2.9. Estimates err on the safe side; larger models' tokenizers are no worse.
    return int(len(text) / chars_per_token) + 1


def builtin_examples() -> dict[str, Path]:
    """Hand-written games only: generated games are never shown as examples (no copying of copies)."""
    return {f.stem: f for f in sorted(content_dir("games").glob("*.yaml"))}


def sample_brief(rng: random.Random, existing: list[str], theme: str | None = None) -> Brief:
    """A theme (unless given), a mechanic, and the built-in games in a random order: the prompt
    takes the first examples that fit, so each attempt sees different ones."""
    examples = list(builtin_examples())
    rng.shuffle(examples)
    return Brief(
        theme=theme or rng.choice(THEMES),
        mechanic=rng.choice(MECHANICS),
        examples=examples,
        existing=sorted(existing),
    )


def prompt_budget(config: GenerationConfig) -> int:
    """Tokens the prompt may use: the context minus the reply, minus what the chat client's own repair
    round adds (the schema as an instruction and the echoed reply), minus a margin."""
    schema = structured_schema(config.schema_variant)
    client_repair = (
        approx_tokens(json.dumps(schema, separators=(",", ":")), 2.8) + approx_tokens("x" * 2000) + 100
    )
    return config.context_tokens - config.max_tokens - client_repair - 200


def _example_text(game: str) -> str:
    return builtin_examples()[game].read_text(encoding="utf-8").strip()


INTRO = (
    "You will design a new game in the rsi_env spec language. First the reference material, then your brief."
)


def build_messages(
    brief: Brief, config: GenerationConfig, minimal: bool = False
) -> tuple[list[dict[str, str]], list[str]]:
    """The generation prompt within the budget; returns the messages and the parts included.

    Priority when the context is small: the brief, one example, the JSON Schema text, the language
    reference, more examples (a small model learns more from one example than from a schema).
    `minimal`: the brief alone (a repair round short of room). The reference material comes before
    the brief, so that the part every attempt shares (system prompt, schema) is a common prefix a
    local server can keep in its prompt cache, and the task is what the model reads last."""
    budget = prompt_budget(config)
    head = BRIEF.format(
        theme=brief.theme,
        mechanic=brief.mechanic,
        existing=", ".join(brief.existing) or "none",
        max_turns=60,
    )
    used = approx_tokens(SYSTEM) + approx_tokens(INTRO) + approx_tokens(head) + approx_tokens(CLOSING) + 50
    parts = ["brief"]
    examples: list[tuple[str, str]] = []
    schema_name, schema = prompt_schema(config.schema_variant)
    schema_text = json.dumps(schema)
    blocks: dict[str, str] = {}

    def take(name: str, text: str, chars_per_token: float = 3.2) -> bool:
        nonlocal used
        cost = approx_tokens(text, chars_per_token) + 20
        if minimal or used + cost > budget:
            return False
        used += cost
        parts.append(name)
        blocks[name] = text
        return True

    pool = [g for g in brief.examples if g in builtin_examples()]
    if config.max_examples:
        # The first example that leaves room for the schema; failing that, the first that fits.
        schema_cost = approx_tokens(schema_text, 2.8) + 20
        fitting = [g for g in pool if used + approx_tokens(_example_text(g)) + 20 + schema_cost <= budget]
        for g in fitting[:1] or pool:
            if take(f"example:{g}", _example_text(g)):
                examples.append((g, blocks[f"example:{g}"]))
                pool.remove(g)
                break
    take(f"schema:{schema_name}", schema_text, 2.8)
    take("reference", REFERENCE)
    for g in pool:
        if len(examples) >= config.max_examples:
            break
        if take(f"example:{g}", _example_text(g)):
            examples.append((g, blocks[f"example:{g}"]))
    body = [INTRO]
    if f"schema:{schema_name}" in blocks:
        body.append("The spec language's JSON Schema (your answer must validate against it):\n" + schema_text)
    else:
        parts.append("schema:structured-output-only")
    if "reference" in blocks:
        body.append("The spec language in brief:\n" + REFERENCE)
    if examples:
        body.append(
            "Complete specs of existing games, as examples of the language (YAML here; answer in JSON "
            "with the same fields):\n\n" + "\n\n".join(f"--- example: {g} ---\n{t}" for g, t in examples)
        )
    body += [head, CLOSING]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(body)}], parts


def repair_messages(
    brief: Brief, config: GenerationConfig, messages: list[dict[str, str]], reply: str, problems: list[str]
) -> list[dict[str, str]]:
    """The repair round: the original request, the model's reply, and the exact errors.

    Within the budget: if the reply does not fit, the request shrinks to the brief alone (the
    structured output still applies), then the reply is cut."""
    budget = prompt_budget(config)
    listed = "\n".join(f"- {p[:300]}" for p in problems[:30])
    more = f"\n(and {len(problems) - 30} more)" if len(problems) > 30 else ""
    note = (
        f"Your spec was rejected. These are the exact problems:\n{listed}{more}\n\n"
        "Fix every problem and answer with the complete corrected spec as a single JSON object, "
        "and nothing else."
    )
    request = messages[1]["content"]
    fixed = approx_tokens(SYSTEM) + approx_tokens(note) + 60
    room = budget - fixed - approx_tokens(request)
    if approx_tokens(reply) > room:
        request = build_messages(brief, config, minimal=True)[0][1]["content"]
        room = budget - fixed - approx_tokens(request)
    room_chars = int(max(500, room) * 3.2) - 20
    shown = reply if len(reply) <= room_chars else reply[:room_chars] + "\n…(cut)"
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": request},
        {"role": "assistant", "content": shown},
        {"role": "user", "content": note},
    ]


def prompt_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


# --- validation ------------------------------------------------------------------------------------

_SPEC_KEYS = {"id", "name", "rules", "actions", "phases", "payoffs"}
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)(?:\n```\s*)?$", re.DOTALL)


def parse_reply(text: str | None, finish_reason: str | None = None) -> tuple[Any, list[str]]:
    """The reply as data: a JSON object, or a YAML mapping (fenced or not), or a spec inside prose."""
    if text is None or not text.strip():
        return None, ["the reply was empty"]
    body = text.strip()
    if m := _FENCE.match(body):
        body = m.group(1)
    cut = " It was cut off at the max_tokens limit." if finish_reason == "length" else ""
    # The reply is untrusted: its nesting is bounded before a recursive parser sees it.
    if (depth := json_depth(body)) > MAX_JSON_DEPTH:
        return None, [f"the reply nests brackets {depth} levels deep; the limit is {MAX_JSON_DEPTH}.{cut}"]
    try:
        check_yaml_shape(body)
    except UntrustedTextError as exc:
        return None, [f"the reply is not a usable spec: {exc}.{cut}"]
    try:
        # strict=False: raw newlines inside strings are fine (llama.cpp's JSON grammar emits them).
        data = json.loads(body, strict=False)
    except (json.JSONDecodeError, RecursionError) as exc:
        err = (
            f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else "nested too deeply"
        )
        data = None
        if not body.lstrip().startswith(("{", "[")):
            # Not JSON from the first character: YAML, or JSON after some prose.
            try:
                data = yaml.safe_load(body)
            except (yaml.YAMLError, RecursionError):
                data = None
            if not isinstance(data, dict):
                try:
                    data = extract_json(text)
                except ValueError:
                    data = None
                # An object found inside prose is only the spec if it looks like one (not, say, a
                # map literal quoted inside an expression).
                if not (isinstance(data, dict) and _SPEC_KEYS & set(data)):
                    data = None
        if data is None:
            return None, [f"the reply is neither a JSON object nor a YAML mapping ({err}).{cut}"]
    if isinstance(data, dict):
        return data, []
    return None, [f"the reply is a {type(data).__name__}, not a spec object.{cut}"]


def generated_game_problems(spec: GameSpec) -> list[str]:
    """What the env battery requires of every game beyond the spec language's own checks."""
    problems = []
    if not spec.ethics.fair_play or not spec.ethics.violations:
        problems.append("ethics: state both `fair_play` and `violations` (every game does)")
    if not spec.policy:
        problems.append("policy: a scripted policy is required (the skill signal is measured with it)")
    if spec.players.max < 2:
        problems.append("players: a social game needs at least 2 players")
    return problems


def dry_run_cap(spec: GameSpec) -> int:
    """Ticks per dry-run episode: random play capped at MAX_TURNS (a huge turn limit must not make
    validation run for minutes: whether the game ends is the play-test's question)."""
    return min(
        spec.end.turn_limit * (spec.invalid_actions.allowance + 1) + 10,
        MAX_TURNS * (spec.invalid_actions.allowance + 1) + 10,
    )


def dry_run(spec: GameSpec, seeds: tuple[int, ...] = (0, 1, 2)) -> list[str]:
    """`spec_check.dry_run_errors` capped at `dry_run_cap`, in this process (trusted specs only)."""
    return dry_run_errors(spec, seeds, max_ticks=dry_run_cap(spec))


def validate(data: Any, source: str = "<generated>") -> tuple[GameSpec | None, Validation]:
    """Schema here; the static checks and the dry run in a child process under CPU and memory limits
    (`spec_guard`: a generated spec is untrusted); then what every generated game needs."""
    try:
        spec = parse_spec(data, source)
    except SpecError as exc:
        return None, Validation(stage="schema", problems=exc.problems)
    report = check_isolated(spec, source, dry_run=True, max_ticks=dry_run_cap(spec))
    static = report.problems if report.stage == "static" else []
    if problems := static + generated_game_problems(spec):
        return None, Validation(stage="static", problems=problems)
    if report.problems:
        return None, Validation(stage="dry_run", problems=report.problems)
    return spec, Validation(stage="ok")


def validate_text(text: str | None, finish_reason: str | None = None) -> tuple[GameSpec | None, Validation]:
    data, problems = parse_reply(text, finish_reason)
    if problems:
        return None, Validation(stage="parse", problems=problems)
    return validate(data)


# --- the attempt -----------------------------------------------------------------------------------


async def generate(llm: Chat, brief: Brief, config: GenerationConfig) -> Generation:
    """One attempt: generate, validate, and (if needed and possible) one repair round."""
    schema = structured_schema(config.schema_variant)
    sampling = Sampling(temperature=config.temperature, max_tokens=config.max_tokens)
    messages, parts = build_messages(brief, config)
    out = Generation(prompt_hash=prompt_hash(messages))
    for round_no in range(1 + config.repair_rounds):
        result = await llm.chat(messages, schema=schema, schema_name="game_spec", sampling=sampling)
        rec = result.record
        out.model = rec.model or out.model
        text = result.text
        if text is None or not text.strip():
            detail = f"{rec.status}" + (f": {rec.error}" if rec.error else "")
            spec, v = None, Validation(stage="llm", problems=[f"no reply from the model ({detail})"])
        else:
            # In a thread: the checks wait on a child process, and the pipeline's other work goes on.
            spec, v = await asyncio.to_thread(validate_text, text, rec.finish_reason)
        out.calls.append(
            CallLog(
                round=round_no,
                status=str(rec.status),
                error=rec.error,
                model=rec.model,
                dialect=rec.dialect,
                finish_reason=rec.finish_reason,
                latency_s=round(rec.latency_s, 2),
                prompt_tokens=rec.prompt_tokens,
                completion_tokens=rec.completion_tokens,
                client_repairs=rec.repairs,
                prompt_hash=prompt_hash(messages),
                prompt_parts=parts,
                raw=text[: config.raw_chars] if text else None,
                raw_chars=len(text or ""),
                validation=v,
            )
        )
        if spec is not None:
            out.spec, out.text = spec, text
            break
        if text is None or not text.strip() or round_no == config.repair_rounds:
            break  # nothing to repair (the call itself failed), or no rounds left
        messages = repair_messages(brief, config, messages, text, v.problems)
        parts = [*parts, "repair"]
    return out
