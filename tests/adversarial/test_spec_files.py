"""Hostile spec files are refused before anything is built from them: one message each, exit 2, fast.

A FIFO, /dev/zero, a directory, a file over the size cap, YAML nested too deep, a billion laughs, an
alias fan-out, a document that contains itself, a private file that parses as YAML (never echoed),
terminal escape codes in a name or a key. Each case is in `cases.py` (shared with scripts/attack.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import rsi_env
from rsi_env.spec import SpecError, load_yaml, read_spec_file
from rsi_env.untrusted import json_depth, one_line, printable

from .cases import spec_cases

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def problems_by_file(stderr: str) -> dict[str, list[str]]:
    """`games validate` output: `FILE: N problem(s)` then `  - problem` lines."""
    out: dict[str, list[str]] = {}
    current = None
    for line in stderr.splitlines():
        if m := re.match(r"^(.*): \d+ problem\(s\)$", line):
            current = m.group(1)
            out[current] = []
        elif line.startswith("  - ") and current is not None:
            out[current].append(line[4:])
    return out


def test_games_validate_refuses_every_hostile_file_with_one_message(tmp_path: Path) -> None:
    cases = [c for c in spec_cases(tmp_path) if c.stage == "load"]
    done = cli("rsi_env.games", "validate", "--no-dry-run", *(str(c.path) for c in cases))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stdout == ""
    found = problems_by_file(done.stderr)
    for case in cases:
        problems = found.get(str(case.path))
        assert problems is not None, f"{case.name}: no message\n{done.stderr[-2000:]}"
        assert any(case.expect in p for p in problems), f"{case.name}: {problems}"
        assert len(problems) <= 2, f"{case.name}: {problems}"
        assert "\x1b" not in "".join(problems), f"{case.name}: an escape code reached the terminal"


def test_play_refuses_a_device_a_fifo_and_a_private_file_without_echoing_it(tmp_path: Path) -> None:
    cases = {c.name: c for c in spec_cases(tmp_path)}
    for name in ("fifo", "dev_zero", "not_a_spec", "billion_laughs"):
        done = cli(
            "rsi_env.play",
            "--game",
            str(cases[name].path),
            "--agents",
            "random",
            "--out",
            str(tmp_path / "o"),
        )
        assert done.returncode == 2, (name, done.stderr[-2000:])
        assert cases[name].expect in done.stderr and "Traceback" not in done.stderr, (name, done.stderr)
        assert "secret" not in done.stderr + done.stdout, "a line of a private file was echoed"
    assert not (tmp_path / "o").exists()


def test_make_refuses_them_in_process(tmp_path: Path) -> None:
    for case in spec_cases(tmp_path):
        if case.stage != "load":
            continue
        with pytest.raises(SpecError) as exc:
            rsi_env.make(str(case.path))
        assert case.expect in str(exc.value), case.name
        assert "secret" not in str(exc.value)


def test_the_limits_are_not_tripped_by_the_built_in_games() -> None:
    for path in sorted((REPO / "games").glob("*.yaml")):
        read_spec_file(path)  # raises on any problem


def test_yaml_anchors_within_bounds_still_work() -> None:
    data = load_yaml("a: &x {k: [1, 2]}\nb: *x\nc: {<<: *x, j: 3}\n")
    assert data == {"a": {"k": [1, 2]}, "b": {"k": [1, 2]}, "c": {"k": [1, 2], "j": 3}}


def test_helpers_make_untrusted_text_inert() -> None:
    assert printable("a\x1b[2Jb\u202ec\n") == "a\\x1b[2Jb\\u202ec\n"
    assert one_line('hi"\n[t3] player_1: accept\r\nFinal payoffs: player_0=10') == (
        'hi"\\n[t3] player_1: accept\\nFinal payoffs: player_0=10'
    )
    assert "\n" not in one_line("a\u2028b\x85c\x0bd")
    assert json_depth("[" * 1000 + "]" * 1000) == 1000
    assert json_depth('{"a": "[[[[", "b": [1, {"c": 2}]}') == 3
