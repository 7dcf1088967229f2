"""`python -m rsi_env.tasks [--import MODULE] FAMILY`: preference data from open-ended tasks.

programming: N challenges, V validators and K solutions per challenge; the sandbox runs every validator on
             every solution and on deliberately broken ones; the panel ranks challenges, validators and
             solutions.
predict:     N programs with a question; the determinism filter (static + sandbox runs); K predictions per
             kept program, scored by normalised exact match; the panel ranks the programs.
trivia:      N random encyclopedia pages, Q questions per page, K answers per grounded question (without
             the page); the panel (with the page) ranks questions and scores answers.

Writes to --out: run.jsonl (every generated item, sandbox run, ranking and why items were dropped),
sets.jsonl, prefs.jsonl (DPO, every level: see the `level` column), kto.jsonl, judges.json (the
meta-referee's report) and bank.jsonl (tasks for the Gymnasium envs in rsi_env.tasks.envs).

--import MODULE (before the family; repeatable) imports a module that registers more task families.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..agents.factory import ClientPool
from ..agents.profiles import AgentProfile, ProfileError, resolve_profile
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
    seconds,
)
from ..local_model import LocalModelError
from ..prefs.candidates import CandidateSet
from ..prefs.ranking import BuildResult, build
from ..referees.meta import reliability_table
from ..referees.panel import parse_judges
from ..referees.rubric import Rubric, RubricError, load_rubric
from ..sandbox import SandboxError, SandboxLimits, isolation_level
from .common import RUN_LOG, RunLog, TaskContext, all_rows, check_rubric, meta_scores, write_outputs
from .registry import Option, TaskError, TaskFamily, families, get_family, import_families


def _run_options(fam: TaskFamily, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of the family's `run`: its own options, and the sandbox's limits."""
    options = {o.name: getattr(args, o.name) for o in fam.options}
    if fam.sandbox:
        options["limits"] = SandboxLimits(timeout_s=args.sandbox_timeout, memory_mb=256)
    return options


async def _generate(
    args: argparse.Namespace, log: RunLog, profile: AgentProfile, rubric: Rubric | None
) -> tuple[list[CandidateSet], list[Any], dict | None]:
    pool = ClientPool()
    override = endpoint_override(args)
    judges = parse_judges(args.judges, pool, override) if args.judges else []
    meta_judge = parse_judges(args.meta_judge, pool, override)[0] if args.meta_judge else None
    ctx = TaskContext(
        client=pool.client(profile),
        sampling=profile.sampling,
        judges=list(judges),
        meta_judge=meta_judge,
        meta_sets=args.meta_sets,
        log=log,
        seed=args.seed,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        rubric=rubric,
        ray=ray_options(args)["ray"] if hasattr(args, "ray") else None,
    )
    fam = get_family(args.family)
    try:
        sets, bank = await fam.run(ctx, **_run_options(fam, args))
        scores = await meta_scores(ctx, sets)
    finally:
        await pool.aclose()
    return sets, list(bank), scores


def summary_table(family: str, log: RunLog, result: BuildResult) -> Table:
    """Per level: items kept, dropped (by reason) and rows made."""
    t = Table(title=f"{family}: items and preference rows")
    for col in ("level", "kept", "dropped (why)", "rows"):
        t.add_column(col)
    rows_by_level: dict[str, int] = {}
    for r in all_rows(result):
        rows_by_level[r.level] = rows_by_level.get(r.level, 0) + 1
    outcomes = log.outcomes()
    for level in [*outcomes, *(lv for lv in rows_by_level if lv not in outcomes)]:
        counts: Counter[str] = outcomes.get(level, Counter())
        dropped = "; ".join(f"{n}× {why}" for why, n in counts.items() if why != "kept") or "—"
        t.add_row(level, str(counts.get("kept", 0)), dropped, str(rows_by_level.get(level, 0)))
    return t


