"""`python -m rsi_env.replay RUN_DIR_OR_FILE`: replay a recorded episode in the terminal.

In a terminal, keys step through the episode tick by tick: n/→ forward, p/← back, f/F the
next/previous flagged tick (a conduct flag or a failed model call), g/G start and end (payoffs and
referee scores), u/d scroll, [/] previous/next episode, space autoplay (with --speed), q quit.
Piped, the episode is printed whole (with `--speed X`, one tick every 1/X seconds).

    python -m rsi_env.replay runs/                       # the first episode; lists them if several
    python -m rsi_env.replay runs/ --episode 3           # by index, id, or a unique part of an id
    python -m rsi_env.replay runs/ --player player_1     # what player_1 saw
    python -m rsi_env.replay runs/ --episode all | less  # every episode, as text
"""

from __future__ import annotations

import argparse
import io
import os
import select
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

from .cli import fail, number_arg, run
from .render import Block, episode_blocks, header, summary
from .trajectory import Episode
from .trajectory_store import TrajectoryFileError, read_episodes, resolve_path

HELP = "n/→ next  p/← back  f/F next/prev flag  g/G start/end  u/d scroll  [/] episode  space play  q quit"

# The names rich accepts for `Console(color_system=...)` (its property returns a plain str).
ColorSystem = Literal["auto", "standard", "256", "truecolor", "windows"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog or "python -m rsi_env.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("path", type=Path, help="a run directory or a trajectories .jsonl file")
    ap.add_argument("--episode", help="episode id, index (0 = first), a unique part of an id, or `all`")
    ap.add_argument("--player", help="show only what this player saw (its private view)")
    ap.add_argument(
        "--speed", type=_speed, default=0.0, help="ticks per second (0 = no delay; in a terminal: autoplay)"
    )
    ap.add_argument(
        "--plain", action="store_true", help="print the whole episode even in a terminal (no keys)"
    )
    ap.add_argument("--list", action="store_true", help="list the episodes of the file and exit")
    return ap


_speed = number_arg(float, "a number of ticks per second", low=0)


def load(path: Path) -> list[Episode]:
    """Every episode of the file; one clear message (exit 2) for a foreign, missing or empty file.
    A last line cut short by an interrupted run is reported once and skipped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            episodes = list(read_episodes(path))
        except TrajectoryFileError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"{path}: cannot read: {exc.strerror or exc}")
    notes = [str(w.message) for w in caught]
    if not episodes:
        why = notes[0] if notes else f"{resolve_path(path)}: no episodes in this file"
        fail(f"{why}; nothing to replay")
    for note in notes:
        Console(stderr=True).print(f"[yellow]warning:[/] {escape(str(note))}", highlight=False)
    return episodes


def pick(episodes: list[Episode], selector: str | None) -> list[Episode]:
    """Episodes matching `--episode`: all, an index, an exact id, or a unique part of an id."""
    if selector is None:
        return episodes[:1]
    if selector == "all":
        return episodes
    exact = [ep for ep in episodes if ep.episode_id == selector]
    if exact:
        return exact
    try:
        i = int(selector)
    except ValueError:
        pass
    else:
        if -len(episodes) <= i < len(episodes):
            return [episodes[i]]
        fail(
            f"--episode {i}: out of range; the file has {len(episodes)} episode(s) (0 to {len(episodes) - 1})"
        )
    part = [ep for ep in episodes if selector in ep.episode_id]
    if len(part) == 1:
        return part
    known = ", ".join(ep.episode_id for ep in (part or episodes)[:5])
    more = f" … ({len(part or episodes)} in all)" if len(part or episodes) > 5 else ""
    if part:
        fail(f"--episode {selector!r} matches several episodes: {known}{more}")
    fail(f"--episode {selector!r}: no such episode; known: {known}{more}")


def episode_table(episodes: list[Episode]) -> Table:
    t = Table(title=f"{len(episodes)} episode(s)", show_edge=False)
    for col in ("#", "episode", "game", "status", "agents", "payoffs", "flags"):
        t.add_column(col, overflow="fold")
    for i, ep in enumerate(episodes):
        pays = "—" if ep.payoffs is None else " ".join(f"{v:g}" for v in ep.payoffs.values())
        agents = ",".join(p.agent for p in ep.players)
        t.add_row(str(i), ep.episode_id, ep.game, ep.status, agents, pays, str(len(ep.flags)))
    return t


def check_player(episodes: list[Episode], player: str | None) -> None:
    for ep in episodes:
        seats = [p.player for p in ep.players]
        if player is not None and player not in seats:
            fail(f"--player {player!r}: not a player of {ep.episode_id}; its players: {', '.join(seats)}")


def print_plain(console: Console, ep: Episode, player: str | None, speed: float) -> None:
    """The whole episode as scrolling output; with a speed, one tick every 1/speed seconds."""
    console.print(header(ep, player))
    for i, b in enumerate(episode_blocks(ep, player)):
        if speed > 0 and i:
            time.sleep(1 / speed)
        for line in b.lines:
            console.print(line)
    console.print(summary(ep, player))


# --- the interactive pager ------------------------------------------------------------------------

_ESCAPES = {
    "\x1b[C": "next", "\x1bOC": "next", "\x1b[B": "next",
    "\x1b[D": "prev", "\x1bOD": "prev", "\x1b[A": "prev",
    "\x1b[H": "start", "\x1bOH": "start", "\x1b[1~": "start",
    "\x1b[F": "end", "\x1bOF": "end", "\x1b[4~": "end",
    "\x1b[5~": "up", "\x1b[6~": "down",
}  # fmt: skip
_KEYS = {
    "n": "next", "j": "next", "l": "next", "\r": "next", "\n": "next",
    "p": "prev", "k": "prev", "h": "prev", "\x7f": "prev",
    "f": "flag", "F": "back_flag", "g": "start", "G": "end", "u": "up", "d": "down",
    "]": "next_episode", "[": "prev_episode", " ": "play",
    "q": "quit", "Q": "quit", "\x1b": "quit", "\x03": "quit",
}  # fmt: skip


def read_key(fd: int, timeout: float | None) -> str | None:
    """One key press as a command name ("next", "quit", ...), "" for an unbound key, None on timeout.
    Arrow and Home/End keys arrive as escape sequences: the bytes after ESC are read if they follow
    at once, so a lone ESC still quits."""
    if not select.select([fd], [], [], timeout)[0]:
        return None
    ch = os.read(fd, 1).decode(errors="ignore")
    if ch != "\x1b":
        return _KEYS.get(ch, "")
    seq = ch
    while len(seq) < 6 and select.select([fd], [], [], 0.05)[0]:
        seq += os.read(fd, 1).decode(errors="ignore")
        if seq[-1].isalpha() or seq[-1] == "~":
            break
    return _ESCAPES.get(seq, "quit" if seq == "\x1b" else "")


@contextmanager
def cbreak(fd: int) -> Any:
    """Keys arrive one by one, unechoed; Ctrl-C still interrupts. The terminal is restored after."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Pager:
    """Steps through episodes in a terminal. Position k shows ticks 0..k with tick k marked; the
    position after the last tick shows the end: payoffs, conduct flags and referee verdicts. The
    screen shows the bottom of that page (the current tick), `u`/`d` scroll up and down."""

    def __init__(
        self, console: Console, episodes: list[Episode], index: int, player: str | None, speed: float
    ) -> None:
        self.console = console
        self.episodes = episodes
        self.player = player
        self.speed = speed
        self.playing = speed > 0
        self.message = ""
        self._load(index)

    def _load(self, index: int) -> None:
        self.index = index
        self.ep = self.episodes[index]
        self.blocks: list[Block] = episode_blocks(self.ep, self.player)
        self.pos = 0
        self.scroll = 0
        self._cache: tuple[int, list[str], list[list[str]], list[str]] | None = None

    @property
    def end(self) -> int:
        return len(self.blocks)  # the position of the end screen

    def _render(self, width: int, renderable: RenderableType) -> list[str]:
        buf = io.StringIO()
        c = Console(
            file=buf,
            width=width,
            force_terminal=True,
            color_system=cast(ColorSystem, self.console.color_system or "standard"),
        )
        c.print(renderable)
        return buf.getvalue().rstrip("\n").split("\n")

    def _rendered(self, width: int) -> tuple[list[str], list[list[str]], list[str]]:
        if self._cache is None or self._cache[0] != width:
            head = self._render(width, header(self.ep, self.player))
            blocks = [[ln for line in b.lines for ln in self._render(width, line)] for b in self.blocks]
            self._cache = (width, head, blocks, self._render(width, summary(self.ep, self.player)))
        return self._cache[1], self._cache[2], self._cache[3]

    def page(self, width: int) -> list[str]:
        """Every line up to the current position, the current tick marked in the margin."""
        head, blocks, end = self._rendered(max(20, width - 3))
        lines = list(head)
        for k, block in enumerate(blocks[: self.pos + 1]):
            mark = "\x1b[1;33m▌\x1b[0m " if k == self.pos else "  "
            lines += [mark + ln for ln in block]
        if self.pos == self.end:
            lines += ["  " + ln for ln in end]
        return lines

    def status(self) -> str:
        """Where we are first (it must survive a narrow terminal), then the flags, then the episode."""
        if self.pos == self.end:
            at = f"end (step {self.end + 1}/{self.end + 1}): payoffs and verdicts"
        else:
            b = self.blocks[self.pos]
            at = f"step {self.pos + 1}/{self.end + 1} · tick {b.tick} · turn {b.turn} · {b.phase}"
            if b.flagged:
                at += " · ⚑ flagged"
        if self.playing:
            at += " · playing"
        if self.message:
            at += f" · {self.message}"
        n_flagged = sum(b.flagged for b in self.blocks)
        episode = f"episode {self.index + 1}/{len(self.episodes)} {self.ep.episode_id}"
        return f" {at} │ {n_flagged} flagged │ {episode}"

    def draw(self) -> None:
        width, height = self.console.size
        lines = self.page(width)
        room = max(1, height - 2)
        self.scroll = max(0, min(self.scroll, len(lines) - room))
        stop = len(lines) - self.scroll
        shown = lines[max(0, stop - room) : stop]
        shown += [""] * (room - len(shown))
        status = self.status()[: width - 1]
        out = "\x1b[H" + "".join(ln + "\x1b[0m\x1b[K\n" for ln in shown)
        out += f"\x1b[7m{status.ljust(width - 1)}\x1b[0m\n\x1b[2m{HELP[: width - 1]}\x1b[0m\x1b[K"
        self.console.file.write(out)
        self.console.file.flush()

    def do(self, command: str) -> bool:
        """Apply one command; False to quit."""
        self.message = ""
        if command == "quit":
            return False
        before = self.pos
        if command == "next":
            self.pos = min(self.end, self.pos + 1)
        elif command == "prev":
            self.pos = max(0, self.pos - 1)
        elif command == "start":
            self.pos = 0
        elif command == "end":
            self.pos = self.end
        elif command in ("flag", "back_flag"):
            self._jump(forward=command == "flag")
        elif command in ("up", "down"):
            half = max(1, self.console.size.height // 2)
            self.scroll = max(0, self.scroll + (half if command == "up" else -half))
        elif command in ("next_episode", "prev_episode"):
            step = 1 if command == "next_episode" else -1
            if 0 <= self.index + step < len(self.episodes):
                self._load(self.index + step)
            else:
                self.message = "no other episode that way"
        elif command == "play":
            self.playing = not self.playing and self.speed > 0
            if self.speed <= 0:
                self.message = "autoplay needs --speed X (ticks per second)"
        elif command == "":
            self.message = "unbound key (the keys are listed below)"
        if self.pos != before:
            self.scroll = 0
        return True

    def _jump(self, forward: bool) -> None:
        order = range(self.pos + 1, self.end) if forward else range(self.pos - 1, -1, -1)
        target = next((k for k in order if self.blocks[k].flagged), None)
        if target is None:
            self.message = f"no flagged tick {'after' if forward else 'before'} this one"
        else:
            self.pos = target

    def run(self, fd: int) -> None:
        with cbreak(fd):
            self.console.file.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once; draws overwrite
            try:
                size = self.console.size
                self.draw()
                while True:
                    key = read_key(fd, 1 / self.speed if self.playing else 0.5)
                    if key is None:  # no key: autoplay steps on; a resized terminal is redrawn
                        if self.playing:
                            self.playing = self.pos < self.end
                            self.do("next")
                        elif self.console.size == size:
                            continue
                    elif not self.do(key):
                        break
                    size = self.console.size
                    self.draw()
            finally:
                self.console.file.write("\x1b[?25h\n")
                self.console.file.flush()


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    console = Console()
    episodes = load(args.path)
    if args.list:
        console.print(episode_table(episodes))
        return 0
    chosen = pick(episodes, args.episode)
    check_player(chosen, args.player)
    # Keys need a POSIX terminal on both ends; anything else (a pipe, a file, Windows) gets text.
    tty_both = sys.stdin.isatty() and sys.stdout.isatty() and console.is_terminal
    interactive = not args.plain and tty_both and os.name == "posix"
    try:
        if interactive:
            # Every episode stays reachable with [ and ]; with --player, those it played in.
            pool = [
                ep
                for ep in episodes
                if args.player is None or any(p.player == args.player for p in ep.players)
            ]
            start = next(i for i, ep in enumerate(pool) if ep is chosen[0])
            Pager(console, pool, start, args.player, args.speed).run(sys.stdin.fileno())
            return 0
        if len(episodes) > 1 and args.episode is None:
            console.print(episode_table(episodes))
            console.print("[dim]showing #0; pick one with --episode ID|INDEX, or --episode all[/]")
        for ep in chosen:
            print_plain(console, ep, args.player, args.speed)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    run(main)
