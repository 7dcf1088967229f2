"""Rich rendering of recorded episodes: used by `play` (transcript), `play --live` and `replay`.

An episode is rendered as a list of blocks, one per tick, built from the engine's event log (the
authoritative order of what happened) joined with the turn records (raw model output, call
status, latency, state changes) and the conduct flags (shown beside the turn that raised them).
A turn the event log does not cover (the log is capped, or an older record has none) is rendered
from its turn record, so every turn appears.

With `player`, a block holds only what that player could see: the events visible to it, its own
turns, its own flags and failures, and what its observation told it at each of its turns.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .events import TURN_KINDS, ConductFlag, Event
from .trajectory import Episode, Turn, Verdict
from .view import fmt_value

MAX_CHANGES_SHOWN = 12
RAW_CHARS = 160
REASONING_CHARS = 300


@dataclass
class Block:
    """What happened at one tick. `flags` lists what a reviewer jumps to: conduct flags (lies,
    broken promises, violations) and failed model calls, one short line each."""

    tick: int
    turn: int | None = None
    phase: str | None = None
    lines: list[Text] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    players: list[str] = field(default_factory=list)  # who acted at this tick
    # Where the engine moved on to the next turn within this tick (a phase change, a new round's
    # announcement): the tick's state changes and failed calls are shown just before it.
    split: int | None = field(default=None, repr=False)

    @property
    def flagged(self) -> bool:
        return bool(self.flags)


def clean(text: Any, limit: int | None = None) -> str:
    """One display line: control characters (a model may emit escape codes) and newlines made
    harmless, cut to `limit` characters."""
    s = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "�", str(text)).replace("\n", " ⏎ ")
    return s if limit is None or len(s) <= limit else s[: limit - 1] + "…"


def _args_text(args: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in (args or {}).items() if k != "message")


def _move_text(action: str | None, args: dict[str, Any] | None, log: str | None = None) -> Text:
    """`propose(books=2, hats=1)`, or a spec's log line followed by the move it describes."""
    move = f"{action}({_args_text(args)})"
    if log:
        t = Text(clean(log), style="green")
        t.append(f"  [{move}]", style="dim green")
        return t
    return Text(move, style="green")


def _who(line: Text, player: str, agent: str) -> None:
    line.append(player, style="bold cyan")
    line.append(f" [{agent}] ", style="dim")


