"""`python -m rsi_env.games {list,schema,validate,generate}`: the game catalogue from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .catalog import game_files, load_game
from .spec import SpecError, read_spec_file, spec_json_schema
from .spec_check import check_spec


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
        print(f"{game_id}\t{spec.family}\t{players} players\t{spec.summary or spec.name}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(spec_json_schema(), indent=2 if args.pretty else None))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for f in args.files:
        try:
            spec = read_spec_file(f)
            check_spec(spec, str(f), dry_run=not args.no_dry_run)
        except SpecError as exc:
            failed += 1
            print(str(exc), file=sys.stderr)
            continue
        print(f"{f}: ok ({spec.id}, {len(spec.actions)} actions, {len(spec.phases)} phases)")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rsi_env.games", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="one game per line: id, family, players, summary").set_defaults(fn=cmd_list)
    p = sub.add_parser("schema", help="print the GameSpec JSON Schema")
    p.add_argument("--pretty", action="store_true")
    p.set_defaults(fn=cmd_schema)
    p = sub.add_parser("validate", help="check spec files: schema, expressions, names, reachability, dry run")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--no-dry-run", action="store_true", help="skip the random-play dry run")
    p.set_defaults(fn=cmd_validate)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
