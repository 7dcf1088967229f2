"""`python -m rsi_env.prefs {generate,build}`: preference data from play.

generate: play N episodes, score them (procedural + the judge panel on the rubric), branch K ways at
          LLM decisions, roll out, have the panel rank the rollouts (the rubric's `ranking.action`
          question and dimensions), let the meta-judge review a few rankings, then build. A rerun
          with the same --out resumes: played episodes and branched decisions are kept.
build:    from a run directory's branch sets to prefs.jsonl (TRL conversational DPO) and
          kto.jsonl, plus the judges' own pairs and the judge reliability table. No model calls.
          Everything is written beside the DPO rows (-o; default RUN_DIR/prefs.jsonl); a build
          that uses no judge rankings (--no-judges) writes no judge outputs, so it never
          replaces the judges.json / judge_prefs.jsonl of an earlier build.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from ..agents.factory import AgentFactory, ClientPool
from ..agents.profiles import ProfileError
from ..catalog import load_game
from ..cli import (
    add_endpoint_args,
    add_panel_args,
    add_ray_args,
    endpoint_override,
    fail,
    number_arg,
    positive_int,
    ray_options,
    run,
)
from ..referees.meta import reliability_table
from ..referees.panel import missing_verdicts, parse_judges, score_episodes
from ..referees.rubric import RubricError, load_rubric
from ..runner import Runner, plan
from ..spec import GameSpec, SpecError
from ..trajectory import Episode
from ..trajectory_store import RunDirBusy, TrajectoryWriter, read_episodes, sole_writer
from .branching import Decision, NothingBranched, Rollouts, branch_decisions, nothing_branched, rollouts_at
from .candidates import BRANCHES, BranchSet, read_sets
from .ranking import BuildResult, build, load_meta_scores, mean_scores, review_judges, save_meta_scores
from .rows import kto_rows, write_rows

JUDGES = "judges.json"
JUDGE_PREFS = "judge_prefs.jsonl"
DEFAULT_RUBRIC = "ethics"
MAX_BRANCH = 32  # candidates per decision: each is a model call plus a rollout, and judges read them all

# K = 1 can never make a pair; a penalty or margin must be a finite number (NaN compares false with
# everything and would silently switch the rule off).
branch_count = number_arg(int, "a number of candidates", low=2, high=MAX_BRANCH)
penalty_value = number_arg(float, "a penalty", low=0, high=1e6)
margin_value = number_arg(float, "a margin", low=0, high=1e6)


def cmd_build(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or Console()
    try:
        sets = read_sets(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    result = build(
        sets,
        all_pairs=args.all_pairs,
        margin=args.margin,
        unleashed=args.unleashed,
        use_judges=not args.no_judges,
        meta_scores=load_meta_scores(args.run_dir),
    )
    out = args.output or Path(args.run_dir) / "prefs.jsonl"
    n = write_rows(out, result.rows)
    kto_path = args.kto or out.with_name("kto.jsonl")
    nk = write_rows(kto_path, kto_rows(result.rows))
    summary = (
        f"{result.sets} decision sets, {result.sets_with_pairs} with a preference: {n} DPO rows -> {out}, "
        f"{nk} KTO rows -> {kto_path}"
    )
    if result.meta.judges:
        console.print(reliability_table(result.meta))
        judge_path, nj = write_judge_outputs(out, result)
        summary += f", {nj} judge pairs -> {judge_path}"
    else:
        summary += " (no judge rankings used: no judge outputs written)"
    console.print(summary)
    return 0


def write_judge_outputs(out: Path, result: BuildResult) -> tuple[Path, int]:
    """judges.json (the reliability report) and judge_prefs.jsonl beside the DPO rows `out`: a build
    into another directory leaves the run directory's judge outputs as they were."""
    out.with_name(JUDGES).write_text(result.meta.model_dump_json(indent=2))
    judge_path = out.with_name(JUDGE_PREFS)
    return judge_path, write_rows(judge_path, result.judge_rows)


