"""`python -m rsi_env.referees bench`: how good are the judges, on cases whose answer is known?

    python -m rsi_env.referees bench --judges local@0.2,local@1.0#7 --n 60 --out runs/bench
    python -m rsi_env.referees bench --judges openai --base-url https://api.openai.com/v1 \\
        --model gpt-4o-mini --out runs/bench-4o
    python -m rsi_env.referees bench --episodes runs/a --out runs/bench-a   # + cases from a run

Every judge answers each case of the labelled set (`referees/bench/*.jsonl`, or `--cases`) in both
orders and at `--resamples` other seeds; answers go to OUT/answers.jsonl as they come (rerun the
command to finish an interrupted run), figures to OUT/bench.json. See the README, "Judging the
judges", for how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..cli import add_endpoint_args, endpoint_override, fail, positive_int, run
from .bench_cases import KINDS, BenchCase, BenchSetError, cases_from_episodes, load_cases, select


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog or "python -m rsi_env.referees",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="measure judges and the panel on the labelled set")
    b.add_argument(
        "--judges", default="local@0.2,local@1.0#7", help="PROFILE[@TEMP][#SEED],… (as for prefs generate)"
    )
    b.add_argument("--games", type=_csv, help="only cases of these games (comma-separated)")
    b.add_argument("--kinds", type=_csv, help=f"only these kinds: {', '.join(KINDS)}")
    b.add_argument(
        "--n", type=positive_int, help="at most N cases, spread over the kinds (the same N for any judge)"
    )
    b.add_argument(
        "--cases",
        type=Path,
        action="append",
        help="labelled-set file or folder (repeatable; default: the shipped set)",
    )
    b.add_argument(
        "--episodes",
        type=Path,
        action="append",
        help="ask cases made from a recorded run (a run folder or trajectories file; repeatable) instead "
        "of the shipped set; with --cases, both",
    )
    b.add_argument(
        "--resamples",
        type=int,
        default=1,
        choices=range(0, 6),
        metavar="{0..5}",
        help="times each answer is asked again at another seed, for self-consistency (default 1)",
    )
    b.add_argument("--concurrency", type=positive_int, default=4, help="calls in flight (default 4)")
    b.add_argument("--out", type=Path, required=True, help="folder for answers.jsonl and bench.json")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    add_endpoint_args(b)
    b.set_defaults(fn=cmd_bench)
    return ap


def _cases(args: argparse.Namespace) -> tuple[list[BenchCase], list[str]]:
    """The cases to ask and where they came from; one clear message when that is nothing."""
    from ..spec import SpecError
    from ..trajectory_store import TrajectoryFileError, read_episodes

    try:
        cases = load_cases(args.cases) if args.cases or not args.episodes else []
    except BenchSetError as exc:
        fail(str(exc))
    sources = [str(p) for p in args.cases or ([] if args.episodes else ["referees/bench"])]
    for run_dir in args.episodes or []:
        try:
            made = cases_from_episodes(read_episodes(run_dir))
        except (TrajectoryFileError, SpecError) as exc:
            fail(f"--episodes {run_dir}: {exc}")
        except OSError as exc:
            fail(f"--episodes {run_dir}: cannot read: {exc.strerror or exc}")
        if not made:
            fail(f"--episodes {run_dir}: no case could be made (no lie, broken promise, message to the "
                 "judges or differing payoffs of one seed among its finished episodes)")  # fmt: skip
        cases += made
        sources.append(str(run_dir))
    if args.kinds and (unknown := sorted(set(args.kinds) - set(KINDS))):
        fail(f"--kinds: unknown {', '.join(unknown)}; known: {', '.join(KINDS)}")
    games = sorted({c.game for c in cases})
    if args.games and (unknown := sorted(set(args.games) - set(games))):
        fail(f"--games: no cases of {', '.join(unknown)}; the set has {', '.join(games)}")
    chosen = select(cases, games=args.games, kinds=args.kinds, n=args.n)
    if not chosen:
        fail("no cases left to ask after --games/--kinds")
    return chosen, sources


async def _bench(
    args: argparse.Namespace, cases: list[BenchCase], sources: list[str], console: Console
) -> int:
    from ..agents.factory import ClientPool
    from ..agents.profiles import ProfileError
    from .bench import report_renderables, run_bench
    from .panel import parse_judges

    pool = ClientPool()
    try:
        try:
            judges = parse_judges(args.judges, pool, endpoint_override(args))
        except ProfileError as exc:
            fail(str(exc))
        if not judges:
            fail("--judges: name at least one judge")
        calls = len(judges) * len(cases) * 2 * (args.resamples + 1)
        console.print(
            f"{len(cases)} cases × 2 orders × {args.resamples + 1} sample(s) × {len(judges)} judge(s): "
            f"up to {calls} calls (answers already in {args.out} are reused)",
            highlight=False,
        )
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, disable=args.quiet, transient=True,
        ) as progress:  # fmt: skip
            task = progress.add_task("judging", total=calls)
            report = await run_bench(
                judges,
                cases,
                args.out,
                resamples=args.resamples,
                concurrency=args.concurrency,
                sources=sources,
                on_answer=lambda a: progress.advance(task),
            )
    finally:
        await pool.aclose()
    for r in report_renderables(report):
        console.print(r)
    console.print(
        f"figures: {args.out / 'bench.json'}; answers: {args.out / 'answers.jsonl'}", highlight=False
    )
    if not any(s.answered for s in report.judges):
        statuses = sorted({k for s in report.judges for k in s.failed})
        fail(f"no judge answered any case ({', '.join(statuses) or 'no calls'}); check the endpoint", code=1)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        fail(f"--out {args.out}: exists and is not a folder")
    from ..local_model import LocalModelMissing

    cases, sources = _cases(args)
    # Piped into a file or a pager: wide tables rather than rich's 80-column default (as `report`).
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(width=150 if wide else None)
    try:
        return asyncio.run(_bench(args, cases, sources, console))
    except LocalModelMissing as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted; rerun the same command to finish (answers so far are kept).[/]")
        return 130


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    run(main)