class _Builder:
    """Builds the blocks of one episode; one instance per `episode_blocks` call."""

    def __init__(self, ep: Episode, player: str | None, show_changes: bool) -> None:
        self.ep = ep
        self.player = player
        self.show_changes = show_changes and player is None  # hidden state is not the player's to see
        self.turns: dict[tuple[int, str], Turn] = {(t.tick, t.player): t for t in ep.turns}
        self.agent_of = {p.player: p.agent for p in ep.players}
        self.flags: dict[tuple[int, str | None], list[ConductFlag]] = {}
        for f in ep.flags:
            if self._mine(f.player):
                self.flags.setdefault((f.tick, f.player), []).append(f)
        self.blocks: dict[int, Block] = {}
        self.covered: set[tuple[int, str]] = set()  # turns already shown through an event
        self.flagged: set[tuple[int, str | None]] = set()  # flag keys already shown
        self.last_obs: dict[str, dict[str, list[str]]] = {}

    def _mine(self, who: str | None) -> bool:
        return self.player is None or who == self.player

    def block(self, tick: int, turn: int | None = None, phase: str | None = None) -> Block:
        b = self.blocks.setdefault(tick, Block(tick))
        b.turn = b.turn if b.turn is not None else turn
        b.phase = b.phase or phase
        return b

    def build(self) -> list[Block]:
        for e in self.ep.events:
            if e.seen_by(self.player):
                self.event(e)
        for t in self.ep.turns:
            if not self._mine(t.player):
                continue
            b = self.block(t.tick, t.turn, t.phase)
            if t.player not in b.players:
                b.players.append(t.player)
            if (t.tick, t.player) not in self.covered:
                self.turn_only(b, t)  # no event for this turn: render it from its record
        extra: dict[int, list[Text]] = {}
        for t in self.ep.turns:
            if not self._mine(t.player):
                continue
            for fc in t.failed_calls:
                err = clean(fc.error or "", 200)
                extra.setdefault(t.tick, []).append(
                    Text(f"      ⚠ {t.player}: model call failed ({fc.status}) {err}", style="yellow")
                )
                self.blocks[t.tick].flags.append(f"{t.player}: model call failed ({fc.status})")
            if self.show_changes and t.changes:
                extra.setdefault(t.tick, []).extend(_changes(t))
        for tick, lines in extra.items():
            b = self.blocks[tick]
            at = len(b.lines) if b.split is None else b.split
            b.lines[at:at] = lines
        for tick, who in list(self.flags):
            if (tick, who) not in self.flagged:  # a flag whose turn left no line (e.g. a referee's)
                self.flag_lines(self.block(tick), tick, who)
        return [self.blocks[k] for k in sorted(self.blocks)]

    def event(self, e: Event) -> None:
        b = self.block(e.tick, e.turn, e.phase)
        if b.split is None and b.turn is not None and e.turn > b.turn:
            b.split = len(b.lines)
        prefix = f"t{e.turn!s:<3} "
        if e.kind in TURN_KINDS:
            self.turn_event(b, e, prefix)
        elif e.kind == "phase":
            b.lines.append(Text(f"── {clean(e.text)} ──", style="bold blue"))
        elif e.kind == "tell":
            to = (e.visible_to or ["?"])[0]
            where = "(private to you)" if self.player else f"(private to {to})"
            b.lines.append(Text(f"{prefix}{where} {clean(e.text)}", style="magenta"))
        else:
            style = {"pass": "yellow", "forfeit": "bold yellow", "end": "bold"}.get(e.kind, "white")
            b.lines.append(Text(f"{prefix}{clean(e.text or e.kind)}", style=style))

    def turn_event(self, b: Block, e: Event, prefix: str) -> None:
        who = e.player or "?"
        key = (e.tick, who)
        turn = self.turns.get(key)
        first = turn is not None and key not in self.covered
        if first and self.player is not None and who == self.player:
            assert turn is not None
            self.observation(b, turn)
        line = Text(prefix, style="dim")
        _who(line, who, self.agent_of.get(who, "?"))
        if e.kind == "action":
            line.append_text(_move_text(e.action, e.args, e.text))
            if e.message:
                line.append(f'  "{clean(e.message)}"', style="italic")
            if e.visible_to is not None:
                line.append(f"  (seen by {', '.join(e.visible_to)})", style="dim")
        elif e.kind == "committed":
            if turn is not None and turn.action:
                line.append(f"commits {turn.action}({_args_text(turn.args)})", style="green")
                line.append("  (sealed until all have moved)", style="dim")
            else:
                line.append(clean(e.text or "committed a sealed move"), style="dim")
        elif e.kind == "invalid":
            line.append("✗ invalid: ", style="bold red")
            line.append(clean(e.text), style="red")
            raw = turn.raw if turn is not None else e.raw
            line.append(f"  raw: {clean(repr(raw or ''), RAW_CHARS)}", style="dim red")
        if first:
            assert turn is not None
            self.covered.add(key)
            _call_details(line, turn)
        b.lines.append(line)
        if e.kind != "invalid" and key not in self.flagged:
            self.flag_lines(b, *key)

    def turn_only(self, b: Block, t: Turn) -> None:
        if self.player is not None:
            self.observation(b, t)
        line = Text(f"t{t.turn:<3} ", style="dim")
        _who(line, t.player, self.agent_of.get(t.player, "?"))
        if t.valid:
            line.append_text(_move_text(t.action, t.args))
            if (t.args or {}).get("message"):
                line.append(f'  "{clean(t.args["message"])}"', style="italic")  # type: ignore[index]
        else:
            line.append("✗ invalid: ", style="bold red")
            line.append(clean(t.feedback or "not a legal action"), style="red")
            line.append(f"  raw: {clean(repr(t.raw or ''), RAW_CHARS)}", style="dim red")
        _call_details(line, t)
        b.lines.append(line)
        self.covered.add((t.tick, t.player))
        if (t.tick, t.player) not in self.flagged:
            self.flag_lines(b, t.tick, t.player)

    def flag_lines(self, b: Block, tick: int, who: str | None) -> None:
        self.flagged.add((tick, who))
        for f in self.flags.get((tick, who), []):
            label = f.label()
            desc = clean(f.description)
            b.lines.append(Text(f"      ⚑ {who or ''} {label} — {desc}", style="bold magenta"))
            b.flags.append(f"{who} {label}" if who else label)

    def observation(self, b: Block, t: Turn) -> None:
        """What the player read before this turn: the sections that changed since its last turn."""
        sections = observation_sections(t.observation)
        before = self.last_obs.get(t.player)
        self.last_obs[t.player] = sections
        b.lines.append(Text(f"      {t.player} sees:", style="bold dim cyan"))
        if not sections:  # an observation format this parser does not know: show it whole
            shown = [clean(x) for x in t.observation.splitlines()]
        else:
            shown = []
            for name, body in sections.items():
                if before is None or before.get(name) != body or name in ("YOUR TURN", "FEEDBACK"):
                    shown += body
            shown = shown or ["(nothing new)"]
        b.lines += [Text(f"      │ {clean(x)}", style="dim cyan") for x in shown]