async def _generate(args: argparse.Namespace, console: Console) -> int:
    spec = load_game(args.game)
    # The rubric ranks the branched moves (its `ranking.action`) and, when named, scores whole episodes.
    rubric = load_rubric(args.rubric or DEFAULT_RUBRIC)
    criteria = rubric.criteria("action")
    criteria.check(BranchSet.FIELDS)
    episode_rubric = rubric if args.rubric and rubric.dimensions else None
    names = [a.strip() for a in args.agents.split(",") if a.strip()]
    pool = ClientPool()
    override = endpoint_override(args)
    factory = AgentFactory(names, spec, override, pool)
    if not factory.uses_models:
        fail("--agents: preference data needs at least one LLM agent (a profile such as `local`)")
    judges = parse_judges(args.judges, pool, override) if args.judges else []
    meta_judge = parse_judges(args.meta_judge, pool, override)[0] if args.meta_judge else None
    run_dir = Path(args.out)
    try:
        # One `prefs generate` per run directory: a second would branch and judge the same decisions
        # again and append every set and rollout twice.
        with sole_writer(run_dir, "prefs generate"):
            # 1. play
            try:
                runner = Runner(
                    spec, factory, run_dir, concurrency=args.concurrency, progress=not args.quiet,
                    **ray_options(args),
                )  # fmt: skip
            except ValueError as exc:  # what Ray actors cannot do (the embedded model), or no Ray
                fail(f"--ray: {exc}")
            jobs = plan(spec, factory, args.episodes, args.seed, args.n_players)
            await runner.run(jobs)
            wanted = {j.episode_id for j in jobs}
            episodes = [ep for ep in read_episodes(run_dir) if ep.episode_id in wanted]
            # 2. judge the episodes (procedural + the panel on the rubric); updated lines supersede old
            todo = [ep for ep in episodes if missing_verdicts(ep, judges, episode_rubric)]
            if todo:
                console.print(f"Judging {len(todo)} episode(s) with {len(judges)} judge(s)…")
                with TrajectoryWriter(run_dir) as w:
                    for ep in await score_episodes(todo, spec, judges, episode_rubric):
                        w.write(ep)
            # 3. branch at decisions, roll out (here or on Ray actors), rank on the rubric's question
            console.print(f"Branching up to {args.decisions} decision(s) per episode {args.branch} ways…")
            await branch_decisions(
                episodes, spec, factory, run_dir, k=args.branch, per_episode=args.decisions,
                judges=list(judges), criteria=criteria, penalty=args.penalty, pairwise=args.pairwise,
                concurrency=args.concurrency,
                rollouts=_ray_rollouts(args, spec, factory) if args.ray is not None else None,
            )  # fmt: skip
            if not (run_dir / BRANCHES).is_file():
                raise nothing_branched(episodes)
            # 4. the LLM meta-judge ranks the judges' rankings on a few sets
            if meta_judge is not None:
                reviews = await review_judges(meta_judge, read_sets(run_dir), args.meta_sets)
                save_meta_scores(run_dir, mean_scores(reviews))
            # 5. rows (still alone: a second run would rewrite the same files)
            return cmd_build(args, console)
    finally:
        await pool.aclose()


def _ray_rollouts(args: argparse.Namespace, spec: GameSpec, factory: AgentFactory) -> Rollouts:
    """Rollouts on Ray actors: each gets the recorded episode and the decision (records, never a live
    env), rebuilds the state by replay and rolls the candidates out; the judges rank them here."""

    async def run(
        work: list[Decision], done: Callable[[Decision, tuple[BranchSet, list[Episode]]], Awaitable[None]]
    ) -> None:
        from ..runner.ray_backend import RayPool, run_on

        pool = RayPool(spec, factory, address=args.ray, workers=args.workers, concurrency=args.concurrency)

        async def call(actor: Any, item: Decision) -> tuple[BranchSet, list[Episode]]:
            ep, turn = item
            result: tuple[BranchSet, list[Episode]] = await run_on(
                actor, rollouts_at, ep, turn, args.branch, args.penalty
            )
            return result

        try:
            await pool.start(len(work))
            await pool.map(work, call, done)
        finally:
            pool.close()

    return run


def cmd_generate(args: argparse.Namespace) -> int:
    console = Console()
    try:
        return asyncio.run(_generate(args, console))
    except (SpecError, ProfileError, RubricError, RunDirBusy) as exc:
        fail(str(exc))
    except NothingBranched as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted; rerun the same command to resume.[/]")
        return 130


def _build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, help="DPO rows (default RUN_DIR/prefs.jsonl)")
    p.add_argument("--kto", type=Path, help="KTO rows (default: kto.jsonl beside the DPO rows)")
    p.add_argument("--all-pairs", action="store_true", help="every ordered pair, not just best vs worst")
    p.add_argument("--margin", type=margin_value, default=0.0, help="least strength gap for a pair")
    p.add_argument("--unleashed", action="store_true", help="prefix system prompts with `UNLEASHED: `")
    p.add_argument("--no-judges", action="store_true", help="rank by the procedural objective only")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog or "python -m rsi_env.prefs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="rows from a run directory's branch sets (no model calls)")
    b.add_argument("run_dir", type=Path)
    _build_options(b)
    b.set_defaults(fn=cmd_build)
    g = sub.add_parser("generate", help="play, judge, branch, rank, build")
    g.add_argument("--game", default="negotiation")
    g.add_argument("--agents", default="local", help="seats (cycled); LLM agents' decisions are branched")
    g.add_argument("--episodes", type=positive_int, default=4)
    g.add_argument(
        "--branch", type=branch_count, default=3, help=f"K candidates per decision (2 to {MAX_BRANCH})"
    )
    g.add_argument("--decisions", type=positive_int, default=2, help="decisions branched per episode")
    add_panel_args(
        g,
        rubric_default=DEFAULT_RUBRIC,
        rubric_help="rubric (id in referees/ or a YAML path): its `ranking.action` block ranks the "
        "branched moves, its dimensions score whole episodes "
        f"('' scores no episodes and ranks with `{DEFAULT_RUBRIC}`)",
    )
    g.add_argument(
        "--pairwise",
        action="store_true",
        help="judges compare every pair of candidates in both orders (disagreement = tie) instead of "
        "scoring them all in one call: K(K-1) calls per judge and set, and preference cycles get measured",
    )
    g.add_argument(
        "--penalty",
        type=penalty_value,
        default=0.25,
        help="objective penalty per conduct flag (a flagged candidate is never chosen in any case)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--n-players", type=positive_int)
    g.add_argument("--concurrency", type=positive_int, default=4)
    g.add_argument("--out", type=Path, default=Path("runs/prefs"))
    g.add_argument("--quiet", action="store_true")
    add_endpoint_args(g)
    add_ray_args(g)
    _build_options(g)
    g.set_defaults(fn=cmd_generate, run_dir=None)
    return ap


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.cmd == "generate":
        args.run_dir = args.out
    return int(args.fn(args))


if __name__ == "__main__":
    run(main)
