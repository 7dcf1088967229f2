"""`python -m rsi_env.games {list,schema,validate,generate}`: the game catalogue from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .catalog import game_files, load_game
from .cli import run
from .spec import SpecError, spec_json_schema
from .spec_guard import load_untrusted_spec
from .untrusted import printable

GENERATE_CALL_TIMEOUT_S = 900.0  # a whole spec is a long reply


def cmd_list(args: argparse.Namespace) -> int:
    for game_id, path in game_files().items():
        try:
            spec = load_game(path)
        except SpecError as exc:
            print(f"{game_id}\t(invalid: {exc.problems[0]})")
            continue
        players = f"{spec.players.min}" + (
            f"-{spec.players.max}" if spec.players.max != spec.players.min else ""
        )
        options = ", ".join(f"{k}={v}" for k, v in spec.option_values().items())
        extra = f"\toptions: {options}" if options else ""
        print(f"{game_id}\t{spec.family}\t{players} players\t{spec.summary or spec.name}{extra}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(spec_json_schema(), indent=2 if args.pretty else None))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 when every file is a valid spec, else 2 (bad input), one message per bad file."""
    failed = 0
    for f in args.files:
        try:  # in a child process under CPU and memory limits: the file is untrusted
            spec = load_untrusted_spec(f, dry_run=not args.no_dry_run)
        except SpecError as exc:
            failed += 1
            print(printable(str(exc)), file=sys.stderr)  # the path may hold escape codes too
            continue
        print(f"{f}: ok ({spec.id}, {len(spec.actions)} actions, {len(spec.phases)} phases)")
    return 2 if failed else 0


