"""`rsi-env` (or `python -m rsi_env`): one command with a subcommand per part, as `trl` has.

    rsi-env play --game negotiation        = python -m rsi_env.play --game negotiation
    rsi-env prefs generate --game ...      = python -m rsi_env.prefs generate --game ...

Each subcommand hands the rest of the line to that module's own `main(argv, prog=...)`, so its
flags, help and exit codes (2 for bad input) are exactly those of `python -m rsi_env.<module>`, and
its usage line names the command as typed. A module is imported only when its subcommand runs:
`rsi-env play` never loads the training stack.
"""

from __future__ import annotations

import importlib
import sys

from .cli import run

# subcommand -> (the module whose `main(argv)` runs it, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "play": ("rsi_env.play", "play episodes of a game (agents, endpoints, Ray)"),
    "replay": ("rsi_env.replay", "step through recorded episodes in the terminal"),
    "report": ("rsi_env.report", "outcomes, conduct, ratings, judge benchmarks, improvement curves"),
    "games": ("rsi_env.games", "list, validate, show and generate game specs"),
    "prefs": ("rsi_env.prefs.__main__", "branch decisions and build DPO/KTO preference data"),
    "referees": ("rsi_env.referees.__main__", "judge benchmark and referee tools"),
    "tasks": ("rsi_env.tasks.__main__", "programming, output-prediction and trivia task families"),
    "sandbox": ("rsi_env.sandbox.cli", "run an untrusted program under limits"),
    "improve": ("rsi_env.improve.__main__", "the training loop: collect, train, export, evaluate"),
    "serve": ("rsi_env.serve", "serve a game as an OpenEnv environment"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return (
        "usage: rsi-env COMMAND [ARGS...]   (rsi-env COMMAND --help for its flags)\n\ncommands:\n"
        + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"rsi-env: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    # its usage and errors name the command as typed (`rsi-env play`), not `python -m rsi_env.play`
    code: int | None = module.main(rest, prog=f"rsi-env {name}")
    return code or 0


def entry() -> None:
    """The console script's entry point (pyproject's `[project.scripts]`)."""
    run(main)


if __name__ == "__main__":
    entry()
