"""`python -m rsi_env.report RUN_DIR [RUN_DIR ...]`: what happened in one or more runs.

Per game: episodes, how many completed, were truncated or aborted, failed model calls by status,
tokens and latency; per agent: mean payoff ± standard error, normalised payoff, lies and invalid
actions per episode, mean referee scores (over the scores that exist: a failed judge call is
missing, never zero). Then a rating of the agents across every episode given (Bradley–Terry on
within-episode payoff ranks, with 95% intervals; see `ratings`), overall and per game. A folder
holding a judge benchmark (`python -m rsi_env.referees bench --out DIR`) adds its tables.

Aborted episodes count in the failure rates but not in payoffs, conduct rates or ratings: an
episode cut short by a failing server says nothing about how the agents play.

    python -m rsi_env.report runs/a runs/b          # tables
    python -m rsi_env.report runs/a --json          # the same, machine-readable
    python -m rsi_env.report runs/improve           # a training loop's improvement curve (+ PNG)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .cli import fail, run
from .ratings import RatingTable, agent_label, rate
from .trajectory import Episode, Turn, abort_status
from .trajectory_store import TrajectoryFileError, iter_episodes, resolve_path

PIPED_WIDTH = 150

# Dimensions of the procedural referee's verdict that repeat the record (payoffs, conduct flags,
# invalid actions), which the agents table shows already; its others (referee_manipulation) are
# reported with the referee scores.
FROM_RECORD = frozenset(
    {"payoff", "normalised_payoff", "lies", "broken_promises", "violations", "invalid_actions"}
)


class MeanStat(BaseModel):
    mean: float | None = None
    sem: float | None = None  # standard error of the mean; None with fewer than two values
    n: int = 0


def mean_stat(values: Iterable[float]) -> MeanStat:
    xs = [x for x in values if not math.isnan(x)]
    if not xs:
        return MeanStat()
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return MeanStat(mean=m, n=1)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return MeanStat(mean=m, sem=math.sqrt(var / len(xs)), n=len(xs))


class AgentStats(BaseModel):
    """One agent (profile, and model when recorded) in one game, over its seats."""

    agent: str
    seats: int  # seat-episodes, aborted ones included
    scored: int  # seat-episodes of finished episodes
    payoff: MeanStat
    normalised_payoff: MeanStat
    lies_per_episode: float | None = None
    flags_per_episode: dict[str, float] = Field(default_factory=dict)  # every conduct flag kind
    invalid_per_episode: float | None = None
    referee: dict[str, MeanStat] = Field(default_factory=dict)  # "rubric.dimension" -> non-missing scores
    referee_missing: dict[str, int] = Field(default_factory=dict)  # "rubric.dimension" -> missing scores


class GameReport(BaseModel):
    game: str
    episodes: int
    status: dict[str, int]  # complete / truncated / aborted
    rates: dict[str, float]
    failed_calls: dict[str, int]  # failed model calls by status (retried ones and final ones)
    aborted_by: dict[str, int]  # aborted episodes by the status that ended them
    calls: int
    prompt_tokens: int
    completion_tokens: int
    mean_latency_s: float | None  # per model call
    mean_duration_s: float | None  # per episode
    agents: list[AgentStats]


class Report(BaseModel):
    runs: list[str]
    episodes: int
    games: list[GameReport]
    ratings: list[RatingTable]  # "all games" first when several games, then one per game
    warnings: list[str] = Field(default_factory=list)


# --- building ---------------------------------------------------------------------------------


def load_runs(paths: list[Path]) -> tuple[list[Episode], list[str]]:
    """Episodes of every run, streamed and kept without what the report does not read (`slim`): a
    run of any size fits. A foreign or missing file stops with one clear message (exit 2)."""
    episodes: list[Episode] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in paths:
            try:
                episodes += map(slim, iter_episodes(path))
            except TrajectoryFileError as exc:
                fail(str(exc))
            except OSError as exc:
                fail(f"{resolve_path(path)}: cannot read: {exc.strerror or exc}")
    return episodes, [str(w.message) for w in caught]


def slim(ep: Episode) -> Episode:
    """The episode as the report reads it: per turn only the call accounting (no observations,
    prompts, replies or state changes), no event log, no initial state: most of a record's size."""
    turns = [
        Turn(tick=t.tick, turn=t.turn, phase=t.phase, player=t.player, observation="", raw="",
             valid=t.valid, call=t.call, failed_calls=t.failed_calls)
        for t in ep.turns
    ]  # fmt: skip
    return ep.model_copy(update={"turns": turns, "events": [], "initial_state": {}, "errors": []})


