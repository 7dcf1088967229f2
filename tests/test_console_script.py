"""`rsi-env COMMAND ...` (also `python -m rsi_env`) runs each module's own command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rsi_env.__main__ import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_subcommand_is_its_module_s_command_line() -> None:
    via_script, direct = _run("-m", "rsi_env", "games", "list"), _run("-m", "rsi_env.games", "list")
    assert via_script.returncode == direct.returncode == 0, via_script.stderr
    assert via_script.stdout == direct.stdout and "negotiation" in direct.stdout


def test_bad_input_keeps_exit_2_through_the_dispatcher() -> None:
    done = _run("-m", "rsi_env", "play", "--game", "no_such_game", "--agents", "random")
    assert done.returncode == 2 and "no_such_game" in done.stderr
    unknown = _run("-m", "rsi_env", "plya")
    assert unknown.returncode == 2 and "unknown command 'plya'" in unknown.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name: str) -> None:
    """Each named module exists and parses its own flags (`--help` exits 0 with a usage line)."""
    done = _run("-m", "rsi_env", name, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: rsi-env {name}")


def test_usage_names_the_command_as_typed() -> None:
    """The same parser says `rsi-env prefs generate` through the dispatcher and `python -m ...` alone."""
    via_script = _run("-m", "rsi_env", "prefs", "generate", "--game")
    direct = _run("-m", "rsi_env.prefs", "generate", "--game")
    assert via_script.returncode == direct.returncode == 2
    assert "usage: rsi-env prefs generate" in via_script.stderr
    assert "usage: python -m rsi_env.prefs generate" in direct.stderr
