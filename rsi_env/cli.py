"""Command-line pieces every model-calling command shares: one endpoint for the whole run."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:  # profiles load pydantic, yaml and the spec model: only model-calling commands need them
    from .agents.profiles import EndpointOverride


def add_endpoint_args(ap: argparse.ArgumentParser, *, call_timeout_default: str = "the profile's") -> None:
    """The options every model-calling command takes, so one endpoint serves a whole run.

    `call_timeout_default` describes, for --help, the timeout used without --call-timeout."""
    g = ap.add_argument_group("model endpoint (applies to every LLM profile of the run)")
    g.add_argument(
        "--base-url", type=http_url, help="any OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"
    )
    g.add_argument("--model", help="model name at that endpoint (needs --base-url for `local` profiles)")
    g.add_argument(
        "--api-key-env",
        help="environment variable holding the API key (default: the profile's, OPENAI_API_KEY; "
        "servers on localhost need none)",
    )
    g.add_argument(
        "--call-timeout",
        type=seconds,
        metavar="SECONDS",
        help=f"limit on each model call, from when the server takes it (default {call_timeout_default})",
    )


def add_panel_args(ap: argparse.ArgumentParser, *, rubric_default: str, rubric_help: str) -> None:
    """The options every command that makes preference data takes: its judge panel, the meta-judge and
    the sets it reviews, and the rubric they judge with."""
    g = ap.add_argument_group("judges")
    g.add_argument("--judges", default="local@0.2,local@1.0", help="PROFILE[@TEMP][#SEED],… ('' for none)")
    g.add_argument(
        "--meta-judge", default="local@0.2#99", help="LLM that ranks the judges' rankings ('' for none)"
    )
    g.add_argument(
        "--meta-sets",
        type=positive_int,
        default=3,
        help="how many sets the meta-judge reviews: the first N with two judges' rankings to compare",
    )
    g.add_argument("--rubric", default=rubric_default, help=rubric_help)


def add_ray_args(ap: argparse.ArgumentParser, *, workers: bool = True) -> None:
    """`--ray [ADDRESS]` and (`workers`) `--workers N`: work on Ray (see `runner.ray_backend`)."""
    g = ap.add_argument_group("scale-out on Ray (pip install 'rsi_env[ray]')")
    g.add_argument(
        "--ray", nargs="?", const="auto", metavar="ADDRESS",
        help="play on Ray actors: `--ray` alone joins the cluster at RAY_ADDRESS or starts Ray on this "
        "machine; or a cluster's address (host:6379, ray://host:10001)",
    )  # fmt: skip
    if not workers:
        return
    g.add_argument(
        "--workers", type=positive_int, metavar="N",
        help="Ray actors, each with its share of --concurrency (needs --ray; default: one per CPU of "
        "the cluster)",
    )  # fmt: skip


def add_option_args(ap: argparse.ArgumentParser) -> None:
    """`--option NAME=VALUE` (repeatable): the game's options (`python -m rsi_env.games list` names them)."""
    ap.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE", type=_option_pair,
        help="a game option, e.g. --option rounds=3 (repeat for more); recorded with each episode",
    )  # fmt: skip


def _option_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def game_options(args: argparse.Namespace) -> dict[str, str]:
    """The `--option` pairs as a dict (the game converts and checks each value)."""
    return dict(getattr(args, "option", None) or [])


def ray_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Runner's `ray` and `workers` from `add_ray_args`'s options (one message for a misuse)."""
    if getattr(args, "workers", None) and args.ray is None:
        fail(f"--workers {args.workers}: workers are Ray actors; add --ray (one process plays without it)")
    if args.ray is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            fail("--ray needs Ray: pip install 'rsi_env[ray]'")
    return {"ray": args.ray, "workers": getattr(args, "workers", None)}


def endpoint_override(args: argparse.Namespace) -> EndpointOverride:
    from .agents.profiles import EndpointOverride

    return EndpointOverride(
        base_url=args.base_url, model=args.model, api_key_env=args.api_key_env, timeout_s=args.call_timeout
    )


def fail(message: str, code: int = 2) -> NoReturn:
    """One clear message on stderr, no traceback. The message is shown as text: a path or a spec key
    in it may hold `[...]`, which is not rich markup here, or terminal escape codes, shown escaped."""
    from .untrusted import printable  # here: it loads yaml, which this module's importers may not need

    Console(stderr=True, soft_wrap=True).print(
        Text.assemble(("error:", "bold red"), " ", printable(message)), highlight=False
    )
    sys.exit(code)


def number_arg(
    kind: Callable[[str], float],
    noun: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Callable[[str], Any]:
    """An argparse type: `kind(text)` within [low, high] (`low_open`: above low), else one clear message."""
    if low is not None and high is not None:
        bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low is not None:
        bounds = f"{'>' if low_open else '>='} {low:g}"
    else:
        bounds = f"<= {high:g}" if high is not None else ""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        too_low = low is not None and (v <= low if low_open else v < low)
        if v != v or too_low or (high is not None and v > high):  # v != v: NaN
            raise argparse.ArgumentTypeError(f"expected {noun} {bounds}, got {text}")
        return v

    return parse


positive_int = number_arg(int, "a whole number", low=1)
# A duration above 0, at most an hour: the cap profiles and sandbox limits share (and milliseconds
# typed as seconds are caught).
seconds = number_arg(float, "seconds", low=0, low_open=True, high=3600)
temperature = number_arg(float, "a temperature", low=0, high=2)  # the OpenAI API's range


def http_url(text: str) -> str:
    from .llm import check_http_url  # the profiles' own check (rsi_env.llm's light part: no openai)

    try:
        return check_http_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(main: Callable[[], int | None]) -> NoReturn:
    """Exit with `main()`'s code; output piped into a reader that stops early (`| head`) ends the
    command quietly, as it does for any Unix tool, instead of with a traceback."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the same error again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except OSError as exc:
        # A full disk, a read-only or missing folder, an output path that is a file: what was written
        # before stays (records are appended whole); the message says which file and why.
        fail(os_error_message(exc))
    sys.exit(code)


def os_error_message(exc: OSError) -> str:
    """`PATH: reason` for an OSError, in one line."""
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileExistsError) and exc.filename is not None and os.path.isfile(exc.filename):
        reason = "a file is in the way (a folder was expected)"
    return f"{where}: {reason}" if where else f"cannot write or read a file: {reason}"
