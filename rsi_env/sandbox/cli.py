"""`python -m rsi_env.sandbox FILE [--timeout S] [--memory MB]`: run one file, print one JSON object."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from .records import SandboxError, SandboxLimits
from .run import isolation_level, run_python


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m rsi_env.sandbox",
        description="Run a Python file in the sandbox and print one JSON object with the result.",
    )
    parser.add_argument("file", nargs="?", metavar="FILE", help="Python program to run")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wall-clock limit (s)")
    parser.add_argument("--memory", type=int, default=512, metavar="MB", help="memory limit (MiB)")
    parser.add_argument("--stdin", metavar="PATH", help="file to feed on standard input ('-' = ours)")
    parser.add_argument("--isolation", action="store_true", help="print the isolation level and exit")
    args = parser.parse_args(argv)
    if args.isolation:
        print(isolation_level().model_dump_json())
        return 0
    if args.file is None:
        parser.error("missing FILE (the Python program to run)")
    path = Path(args.file)
    if not path.is_file():
        parser.error(f"FILE not found or not a regular file: {args.file}")
    try:
        limits = SandboxLimits(timeout_s=args.timeout, memory_mb=args.memory)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'timeout' if e['loc'][0] == 'timeout_s' else 'memory'}: {e['msg']}" for e in exc.errors()
        )
        parser.error(problems)
    try:
        source = path.read_text(encoding="utf-8")
        stdin = ""
        if args.stdin == "-":
            stdin = sys.stdin.read()
        elif args.stdin:
            stdin = Path(args.stdin).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read input: {exc}")
    try:
        result = run_python(source, stdin=stdin, limits=limits)
    except SandboxError as exc:
        # Not the program's fault and not a result: say so instead of printing a made-up JSON object.
        print(f"sandbox error: {exc}", file=sys.stderr)
        return 1
    print(result.model_dump_json())
    return 0