def game_report(game: str, eps: list[Episode]) -> GameReport:
    status = Counter(ep.status for ep in eps)
    failed: Counter[str] = Counter()
    for t in (t for ep in eps for t in ep.turns):
        failed.update(fc.status for fc in t.failed_calls)
        if t.call.status != "ok":
            failed[t.call.status] += 1
    calls = sum(ep.usage.calls for ep in eps)
    return GameReport(
        game=game,
        episodes=len(eps),
        status={s: status.get(s, 0) for s in ("complete", "truncated", "aborted")},
        rates={s: status.get(s, 0) / len(eps) for s in ("complete", "truncated", "aborted")},
        failed_calls=dict(failed.most_common()),
        aborted_by=dict(Counter(abort_status(ep) for ep in eps if ep.status == "aborted").most_common()),
        calls=calls,
        prompt_tokens=sum(ep.usage.prompt_tokens for ep in eps),
        completion_tokens=sum(ep.usage.completion_tokens for ep in eps),
        mean_latency_s=sum(ep.usage.latency_s for ep in eps) / calls if calls else None,
        mean_duration_s=sum(ep.duration_s for ep in eps) / len(eps) if eps else None,
        agents=agent_stats(eps),
    )


def agent_stats(eps: list[Episode]) -> list[AgentStats]:
    seats: Counter[str] = Counter()
    pay: dict[str, list[float]] = defaultdict(list)
    norm: dict[str, list[float]] = defaultdict(list)
    finished: Counter[str] = Counter()
    flags: dict[str, Counter[str]] = defaultdict(Counter)
    invalid: Counter[str] = Counter()
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    missing: dict[str, Counter[str]] = defaultdict(Counter)
    for ep in eps:
        label = {p.player: agent_label(p) for p in ep.players}
        seats.update(label.values())
        if not ep.finished:
            continue
        for p, a in label.items():
            finished[a] += 1
            invalid[a] += ep.invalid_counts.get(p, 0)
            x = (ep.payoffs or {}).get(p)
            if x is not None:
                pay[a].append(x)
                best = (ep.best or {}).get(p)
                if best:
                    norm[a].append(x / best)
        for f in ep.flags:
            if f.player in label:
                flags[label[f.player]][f.kind] += 1
        for v in ep.verdicts:
            for p, dims in v.scores.items():
                if p not in label:
                    continue  # a game-scope rubric: not one agent's score
                for dim, sc in dims.items():
                    if v.kind == "procedural" and dim in FROM_RECORD:
                        continue
                    key = f"{v.rubric}.{dim}"
                    if v.status != "ok" or sc.score is None or math.isnan(sc.score):
                        missing[label[p]][key] += 1
                    else:
                        scores[label[p]][key].append(sc.score)
    out = []
    for a in sorted(seats):
        n = finished[a]
        kinds = flags[a]
        out.append(
            AgentStats(
                agent=a, seats=seats[a], scored=n,
                payoff=mean_stat(pay[a]), normalised_payoff=mean_stat(norm[a]),
                lies_per_episode=kinds.get("lie", 0) / n if n else None,
                flags_per_episode={k: c / n for k, c in sorted(kinds.items())} if n else {},
                invalid_per_episode=invalid[a] / n if n else None,
                referee={k: mean_stat(v) for k, v in sorted(scores[a].items())},
                referee_missing=dict(sorted(missing[a].items())),
            )
        )  # fmt: skip
    return out


