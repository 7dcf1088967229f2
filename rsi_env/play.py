"""`python -m rsi_env.play --game negotiation`: play episodes and record them.

With no flags, two agents on the embedded local model (SmolLM2-135M-Instruct) play one episode;
the transcript and payoffs are printed and the episode is appended to `runs/trajectories.jsonl`.
Rerunning the same command resumes: finished episodes are skipped, aborted ones played again (their
failed attempts kept in `failed_attempts.jsonl`). `--ray` plays on Ray actors (a laptop's cores, or
a cluster). Exit status 1 when episodes were played and none finished, 2 for bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from .agents.factory import AgentFactory
from .agents.profiles import ProfileError
from .catalog import load_game
from .cli import (
    add_endpoint_args,
    add_option_args,
    add_ray_args,
    endpoint_override,
    fail,
    game_options,
    positive_int,
    ray_options,
    run,
)
from .referees.base import RefereeError, load_referee
from .referees.panel import score_episodes
from .render import LiveView, print_episode
from .runner import EpisodeJob, LiveCallback, RunCallback, Runner, RunStats, plan
from .spec import GameSpec, SpecError
from .spec_check import check_spec
from .trajectory import Episode
from .trajectory_store import TrajectoryFileError


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog or "python -m rsi_env.play", description=__doc__)
    ap.add_argument(
        "--game", default="negotiation", help="game id (see `python -m rsi_env.games list`) or spec file"
    )
    ap.add_argument(
        "--agents", default="local",
        help="comma-separated, one per seat (cycled): profile names from agents/, random, scripted, human",
    )  # fmt: skip
    ap.add_argument("--episodes", type=positive_int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="first seed (any integer); episode i uses seed+i")
    ap.add_argument("--n-players", type=positive_int, help="seats, within the game's range")
    add_option_args(ap)
    ap.add_argument(
        "--out", type=Path, default=Path("runs"), help="run directory (trajectories.jsonl inside)"
    )
    ap.add_argument("--concurrency", type=positive_int, default=8, help="episodes in flight at once")
    ap.add_argument(
        "--live",
        action="store_true",
        help="show an episode as it unfolds (one at a time; a progress bar for others)",
    )
    ap.add_argument("--quiet", action="store_true", help="no transcript, no progress bar")
    ap.add_argument(
        "--retry-failed", action=argparse.BooleanOptionalAction, default=True,
        help="on a rerun, play episodes recorded as aborted again (default; their failed attempts move "
        "to failed_attempts.jsonl beside the trajectories); --no-retry-failed keeps them as they are",
    )  # fmt: skip
    ap.add_argument("--max-cycles", type=positive_int, help="hard cap on ticks per episode")
    ap.add_argument(
        "--referee", action="append", default=[], metavar="MODULE:CLASS",
        help="another referee to score each finished episode, beside the procedural one (repeatable)",
    )  # fmt: skip
    add_endpoint_args(ap)
    add_ray_args(ap)
    return ap


def load_checked(game: str, options: dict[str, str] | None = None) -> GameSpec:
    """The game with its options chosen, through the static checks of `games validate` (every problem,
    one per line) before anything runs. A spec file (untrusted) gets all of `games validate`, dry run
    included, in a child process under CPU and memory limits (`catalog.load_game`, `spec_guard`)."""
    try:
        spec = load_game(game).with_options(options)
        check_spec(spec, game, dry_run=False)
    except SpecError as exc:
        fail(str(exc))
    return spec


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)

    # Warnings (an unreadable line skipped on resume, a cut-short line trimmed) as one `warning:`
    # line each, not in the interpreter's source-location format; restored on return.
    with warnings.catch_warnings():
        warnings.showwarning = show
        return play(args)


def play(args: argparse.Namespace) -> int:
    console = Console()
    spec = load_checked(args.game, game_options(args))
    if args.n_players and not spec.players.min <= args.n_players <= spec.players.max:
        fail(
            f"--n-players {args.n_players}: {spec.id} takes {spec.players.min} to {spec.players.max} players"
        )
    names = [a.strip() for a in args.agents.split(",") if a.strip()]
    if not names:
        fail("--agents: give at least one agent")
    try:
        referees = [load_referee(r) for r in args.referee]
    except RefereeError as exc:
        fail(str(exc))
    try:
        factory = AgentFactory(names, spec, endpoint_override(args))
    except ProfileError as exc:
        fail(str(exc))
    # A human plays one episode at a time. `--live` follows one episode as it unfolds; when several
    # run at once the others go on behind the progress bar (rich prints above it).
    human = "human" in names
    concurrency = 1 if human else args.concurrency
    jobs = plan(spec, factory, args.episodes, args.seed, args.n_players)
    live = LiveView(console) if args.live and not args.quiet else None

    class PrintEpisodes(RunCallback):
        """A short run's episodes in full as they are recorded (a live view prints its own)."""

        def on_episode_end(self, ep: Episode, stats: RunStats) -> None:
            if not args.quiet and live is None and args.episodes <= 3:
                print_episode(ep, console)

    async def procedural_referee(ep: Episode) -> None:
        """The procedural referee's verdict (no model call) on each finished episode, attached as
        `prefs generate` attaches it, so replay and report of a play run show referee scores; and
        the verdicts of the referees named with --referee."""
        if ep.finished:
            await score_episodes([ep], spec, [], None, referees=referees)

    try:
        runner = Runner(
            spec,
            factory,
            args.out,
            concurrency=concurrency,
            progress=not (args.quiet or human or (live is not None and args.episodes == 1)),
            retry_failed=args.retry_failed,
            callbacks=[LiveCallback(live) if live else PrintEpisodes()],
            finish=procedural_referee,
            max_cycles=args.max_cycles,
            **ray_options(args),
        )
    except ValueError as exc:  # what Ray actors cannot do (a human, the embedded model), or no Ray
        fail(f"--ray: {exc}")
    if (
        factory.uses_models
        and any(p.backend == "local" for p in factory.profiles.values())
        and not args.quiet
    ):
        console.print(
            "[dim]Using the embedded model SmolLM2-135M-Instruct (starting it takes a few seconds)…[/]"
        )
    try:
        stats = asyncio.run(_run(runner, jobs, factory))
    except TrajectoryFileError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        console.print(
            f"[yellow]Interrupted. Finished episodes are in {escape(str(runner.path))}; rerun to resume.[/]"
        )
        return 130
    except RuntimeError as exc:  # e.g. the local model extra is missing
        fail(str(exc))
    return report_run(stats, runner, console)


def report_run(stats: RunStats, runner: Runner, console: Console) -> int:
    """One summary line; exit status 1 when episodes were played and none of them finished."""
    retried = f", {stats.retried} retried from an earlier run" if stats.retried else ""
    on_ray = ""
    if stats.actors:
        again = f", {stats.requeued} played again after an actor was lost" if stats.requeued else ""
        on_ray = f" on {stats.actors} Ray actor(s) (ready in {stats.ray_start_s:.1f} s{again})"
    console.print(
        f"{stats.done} episode(s) played{on_ray} ({stats.aborted} aborted{retried}), "
        f"{stats.skipped} already in {runner.path}; {stats.calls} model calls, {stats.tokens} tokens.",
        markup=False,
    )
    if stats.done and stats.aborted == stats.done:
        why = ", ".join(f"{s} {n}" for s, n in sorted(stats.aborted_by.items()))
        fail(f"no episode finished: all {stats.done} aborted ({why}); see {runner.path}", code=1)
    return 0


async def _run(runner: Runner, jobs: list[EpisodeJob], factory: AgentFactory) -> RunStats:
    try:
        return await runner.run(jobs)
    finally:
        await factory.aclose()


if __name__ == "__main__":
    run(main)