def cmd_generate(args: argparse.Namespace) -> int:
    """LLM-generated games; the machinery is in `rsi_env.generate` (imported here: it is heavy)."""
    import asyncio
    import datetime as dt
    import secrets

    from rich.console import Console
    from rich.markup import escape

    from .agents.factory import ClientPool
    from .agents.profiles import ProfileError, resolve_profile
    from .cli import endpoint_override, fail, ray_options
    from .generate.generator import GenerationConfig
    from .generate.pipeline import RunConfig, run_generation
    from .local_model import DEFAULT_N_CTX, LocalModelError
    from .referees.meta import reliability_table
    from .referees.panel import parse_judges
    from .referees.rubric import RubricError, load_rubric

    console = Console(highlight=False, soft_wrap=True)
    override = endpoint_override(args)
    try:
        profile = resolve_profile(args.profile, override, needed_by="the generator (--profile)")
    except ProfileError as exc:
        fail(str(exc))
    local = profile.backend == "local"
    # A whole spec is a long reply: the profile's per-call timeout (sized for one move) is too short.
    # No transport retries for the embedded model: its server keeps working on a request the client
    # gave up on, so a retry only queues behind it.
    profile = profile.model_copy(
        update={
            "timeout_s": args.call_timeout or GENERATE_CALL_TIMEOUT_S,
            "max_retries": 0 if local else min(profile.max_retries, 1),
        }
    )
    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    config = RunConfig(
        n=args.n,
        seed=seed,
        theme=args.theme,
        out_dir=args.out,
        log_path=args.log or Path("runs/generate") / f"{stamp}-s{seed}.jsonl",
        profile=profile.name,
        generation=GenerationConfig(
            # A spec is 2-5k tokens as YAML, more as JSON: a strong model needs room to finish one.
            max_tokens=args.max_tokens or (1500 if local else 8000),
            temperature=args.temperature,
            context_tokens=args.context_tokens or (DEFAULT_N_CTX if local else 32768),
            schema_variant=args.schema if args.schema != "auto" else ("json" if local else "full"),
            repair_rounds=0 if args.no_repair else 1,
        ),
        near_duplicate=args.near_duplicate,
        ray=ray_options(args)["ray"],
        min_quality=args.min_quality,
    )
    judges_arg = args.judges if args.judges is not None else f"{args.profile}@0.2,{args.profile}@1.0"

    async def go():  # type: ignore[no-untyped-def]
        pool = ClientPool()
        try:
            judges = parse_judges(judges_arg, pool, override) if judges_arg else []
            meta = parse_judges(args.meta_judge, pool, override)[0] if args.meta_judge else None
            rubric = load_rubric(args.rubric) if judges else None
            return await run_generation(
                config,
                pool.client(profile),
                judges,
                rubric,
                meta,
                echo=lambda line: console.print(line, markup=False),
            )
        finally:
            await pool.aclose()

    g = config.generation
    console.print(
        f"Generating {args.n} game(s) with profile `{profile.name}` "
        + ("(embedded model)" if local else f"({profile.model or 'default model'} at {profile.base_url})")
        + f"; seed {seed}, max_tokens {g.max_tokens}, "
        f"context {g.context_tokens}, schema {g.schema_variant}; log: {config.log_path}",
        markup=False,
    )
    try:
        report = asyncio.run(go())
    except (ProfileError, RubricError, LocalModelError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        console.print(f"[yellow]Interrupted; attempts so far are in {escape(str(config.log_path))}[/]")
        return 130
    console.print(f"\nRates: {report.rate_line()}", markup=False)
    if report.why_not:
        console.print("Why not: " + ", ".join(f"{k} {v}" for k, v in sorted(report.why_not.items())))
    console.print("Diversity:")
    for d in report.diversity:
        console.print(f"  {d.line()}", markup=False)
    if report.meta is not None and report.meta.judges:
        console.print(reliability_table(report.meta))
    console.print(f"Attempt log: {config.log_path}", markup=False)
    if report.rates["accepted"] and not report.on_search_path:
        out = escape(str(args.out))
        console.print(
            f"[yellow]{out} is not on the game search path: set RSI_ENV_GAMES={out} "
            "to play the accepted games with --game <id>.[/]"
        )
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog or "python -m rsi_env.games", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="one game per line: id, family, players, summary").set_defaults(fn=cmd_list)
    p = sub.add_parser("schema", help="print the GameSpec JSON Schema")
    p.add_argument("--pretty", action="store_true")
    p.set_defaults(fn=cmd_schema)
    p = sub.add_parser("validate", help="check spec files: schema, expressions, names, reachability, dry run")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--no-dry-run", action="store_true", help="skip the random-play dry run")
    p.set_defaults(fn=cmd_validate)
    _generate_parser(sub)
    return ap


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    from .catalog import content_dir
    from .cli import add_endpoint_args, add_ray_args, positive_int, seconds, temperature

    p = sub.add_parser(
        "generate",
        help="LLM-generated games: generate, validate (+1 repair), play-test, rank, check diversity, accept",
    )
    p.add_argument("--n", type=positive_int, default=3, help="attempts (default 3)")
    p.add_argument("--theme", help="the theme of every attempt (default: sampled from a varied list)")
    p.add_argument("--profile", default="local", help="agent profile of the generating model (default local)")
    p.add_argument(
        "--out", type=Path, default=content_dir("games") / "generated", help="where accepted games go"
    )
    p.add_argument("--log", type=Path, help="attempt log (JSONL; default runs/generate/<time>-s<seed>.jsonl)")
    p.add_argument(
        "--judges",
        help="PROFILE[@TEMP][#SEED],… ranking the games ('' for none; default PROFILE@0.2,PROFILE@1.0)",
    )
    p.add_argument("--meta-judge", default="", help="LLM that ranks the judges' rankings (default none)")
    p.add_argument("--rubric", default="game_quality")
    p.add_argument("--seed", type=int, help="seeds themes and examples (default: random, printed)")
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        help="reply budget per call (default 1500 embedded, 8000 otherwise)",
    )
    p.add_argument("--temperature", type=temperature, default=0.8)
    p.add_argument(
        "--context-tokens", type=positive_int, help="model context (default 8192 local, else 32768)"
    )
    p.add_argument(
        "--schema",
        choices=["auto", "full", "compact", "json"],
        default="auto",
        help="structured output: the full spec schema, its compact grammar-friendly form, or JSON mode "
        "with the schema in the prompt (auto: json for the embedded model, full otherwise)",
    )
    # The old name of --call-timeout here, kept working.
    p.add_argument("--timeout", dest="call_timeout", type=seconds, help=argparse.SUPPRESS)
    p.add_argument("--no-repair", action="store_true", help="no repair round after a failed validation")
    p.add_argument(
        "--min-quality", type=float, default=0.0, help="judges' quality in [0,1] needed (default off)"
    )
    p.add_argument("--near-duplicate", type=float, default=0.7, help="TF-IDF cosine that counts as a copy")
    add_endpoint_args(p, call_timeout_default=f"{GENERATE_CALL_TIMEOUT_S:g} for the generator")
    add_ray_args(p, workers=False)
    p.set_defaults(fn=cmd_generate)


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    run(main)