def build_report(paths: list[Path], episodes: list[Episode], notes: list[str] | None = None) -> Report:
    by_game: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        by_game[ep.game].append(ep)
    games = [game_report(g, eps) for g, eps in sorted(by_game.items())]
    ratings = [rate(episodes, "all games")] if len(by_game) > 1 else []
    ratings += [rate(eps, g) for g, eps in sorted(by_game.items())]
    return Report(
        runs=[str(resolve_path(p)) for p in paths], episodes=len(episodes), games=games, ratings=ratings,
        warnings=list(notes or []),
    )  # fmt: skip


# --- rendering --------------------------------------------------------------------------------


def _pm(s: MeanStat, fmt: str = ".2f") -> str:
    if s.mean is None:
        return "—"
    return f"{s.mean:{fmt}}" + (f" ± {s.sem:{fmt}}" if s.sem is not None else "")


def _opt(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else f"{x:{fmt}}"


def games_table(r: Report) -> Table:
    t = Table(title=f"{r.episodes} episode(s) from {len(r.runs)} run(s)", show_edge=False)
    columns = "game episodes complete truncated aborted calls tokens latency/call time/episode".split()
    for col in [*columns[:5], "failed calls", *columns[5:]]:
        t.add_column(col, overflow="fold")
    for g in r.games:
        fails = ", ".join(f"{s} {n}" for s, n in g.failed_calls.items()) or "0"
        if g.aborted_by:
            fails += " · aborted by " + ", ".join(f"{s} {n}" for s, n in g.aborted_by.items())
        t.add_row(
            g.game, str(g.episodes),
            *(f"{g.rates[s]:.0%} ({g.status[s]})" for s in ("complete", "truncated", "aborted")),
            fails, str(g.calls), f"{g.prompt_tokens}+{g.completion_tokens}",
            "—" if g.mean_latency_s is None else f"{g.mean_latency_s * 1000:.0f} ms",
            _opt(g.mean_duration_s, ".2f") + ("" if g.mean_duration_s is None else " s"),
        )  # fmt: skip
    return t


def agents_table(g: GameReport) -> RenderableType:
    t = Table(title=f"{g.game}: agents (finished episodes)", show_edge=False)
    for col in ("agent", "seats", "payoff (mean ± sem)", "normalised", "lies/ep", "flags/ep", "invalid/ep"):
        t.add_column(col, overflow="fold")
    for a in g.agents:
        flags = ", ".join(f"{k} {v:.2f}" for k, v in a.flags_per_episode.items()) or "0"
        t.add_row(
            a.agent, f"{a.scored}/{a.seats}", _pm(a.payoff), _pm(a.normalised_payoff),
            _opt(a.lies_per_episode), flags, _opt(a.invalid_per_episode),
        )  # fmt: skip
    parts: list[RenderableType] = [t]
    dims = sorted({k for a in g.agents for k in (*a.referee, *a.referee_missing)})
    if dims:
        # Dimensions down, agents across: rubrics have many dimensions and runs few agents.
        title = f"{g.game}: referee scores (mean ± sem over non-missing scores)"
        rt = Table(title=title, show_edge=False)
        rt.add_column("dimension")
        for a in g.agents:
            rt.add_column(a.agent, overflow="fold")
        for d in dims:
            cells = []
            for a in g.agents:
                cell = _pm(a.referee.get(d, MeanStat()))
                if a.referee_missing.get(d):
                    cell += f" ({a.referee_missing[d]} missing)"
                cells.append(cell)
            rt.add_row(d, *cells)
        parts.append(rt)
    return Group(*parts)


def ratings_table(r: RatingTable) -> RenderableType:
    title = f"Ratings, {r.scope}: {r.episodes} episode(s), {r.comparisons} comparison(s)"
    if not r.ratings:
        return Text(f"{title}: {r.note or 'nothing to rate'}", style="dim")
    t = Table(title=title, caption=r.note, show_edge=False)
    for col in ("#", "agent", "Elo", "95% interval", "strength ± se", "won", "tied", "lost", "episodes"):
        t.add_column(col, overflow="fold")
    for x in r.ratings:
        t.add_row(
            str(x.rank), x.agent, f"{x.elo:.0f}", f"{x.elo_lo:.0f} … {x.elo_hi:.0f}",
            f"{x.strength:+.2f} ± {x.se:.2f}",
            f"{x.wins:g}", f"{x.ties:g}", f"{x.losses:g}", str(x.episodes),
        )  # fmt: skip
    return t


def print_report(r: Report, console: Console) -> None:
    console.print(games_table(r))
    for g in r.games:
        console.print()
        console.print(agents_table(g))
    for rt in r.ratings:
        console.print()
        console.print(ratings_table(rt))
    if r.ratings and r.ratings[0].ratings:
        console.print(Text(r.ratings[0].method, style="dim"))


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog or "python -m rsi_env.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("runs", type=Path, nargs="+", help="run directories or trajectories .jsonl files")
    ap.add_argument("--game", action="append", help="only this game (repeatable)")
    ap.add_argument("--json", action="store_true", help="machine-readable output (the same content)")
    return ap


def show_improvement(paths: list[Path]) -> list[Path]:
    """Draw the improvement curve of every training-loop directory (`python -m rsi_env.improve`) among
    `paths`; the other paths, run directories, are returned for the tables."""
    from .improve.curve import is_loop_dir, show_curve

    loops = [p for p in paths if is_loop_dir(p)]
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    for p in loops:
        show_curve(p, Console(width=PIPED_WIDTH if wide else None))
    return [p for p in paths if p not in loops]


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if not args.json:
        args.runs = show_improvement(args.runs)
        if not args.runs:
            return 0
    benches = judge_benches(args.runs)
    runs = [p for p in args.runs if p not in benches or resolve_path(p).exists()]
    episodes, notes = load_runs(runs) if runs else ([], [])
    if args.game:
        episodes = [ep for ep in episodes if ep.game in args.game]
    if not episodes and not benches:
        why = f"; {notes[0]}" if notes else ""
        fail(f"no episodes to report in {', '.join(str(p) for p in args.runs)}{why}")
    report = build_report(runs, episodes, notes) if episodes else None
    err = Console(stderr=True)
    for note in notes:
        err.print(f"[yellow]warning:[/] {escape(str(note))}", highlight=False)
    if args.json:
        data = report.model_dump(mode="json") if report else {}
        if benches:
            data["judge_bench"] = {str(p): b.model_dump(mode="json") for p, b in benches.items()}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        # Piped into a file or a pager: wide tables rather than rich's 80-column default.
        wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
        console = Console(width=PIPED_WIDTH if wide else None)
        if report is not None:
            print_report(report, console)
        for bench in benches.values():
            from .referees.bench import report_renderables

            for part in report_renderables(bench):
                console.print()
                console.print(part)
    return 0


def judge_benches(paths: list[Path]) -> dict[Path, Any]:
    """The judge benchmark (`referees bench --out DIR`) of each folder that has one, shown beside the
    ratings; its module (and the model client it imports) loads only when there is one."""
    found: dict[Path, Any] = {}
    for p in paths:
        if (p / "bench.json").is_file():
            from .referees.bench import read_report

            try:
                found[p] = read_report(p / "bench.json")
            except ValueError as exc:
                fail(f"{p / 'bench.json'}: not a judge benchmark report: {str(exc).splitlines()[0]}")
    return found


if __name__ == "__main__":
    run(main)
