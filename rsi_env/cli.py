"""Command-line pieces every model-calling command shares: one endpoint for the whole run."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console

if TYPE_CHECKING:  # importing profiles loads openai (~2 s): only the commands that call models need it
    from .agents.profiles import EndpointOverride


def add_endpoint_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("model endpoint (applies to every LLM profile of the run)")
    g.add_argument("--base-url", help="any OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    g.add_argument("--model", help="model name at that endpoint")
    g.add_argument("--api-key-env", help="environment variable holding the API key (default OPENAI_API_KEY)")


def endpoint_override(args: argparse.Namespace) -> EndpointOverride:
    from .agents.profiles import EndpointOverride

    return EndpointOverride(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env)


def fail(message: str, code: int = 2) -> NoReturn:
    """One clear message on stderr, no traceback."""
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


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
    sys.exit(code)
