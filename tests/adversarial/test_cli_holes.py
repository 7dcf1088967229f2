"""Small holes, each one line and exit 2: rich markup in user text, OS errors on the output (a file in
the way, a full or read-only disk, a directory as `-o`), option values that cannot work."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsi_env.trajectory_store import read_episodes

from .cases import BASE_YAML

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def one_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2, no traceback, and an `error:` line naming `words`."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:") or ": error:" in ln]
    assert len(errors) == 1, done.stderr
    assert all(w in done.stderr for w in words), (words, done.stderr)


def test_rich_markup_in_a_game_name_a_spec_key_or_an_output_path_is_shown_as_text(tmp_path: Path) -> None:
    one_error(cli("rsi_env.play", "--game", "[/x]", "--agents", "random", cwd=tmp_path), "[/x]")
    spec = tmp_path / "markup.yaml"
    spec.write_text(BASE_YAML.format(id="markup", name="Markup") + "'[/bold]': 1\n")
    one_error(cli("rsi_env.play", "--game", str(spec), "--agents", "random"), "[/bold]", "unknown field")
    done = cli("rsi_env.play", "--agents", "random", "--quiet", "--out", str(tmp_path / "[/x]"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "[/x]" in done.stdout


def test_an_output_path_that_is_a_file_or_under_one_is_one_message(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    one_error(
        cli("rsi_env.play", "--agents", "random", "--quiet", "--out", str(afile)), "a file is in the way"
    )
    one_error(
        cli("rsi_env.play", "--agents", "random", "--quiet", "--out", str(afile / "run")), "Not a directory"
    )
    assert afile.read_text() == "not a folder"


def test_prefs_build_into_a_directory_is_one_message(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "branch_sets.jsonl").write_text("")
    (tmp_path / "out").mkdir()
    one_error(cli("rsi_env.prefs", "build", str(run), "-o", str(tmp_path / "out")), "Is a directory")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--branch", "1"),
        ("--branch", "100000"),
        ("--penalty", "nan"),
        ("--penalty", "inf"),
        ("--margin", "nan"),
    ],
)
def test_prefs_generate_refuses_values_that_cannot_work(option: str, value: str, tmp_path: Path) -> None:
    done = cli("rsi_env.prefs", "generate", option, value, "--out", str(tmp_path / "o"))
    one_error(done, option)
    assert not (tmp_path / "o").exists()


@contextlib.contextmanager
def tiny_disk(where: Path, size: str = "16k") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (root only; the test skips elsewhere)."""
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_stops_the_run_with_one_message_and_keeps_every_whole_episode(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk") as disk:
        done = cli(
            "rsi_env.play", "--agents", "random", "--quiet", "--episodes", "30", "--out", str(disk / "run")
        )
        one_error(done, "No space left on device", "trajectories.jsonl")
        kept = list(read_episodes(disk / "run"))
        assert kept and all(ep.finished for ep in kept), "the episodes written before the disk filled up"
        assert (disk / "run" / "trajectories.jsonl").read_bytes().endswith(b"\n"), "no half line left"
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        done = cli(
            "rsi_env.play", "--agents", "random", "--quiet", "--episodes", "30", "--out", str(disk / "run")
        )
        one_error(done, "Read-only file system")
        assert len(list(read_episodes(disk / "run"))) == len(kept)


def test_escape_codes_in_a_game_path_or_name_are_shown_escaped(tmp_path: Path) -> None:
    """A file name is untrusted too (a generated game's, a downloaded one's): its escape codes must not
    clear or recolour the terminal when an error names it."""
    evil = "\x1b[2J\x1b]0;title\x07evil"
    done = cli(
        "rsi_env.play", "--game", evil, "--agents", "random", "--out", str(tmp_path / "o"), cwd=tmp_path
    )
    one_error(done, "\\x1b[2J", "unknown game id")
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr
    done = cli("rsi_env.games", "validate", str(tmp_path / f"{evil}.yaml"))
    assert done.returncode == 2 and "\\x1b[2J" in done.stderr and "\x1b" not in done.stderr, done.stderr
