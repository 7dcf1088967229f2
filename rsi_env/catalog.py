"""Where the declarative content lives: game specs, agent profiles, referee rubrics.

In a source checkout (or an editable install) the content is the repository's top-level `games/`,
`agents/`, `referees/`; a wheel carries copies under `rsi_env/content/`. Extra game folders can be
added with the `RSI_ENV_GAMES` environment variable (os.pathsep-separated).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from .spec import GameSpec, SpecError, read_spec_file

_PACKAGE = Path(__file__).resolve().parent


def content_dir(kind: str) -> Path:
    """`games`, `agents` or `referees`: the installed copy if present, else the checkout's folder."""
    installed = _PACKAGE / "content" / kind
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / kind


def game_dirs() -> list[Path]:
    base = content_dir("games")
    dirs = [base, base / "generated"]
    extra = os.environ.get("RSI_ENV_GAMES", "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return [d for d in dirs if d.is_dir()]


def game_files() -> dict[str, Path]:
    """Game id (the file stem) -> spec file, built-ins first; a later folder never shadows an id."""
    out: dict[str, Path] = {}
    for d in game_dirs():
        for f in sorted(d.glob("*.yaml")):
            out.setdefault(f.stem, f)
    return out


@cache
def _load_cached(path: str, mtime: float) -> GameSpec:
    return read_spec_file(path)


@cache
def _load_untrusted(path: str, mtime_ns: int, size: int) -> GameSpec:
    from .spec_guard import load_untrusted_spec  # a child process checks it: see spec_guard

    return load_untrusted_spec(path)


def load_game(game: str | Path | GameSpec) -> GameSpec:
    """A spec by id (`negotiation`), by path to a YAML file, or passed through.

    A game named by id is content the user installed (the built-ins, RSI_ENV_GAMES, accepted generated
    games). A file named by path is untrusted: it is checked, dry run included, in a child process under
    CPU and memory limits (`spec_guard`), once per version of the file."""
    if isinstance(game, GameSpec):
        return game
    path = Path(game)
    if path.suffix in (".yaml", ".yml") or os.path.lexists(path) or os.sep in str(game):
        if not os.path.lexists(path):
            raise SpecError(str(path), ["no such file"])
        if not path.is_file():  # a device, a FIFO, a directory: one message, never read
            return read_spec_file(path)
        st = path.stat()
        return _load_untrusted(str(path.resolve()), st.st_mtime_ns, st.st_size)
    else:
        files = game_files()
        if str(game) not in files:
            known = ", ".join(sorted(files)) or "(none found)"
            raise SpecError(str(game), [f"unknown game id; known games: {known}"])
        path = files[str(game)]
    return _load_cached(str(path.resolve()), path.stat().st_mtime)
