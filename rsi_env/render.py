"""Rich rendering of recorded episodes: used by `play` (transcript), `play --live` and `replay`.

An episode is rendered as a list of blocks, one per tick, built from the engine's event log (the
authoritative order of what happened) joined with the turn records (raw model output, call
status, latency, state changes) and the conduct flags (shown beside the turn that raised them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .trajectory import Episode, Turn
from .view import fmt_value


@dataclass
class Block:
    """What happened at one tick."""

    tick: int
    lines: list[Text] = field(default_factory=list)
    flagged: bool = False


def _action_text(e: dict[str, Any]) -> str:
    if e.get("text"):
        return str(e["text"])
    args = ", ".join(f"{k}={fmt_value(v)}" for k, v in (e.get("args") or {}).items())
    return f"{e.get('action')}({args})"


def _visible(e: dict[str, Any], player: str | None) -> bool:
    return player is None or e.get("visible_to") is None or player in e["visible_to"]


def episode_blocks(ep: Episode, player: str | None = None, show_changes: bool = True) -> list[Block]:
    """One block per tick. With `player`, only what that player could see (its private view)."""
    turns: dict[tuple[int, str], Turn] = {(t.tick, t.player): t for t in ep.turns}
    flags: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for f in ep.flags:
        flags.setdefault((f["tick"], f["player"]), []).append(f)
    agent_of = {p.player: p.agent for p in ep.players}
    blocks: dict[int, Block] = {}

    def block(tick: int) -> Block:
        return blocks.setdefault(tick, Block(tick))

    shown_turns: set[tuple[int, str]] = set()
    for e in ep.events:
        if not _visible(e, player):
            continue
        b = block(e["tick"])
        kind = e["kind"]
        who = e.get("player")
        prefix = f"t{e['turn']:<3}"
        if kind in ("action", "invalid", "committed"):
            key = (e["tick"], who)
            turn = turns.get(key)
            if kind == "action":
                line = Text(f"{prefix} ", style="dim")
                line.append(f"{who}", style="bold cyan")
                line.append(f" [{agent_of.get(who, '?')}] ", style="dim")
                line.append(_action_text(e), style="green")
                if e.get("message"):
                    line.append(f'  "{e["message"]}"', style="italic")
                if e.get("visible_to") is not None:
                    line.append(f"  (seen by {', '.join(e['visible_to'])})", style="dim")
            elif kind == "committed":
                line = Text(f"{prefix} {who} committed a hidden move", style="dim")
                if player is not None or turn is None:
                    line = Text(f"{prefix} {e.get('text', '')}", style="dim")
            else:
                line = Text(f"{prefix} ", style="dim")
                line.append(f"{who} ✗ invalid: ", style="bold red")
                line.append(str(e.get("text", "")), style="red")
                raw = (turn.raw if turn else e.get("raw", "")) or ""
                line.append(f"  raw: {raw[:120]!r}", style="dim red")
            b.lines.append(line)
            if turn is not None and key not in shown_turns:
                shown_turns.add(key)
                _call_details(line, turn)
                if show_changes and player is None:
                    b.lines += _changes(turn)
            for f in flags.get(key, []) if kind != "invalid" else []:
                b.lines.append(Text(f"      ⚑ {f['kind']}: {f['name']} — {f.get('description', '')}", style="bold magenta"))
                b.flagged = True
        elif kind == "pass":
            b.lines.append(Text(f"{prefix} {e.get('text', '')}", style="yellow"))
        elif kind == "forfeit":
            b.lines.append(Text(f"{prefix} {e.get('text', '')}", style="bold yellow"))
        elif kind == "phase":
            b.lines.append(Text(f"── {e.get('text', '')} ──", style="bold blue"))
        elif kind == "tell":
            to = (e.get("visible_to") or ["?"])[0]
            b.lines.append(Text(f"{prefix} (private to {to}) {e.get('text', '')}", style="magenta"))
        elif kind == "end":
            b.lines.append(Text(f"{prefix} {e.get('text', '')}", style="bold"))
        else:
            b.lines.append(Text(f"{prefix} {e.get('text', kind)}", style="white"))
    for t in ep.turns:
        b = block(t.tick)
        for fc in t.failed_calls:
            b.lines.append(Text(f"      ⚠ {t.player}: model call failed ({fc.status}) {fc.error or ''}", style="yellow"))
            b.flagged = True
        if show_changes and player is None and (t.tick, t.player) not in shown_turns:
            b.lines += _changes(t)  # a tick whose move left no event (e.g. a resolved round)
    return [blocks[k] for k in sorted(blocks)]


def _changes(turn: Turn) -> list[Text]:
    return [
        Text(f"      Δ {c['path']}: {fmt_value(c['old'])} → {fmt_value(c['new'])}", style="dim")
        for c in turn.changes[:12]
    ]


def _call_details(line: Text, turn: Turn) -> None:
    c = turn.call
    if turn.prompt is None and c.status == "ok":
        return
    bits = [f"{c.latency_s * 1000:.0f} ms", f"{c.prompt_tokens}+{c.completion_tokens} tok"]
    if c.retries:
        bits.append(f"{c.retries} retries")
    if c.status != "ok":
        bits.append(c.status)
    line.append(f"  ({', '.join(bits)})", style="yellow" if c.status != "ok" else "dim")


def header(ep: Episode) -> RenderableType:
    t = Table(title=f"{ep.game} · episode {ep.episode_id} · seed {ep.seed}", show_edge=False, expand=False)
    for col in ("player", "agent", "role", "team", "model"):
        t.add_column(col)
    for p in ep.players:
        t.add_row(p.player, p.agent, p.role, p.team or "", p.model or "")
    return t


def summary(ep: Episode) -> RenderableType:
    parts: list[RenderableType] = []
    status = Text(f"status: {ep.status}", style="bold green" if ep.status == "complete" else "bold yellow")
    if ep.abort_reason:
        status.append(f" ({ep.abort_reason})", style="red")
    if ep.end_reason:
        status.append(f" · ended by {ep.end_reason}")
    parts.append(status)
    lies: dict[str, int] = {}
    for f in ep.flags:
        lies[f["player"]] = lies.get(f["player"], 0) + 1
    t = Table(title="Payoffs", show_edge=False)
    for col in ("player", "payoff", "normalised", "invalid", "conduct flags"):
        t.add_column(col)
    for p in ep.players:
        pay = (ep.payoffs or {}).get(p.player)
        best = (ep.best or {}).get(p.player)
        norm = f"{pay / best:.2f}" if pay is not None and best else ""
        shown = "—" if pay is None else ("nan" if math.isnan(pay) else f"{pay:g}")
        t.add_row(p.player, shown, norm, str(ep.invalid_counts.get(p.player, 0)), str(lies.get(p.player, 0)))
    parts.append(t)
    if ep.outcomes:
        parts.append(Text("outcomes: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in ep.outcomes.items())))
    for v in ep.verdicts:
        parts.append(verdict_table(v))
    if ep.errors:
        parts.append(Text("spec errors: " + "; ".join(ep.errors[:3]), style="red"))
    return Group(*parts)


def verdict_table(v: dict[str, Any]) -> RenderableType:
    """A referee verdict: per player, per dimension, score and rationale."""
    t = Table(title=f"Referee: {v.get('judge', '?')} ({v.get('rubric', '?')})", show_edge=False)
    for col in ("player", "dimension", "score", "reasoning"):
        t.add_column(col, overflow="fold")
    for player, dims in (v.get("scores") or {}).items():
        for dim, sc in dims.items():
            score = sc.get("score")
            shown = "missing" if score is None or (isinstance(score, float) and math.isnan(score)) else f"{score:g}"
            t.add_row(player, dim, shown, str(sc.get("reasoning", ""))[:200])
    if v.get("status") and v["status"] != "ok":
        t.caption = f"judge call {v['status']}: scores missing (NaN), not zero"
    return t


def print_episode(ep: Episode, console: Console, player: str | None = None) -> None:
    console.print(header(ep))
    for b in episode_blocks(ep, player):
        for line in b.lines:
            console.print(line)
    console.print(summary(ep))