# The parts of an observation that say what a player knows now; rules and the event list are left
# out (the rules never change, and the events are the block's own lines).
_KNOWLEDGE = (
    "YOUR ROLE", "YOUR INFORMATION", "PUBLIC STATE", "PLAYERS", "NOTES", "YOUR TURN", "WAITING", "FEEDBACK",
)  # fmt: skip
_SECTION = re.compile(r"^([A-Z][A-Z ]*[A-Z])(?=[ :(.])")


def observation_sections(text: str) -> dict[str, list[str]]:
    """The knowledge sections of an observation text, by heading; the legal actions are shortened
    to their names. Empty when the text has none of the known headings."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            current = m.group(1)
            if current in _KNOWLEDGE:
                out[current] = [line]
            continue
        if current in out:
            out[current].append(line)
    if "YOUR TURN" in out:
        head, *rest = out["YOUR TURN"]
        names = [m.group(1) for x in rest if (m := re.match(r"^- ([\w-]+)\(", x))]
        out["YOUR TURN"] = [f"{head.split('.')[0]}: legal {', '.join(names)}" if names else head]
    return out


def episode_blocks(ep: Episode, player: str | None = None, show_changes: bool = True) -> list[Block]:
    """One block per tick. With `player`, only what that player could see (its private view)."""
    return _Builder(ep, player, show_changes).build()


def _changes(turn: Turn) -> list[Text]:
    out = []
    for c in turn.changes[:MAX_CHANGES_SHOWN]:
        old, new = clean(fmt_value(c.get("old")), 120), clean(fmt_value(c.get("new")), 120)
        out.append(Text(f"      Δ {c.get('path')}: {old} → {new}", style="dim"))
    if len(turn.changes) > MAX_CHANGES_SHOWN:
        out.append(Text(f"      Δ … and {len(turn.changes) - MAX_CHANGES_SHOWN} more", style="dim"))
    return out


def _call_details(line: Text, turn: Turn) -> None:
    c = turn.call
    if turn.prompt is None and c.status == "ok":
        return  # a local agent: nothing to account for
    bits = [f"{c.latency_s * 1000:.0f} ms", f"{c.prompt_tokens}+{c.completion_tokens} tok"]
    if c.retries:
        bits.append(f"{c.retries} retries")
    if c.status != "ok":
        bits.append(c.status)
    line.append(f"  ({', '.join(bits)})", style="yellow" if c.status != "ok" else "dim")


_PLAYER_LINE = re.compile(r"^- (\S+) \(([^)]*)\)")


def roles_known_to(ep: Episode, viewer: str) -> set[str]:
    """Players whose role (and team) `viewer` was shown: itself, and those its observations list with
    their role (a role that is not hidden, a team mate's under `knows_team`, a role revealed later).
    Read from what the player was actually shown, so it holds for any spec, even one not at hand."""
    roles = {p.player: p.role for p in ep.players}
    known = {viewer}
    for t in ep.turns:
        if t.player != viewer:
            continue
        for line in observation_sections(t.observation).get("PLAYERS", [])[1:]:
            m = _PLAYER_LINE.match(line)
            if m and roles.get(m.group(1)) in m.group(2).split(", "):
                known.add(m.group(1))
    return known


def header(ep: Episode, player: str | None = None) -> RenderableType:
    """The players table; with `player`, others' roles and teams only where that player saw them."""
    title = f"{ep.game} · episode {ep.episode_id} · seed {ep.seed}"
    if player:
        title += f" · private view of {player}"
    known = roles_known_to(ep, player) if player else {p.player for p in ep.players}
    t = Table(title=title, show_edge=False, expand=False)
    for col in ("player", "agent", "role", "team", "model"):
        t.add_column(col)
    for p in ep.players:
        if p.player in known:
            t.add_row(p.player, p.agent, p.role, p.team or "", p.model or "")
        else:
            t.add_row(
                p.player, p.agent, Text("? (hidden)", style="dim"), Text("?", style="dim"), p.model or ""
            )
    parts: list[RenderableType] = [t]
    if ep.initial_state and player is None:
        parts.append(_initial_state(ep.initial_state))
    return Group(*parts)


def _initial_state(init: dict[str, Any]) -> Text:
    """The dealt hand, hidden and private parts included: what a spectator needs to judge claims."""
    t = Text("initial state: ", style="bold dim")
    t.append(_assignments(init.get("state")), style="dim")
    for p, vals in (init.get("players") or {}).items():
        t.append(f"\n  {p}: ", style="dim cyan")
        t.append(_assignments(vals), style="dim")
    return t


def _assignments(values: Any) -> str:
    items = values.items() if isinstance(values, dict) else []
    return clean(", ".join(f"{k}={fmt_value(v)}" for k, v in items), 600)


def _score(x: float | None, fmt: str = "g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "missing"
    return format(x, fmt)


def summary(ep: Episode, player: str | None = None) -> RenderableType:
    """Status, payoffs, outcomes, the conduct flags with their turns, referee verdicts, usage. With
    `player`, the flags listed are that player's own (others' can name hidden roles and lies it did
    not see), as beside the turns of its private view."""
    parts: list[RenderableType] = []
    status = Text(f"status: {ep.status}", style="bold green" if ep.status == "complete" else "bold yellow")
    if ep.abort_reason:
        status.append(f" ({clean(ep.abort_reason, 300)})", style="red")
    if ep.end_reason:
        status.append(f" · ended by {ep.end_reason}")
    parts.append(status)
    flags_of: dict[str, int] = {}
    for f in ep.flags:
        flags_of[f.player] = flags_of.get(f.player, 0) + 1
    t = Table(title="Payoffs", show_edge=False)
    for col in ("player", "agent", "payoff", "normalised", "invalid", "conduct flags"):
        t.add_column(col)
    for p in ep.players:
        pay = (ep.payoffs or {}).get(p.player)
        best = (ep.best or {}).get(p.player)
        norm = f"{pay / best:.2f}" if pay is not None and best else ""
        shown = "— (aborted)" if ep.payoffs is None else _score(pay)
        invalid = str(ep.invalid_counts.get(p.player, 0))
        flags = "?" if player is not None and p.player != player else str(flags_of.get(p.player, 0))
        t.add_row(p.player, p.agent, shown, norm, invalid, flags)
    parts.append(t)
    if ep.outcomes:
        parts.append(Text("outcomes: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in ep.outcomes.items())))
    own = [f for f in ep.flags if player is None or f.player == player]
    if own:
        parts.append(flags_list(own))
    others = {p.player for p in ep.players if player is not None and p.player != player}
    parts += [verdict_table(v, hide=others) for v in ep.verdicts]
    u = ep.usage
    if u.calls:
        tokens = f"{u.prompt_tokens}+{u.completion_tokens}"
        latency = f"{u.latency_s / u.calls * 1000:.0f} ms"
        calls = f"model calls: {u.calls} ({u.failed_calls} failed)"
        parts.append(Text(f"{calls}, tokens {tokens}, mean latency {latency}", style="dim"))
    if ep.errors:
        parts.append(Text("spec errors: " + "; ".join(clean(e, 200) for e in ep.errors[:3]), style="red"))
    return Group(*parts)


def flags_list(flags: list[ConductFlag]) -> RenderableType:
    """Conduct flags with the turn that raised them (the same flags sit beside those turns above)."""
    t = Text("Conduct flags:", style="bold magenta")
    for f in flags:
        t.append(f"\n  ⚑ t{f.turn} {f.player} {f.label()}", style="magenta")
        if f.description:
            t.append(f" — {clean(f.description, 200)}", style="dim")
    return t


def verdict_table(v: Verdict, hide: Collection[str] = ()) -> RenderableType:
    """A referee verdict: per player, per dimension, score and rationale, without the rows of the
    players in `hide` (others, in a private view). A failed judge call's scores are "missing", never 0."""
    title = f"Referee: {v.judge} ({v.rubric})"
    failed = None
    if v.status != "ok":
        why = f" ({clean(v.error, 200)})" if v.error else ""
        failed = Text(f"{title}: judge call {v.status}{why}: every score missing, not zero", style="yellow")
        if not v.scores:
            return failed
    t = Table(title=title, show_edge=False)
    for col in ("player", "dimension", "score", "reasoning"):
        t.add_column(col, overflow="fold")
    for who, dims in v.scores.items():
        if who in hide:
            continue
        for dim, sc in dims.items():
            score = _score(None if failed else sc.score)
            t.add_row(who, dim, score, clean(sc.reasoning, REASONING_CHARS))
    return t if failed is None else Group(t, failed)


def print_episode(ep: Episode, console: Console, player: str | None = None) -> None:
    console.print(header(ep, player))
    for b in episode_blocks(ep, player):
        for line in b.lines:
            console.print(line)
    console.print(summary(ep, player))


class LiveView:
    """`play --live`: prints one episode's ticks as they happen, following one episode at a time
    (the others run on behind the progress bar).

    A tick is printed once it is complete: in a simultaneous phase several turns arrive for one
    tick, one hook call each, with no await in between; so printing is deferred to the event
    loop's next turn (`call_soon`), when every turn of the tick is recorded.
    """

    def __init__(self, console: Console, player: str | None = None) -> None:
        self.console = console
        self.player = player
        self.following: str | None = None
        self.episode: Episode | None = None
        self.printed_tick = -1
        self.scheduled = False

    def on_turn(self, ep: Episode, turn: Turn) -> None:
        if self.following is None:
            self.following, self.printed_tick = ep.episode_id, -1
            self.console.print(header(ep, self.player))
        if ep.episode_id != self.following:
            return
        self.episode = ep
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside asyncio: every call is a whole tick
            self.flush()
            return
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        if self.episode is None:
            return
        for b in episode_blocks(self.episode, self.player):
            if b.tick > self.printed_tick:
                for line in b.lines:
                    self.console.print(line)
                self.printed_tick = b.tick

    def on_episode(self, ep: Episode) -> bool:
        """The rest and the summary of the followed episode; False for one this view did not follow."""
        if ep.episode_id != self.following:
            return False
        self.episode = ep
        self.flush()
        self.console.print(summary(ep, self.player))
        self.following = self.episode = None
        return True