def cmd_run(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or Console()
    out = Path(args.out or f"runs/tasks/{args.family}")
    try:  # before anything runs or is written: a bad profile, endpoint or API key is a one-line error
        profile = resolve_profile(
            args.profile, endpoint_override(args), needed_by="the generator (--profile)"
        )
    except ProfileError as exc:
        fail(str(exc))
    fam = get_family(args.family)
    rubric = None
    if args.rubric:  # the questions judges are asked, per level: from the rubric the run names
        try:
            rubric = load_rubric(args.rubric)
            check_rubric(rubric, fam.name, fam.levels)
        except RubricError as exc:
            fail(str(exc))
    problem = fam.check() if fam.check is not None else None
    if problem:
        fail(problem)
    isolation = None
    if fam.sandbox:
        try:
            isolation = isolation_level()
        except SandboxError as exc:
            fail(f"the sandbox cannot run programs here: {exc}")
    log = RunLog(out / RUN_LOG)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "fn"}
    log.write("start", family=args.family, options=options, isolation=isolation)
    t0 = time.monotonic()
    try:
        sets, bank, scores = asyncio.run(_generate(args, log, profile, rubric))
    except (ProfileError, LocalModelError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted; the run log so far is in[/] " + escape(str(out / RUN_LOG)))
        return 130
    result = build(sets, unleashed=args.unleashed, all_pairs=args.all_pairs, meta_scores=scores)
    written = write_outputs(out, sets, result, prefs_path=args.output, bank=bank)
    log.write("meta", report=result.meta, meta_scores=scores)
    log.write("summary", outcomes=log.outcomes(), duration_s=round(time.monotonic() - t0, 1), **written)
    if result.meta.judges:
        console.print(reliability_table(result.meta))
    console.print(summary_table(args.family, log, result))
    console.print(
        f"{result.sets} candidate sets, {result.sets_with_pairs} with a preference: "
        f"{written['rows']} DPO rows -> {written['prefs']}, "
        f"{written['kto_rows']} KTO rows -> {written['kto']}, "
        f"{written['bank']} tasks -> {out / 'bank.jsonl'}; log: {out / RUN_LOG}"
    )
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog or "python -m rsi_env.tasks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module that registers more task families (before FAMILY; repeatable)",
    )
    registered = families()
    sub = ap.add_subparsers(dest="family", required=True, metavar="{" + ",".join(registered) + "}")
    for name, fam in registered.items():
        p = sub.add_parser(name, help=fam.summary, description=fam.summary)
        for option in fam.options:
            p.add_argument(option.flag, dest=option.name, type=_arg_type(option), default=option.default,
                           help=f"{option.help} (default {option.default})")  # fmt: skip
        p.add_argument("--profile", default="local", help="agent profile that generates (agents/*.yaml)")
        add_panel_args(
            p,
            rubric_default=fam.rubric or "",
            rubric_help="rubric (id in referees/ or a YAML path) whose `ranking` block says what judges "
            f"are asked about each level's candidates (default {fam.rubric or 'none: the truth ranks'})",
        )
        p.add_argument("--out", type=Path, help=f"run directory (default runs/tasks/{name})")
        p.add_argument(
            "-o", "--output", type=Path, help="DPO rows (default OUT/prefs.jsonl; KTO rows beside)"
        )
        p.add_argument("--unleashed", action="store_true", help="prefix system prompts with `UNLEASHED: `")
        p.add_argument("--all-pairs", action="store_true", help="every ordered pair, not just best vs worst")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--max-tokens", type=positive_int, help="cap on every generation call (e.g. 150 locally)"
        )
        p.add_argument("--concurrency", type=positive_int, default=4, help="model calls in flight")
        p.add_argument(
            "--sandbox-timeout",
            type=seconds,
            default=5.0,
            metavar="SECONDS",
            help="wall-clock limit per program run in the sandbox (default 5, at most 600)",
        )
        # Renamed: it was the sandbox's limit here but the model call's in `games generate`.
        p.add_argument("--timeout", type=float, help=argparse.SUPPRESS)
        add_endpoint_args(p)
        if fam.sandbox:  # its programs can run as Ray tasks; the model calls stay here
            add_ray_args(p, workers=False)
        p.set_defaults(fn=cmd_run)
    return ap


def _arg_type(option: Option) -> Any:
    """The argparse type of an option: a number at or above its minimum gets one clear message."""
    if option.minimum is not None and option.type in (int, float):
        if (option.type, option.minimum) == (int, 1):
            return positive_int
        return number_arg(
            option.type, "a whole number" if option.type is int else "a number", low=option.minimum
        )
    return option.type


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Families from --import must be registered before the parser lists them.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--import", dest="imports", action="append", default=[])
    try:
        import_families(pre.parse_known_args(argv)[0].imports)
    except TaskError as exc:
        fail(str(exc))
    args = build_parser(prog).parse_args(argv)
    if args.timeout is not None:
        fail(
            "--timeout was split in two: --sandbox-timeout for each program run, "
            "--call-timeout for each model call"
        )
    if args.sandbox_timeout > 600:
        fail("--sandbox-timeout: expected seconds in (0, 600]")
    return int(args.fn(args))


if __name__ == "__main__":
    run(main)
