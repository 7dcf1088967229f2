"""Trajectory records: one JSON line per episode, enough to replay it exactly and to rebuild
preference data without new model calls.

Files are append-only JSONL, one flushed line per finished episode. A line cut short by a kill is
never a record: `read_episodes` skips it with a warning and `TrajectoryWriter` trims it before
appending, so everything complete that was written stays. Any other unreadable line is skipped
with a warning naming file:line. The one rewrite is the runner's compaction on a rerun: failed
attempts it replaces move to a side file (`set_aside`), so no record of a failure is lost.

Several processes may share one file (two games played into the same `runs/` at once): an advisory
lock on a sidecar file (`lock_path`) orders them. Writers hold it exclusively per line, a compaction
for its whole rewrite, and a writer whose file was replaced under it reopens the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, Field, ValidationError

try:
    import fcntl
except ImportError:  # not POSIX: no lock, as before it (one run per output directory there)
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
FILE_NAME = "trajectories.jsonl"
FAILED_ATTEMPTS = "failed_attempts.jsonl"  # beside it: failed attempts a rerun replaced (see `set_aside`)

# Statuses of a model call that say nothing about the model's play: the turn is retried and, if it
# keeps failing, the episode is aborted with that status (its payoffs are missing, never zero).
FAILURE_STATUSES = frozenset(
    {"timeout", "rate_limited", "server_error", "connection_error", "context_exceeded", "client_error"}
)


class CallInfo(BaseModel):
    """Accounting of the agent call behind one turn (zeros for local agents)."""

    status: str = "ok"
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    attempts: list[str] = Field(default_factory=list)
    error: str | None = None


class Turn(BaseModel):
    """One acting player at one tick."""

    tick: int
    turn: int
    phase: str
    player: str
    observation: str
    prompt: str | None = None  # the user message an LLM agent sent for this turn (None for others)
    raw: str
    action: str | None = None  # parsed action name, when valid
    args: dict[str, Any] | None = None
    valid: bool
    feedback: str | None = None
    call: CallInfo = Field(default_factory=CallInfo)
    changes: list[dict[str, Any]] = Field(default_factory=list)  # state paths this tick changed
    failed_calls: list[CallInfo] = Field(default_factory=list)  # infrastructure failures retried


class PlayerInfo(BaseModel):
    player: str
    agent: str  # profile name, `random`, `scripted` or `human`
    role: str
    team: str | None = None
    model: str | None = None
    system: str | None = None  # an LLM agent's system prompt
    window: int | None = None  # an LLM agent's history window (exchanges kept)


class DimensionScore(BaseModel):
    """Sotopia-style typed pair: a short rationale and a score within the dimension's range.

    `score` is None when the judge call failed or gave no usable score: missing, never zero.
    """

    reasoning: str = ""
    score: float | None = None


class Verdict(BaseModel):
    """One referee's judgement of one episode, per player and rubric dimension."""

    judge: str  # e.g. "procedural", or a judge id like "local@t0.7#1"
    rubric: str  # rubric id, e.g. "ethics"
    kind: Literal["procedural", "llm"] = "llm"
    status: str = "ok"  # the judge call's status; not ok => every score is missing
    scores: dict[str, dict[str, DimensionScore]] = Field(default_factory=dict)  # player -> dimension -> score
    error: str | None = None


class Usage(BaseModel):
    calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


class Episode(BaseModel):
    schema_version: int = SCHEMA_VERSION
    episode_id: str
    run_id: str = ""
    game: str
    spec_hash: str
    seed: int
    n_players: int
    players: list[PlayerInfo]
    turns: list[Turn] = Field(default_factory=list)
    status: Literal["complete", "truncated", "aborted"]
    abort_reason: str | None = None
    end_reason: str | None = None
    payoffs: dict[str, float] | None = None  # None when aborted: a failed episode has no score
    best: dict[str, float | None] | None = None
    outcomes: dict[str, Any] = Field(default_factory=dict)
    initial_state: dict[str, Any] = Field(default_factory=dict)  # {"state": ..., "players": ...} after reset
    flags: list[dict[str, Any]] = Field(default_factory=list)  # procedural conduct flags
    invalid_counts: dict[str, int] = Field(default_factory=dict)
    events: list[dict[str, Any]] = Field(default_factory=list)  # the engine's full event log
    errors: list[str] = Field(default_factory=list)  # runtime errors in spec expressions
    verdicts: list[Verdict] = Field(default_factory=list)  # referee verdicts, added by `referees`
    usage: Usage = Field(default_factory=Usage)
    started_at: float = 0.0
    duration_s: float = 0.0
    branch_of: dict[str, Any] | None = None  # set on rollouts made for preference data

    @property
    def finished(self) -> bool:
        return self.status in ("complete", "truncated")


def abort_status(ep: Episode) -> str:
    """The status that ended an aborted episode: the head of its `abort_reason` (`timeout: ...`)."""
    return (ep.abort_reason or "unknown").split(":", 1)[0].strip() or "unknown"


class TrajectoryFileError(Exception):
    """A file that is not a trajectory file (foreign or unreadable)."""


def resolve_path(path: str | Path) -> Path:
    """A run directory or a .jsonl file -> the .jsonl file."""
    p = Path(path)
    return p / FILE_NAME if p.is_dir() or p.suffix != ".jsonl" else p


@dataclass
class RecordLine:
    """One whole line of a trajectory file as read: its episode, or why it cannot be read."""

    no: int  # 1-based line number
    raw: bytes  # the line as stored, without its newline (rewritten byte for byte when a file is compacted)
    episode: Episode | None = None  # None when the line is not a readable episode
    episode_id: str | None = None  # known even for an unreadable record, when the line names one
    problem: str | None = None  # `file:line: why`, for an unreadable line
    shaped: bool = False  # a JSON object with episode_id and turns: meant as an episode record
    newer: bool = False  # written by a newer rsi_env (a schema_version above ours)

    @property
    def finished(self) -> bool:
        return self.episode is not None and self.episode.finished


# Per file, this many unreadable lines are named one by one, the rest counted: a damaged file must not
# bury the output in warnings.
MAX_LINE_WARNINGS = 5


def _parse_line(p: Path, no: int, raw: bytes) -> RecordLine:
    line = RecordLine(no=no, raw=raw)
    try:
        data = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        line.problem = f"{p}:{no}: not JSON; is this a trajectory file?"
        return line
    if not isinstance(data, dict) or "episode_id" not in data or "turns" not in data:
        line.problem = f"{p}:{no}: not an rsi_env episode record (no episode_id/turns)"
        return line
    line.shaped = True
    line.episode_id = str(data["episode_id"])
    version = data.get("schema_version", 1)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        line.newer = True
        line.problem = f"{p}:{no}: written by a newer rsi_env (schema {version})"
        return line
    try:
        line.episode = Episode.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        line.problem = f"{p}:{no}: bad episode record at {where}: {first['msg']}"
    return line


def read_lines(path: str | Path, *, strict: bool = False) -> list[RecordLine]:
    """Every whole line of a trajectory file, parsed, in file order.

    A cut-short last line (a killed writer) is left out with a warning. An unreadable line (not an
    episode, or a record this version cannot validate) is skipped with one warning naming file:line,
    so one bad line never hides the rest of a run; `strict` raises for it instead. A file with no
    episode-shaped line at all is foreign: TrajectoryFileError with its first problem.
    """
    p = resolve_path(path)
    if not p.is_file():
        raise TrajectoryFileError(f"{p}: no such trajectory file")
    # Shared: a line another process is appending is read whole or not at all (not as "cut short").
    with _locked(p, exclusive=False, create=False):
        data = p.read_bytes()
    *whole, tail = data.split(b"\n")
    if tail:
        warnings.warn(f"{p}: last line is incomplete (a run was interrupted); skipped", stacklevel=2)
    lines = [_parse_line(p, no, raw) for no, raw in enumerate(whole, 1) if raw.strip()]
    bad = [ln.problem for ln in lines if ln.problem]
    if bad and (strict or not any(ln.shaped for ln in lines)):
        raise TrajectoryFileError(bad[0])
    for problem in bad[:MAX_LINE_WARNINGS]:
        warnings.warn(f"{problem}; line skipped", stacklevel=2)
    if len(bad) > MAX_LINE_WARNINGS:
        warnings.warn(f"{p}: {len(bad) - MAX_LINE_WARNINGS} more unreadable line(s) skipped", stacklevel=2)
    return lines


def read_episodes(path: str | Path, *, strict: bool = False) -> Iterator[Episode]:
    """Episodes of a file in order. The latest line wins when an episode id repeats (reruns).
    Unreadable lines are skipped with a warning each (see `read_lines`)."""
    latest: dict[str, Episode] = {}
    for line in read_lines(path, strict=strict):
        if line.episode is not None:
            latest.pop(line.episode.episode_id, None)
            latest[line.episode.episode_id] = line.episode
    yield from latest.values()


def failed_attempts_path(path: str | Path) -> Path:
    """The side file beside a trajectory file that keeps the failed attempts a rerun replaced."""
    p = resolve_path(path)
    return p.with_name(FAILED_ATTEMPTS if p.name == FILE_NAME else f"{p.stem}.{FAILED_ATTEMPTS}")


def set_aside(path: str | Path, moved: list[RecordLine]) -> Path:
    """Move the lines `moved` (read from the file earlier) to the side file of failed attempts, and
    rewrite the trajectory file without them; returns the side file.

    Under the exclusive lock, the file is read again: lines other processes appended since `moved`
    was read stay, and lines are matched by their bytes (another compaction may have renumbered them).
    Crash-safe in this order: the side file is appended and fsynced first (skipping lines it already
    holds, so a repeat after a kill adds nothing), then the trajectory file is replaced atomically by
    a fsynced temporary copy (os.replace). A kill at any point leaves both files whole, and every
    line in at least one of them.
    """
    p = resolve_path(path)
    side = failed_attempts_path(p)
    with _locked(p, exclusive=True):
        _trim_cut_short(side)
        held = set(side.read_bytes().split(b"\n")) if side.exists() else set()
        _write_synced(side, "ab", [line.raw for line in moved if line.raw not in held])
        gone = {line.raw for line in moved}
        *whole, _cut_short = p.read_bytes().split(b"\n")  # a killed writer's partial line is no record
        tmp = p.with_name(f".{p.name}.compacting")
        _write_synced(tmp, "wb", [raw for raw in whole if raw.strip() and raw not in gone])
        os.replace(tmp, p)
        _fsync_dir(p.parent)
    return side


def lock_path(path: str | Path) -> Path:
    """The sidecar file whose advisory lock orders the processes sharing a trajectory file. Never
    removed: a process may be waiting on it."""
    p = resolve_path(path)
    return p.with_name(f".{p.name}.lock")


def _open_lock(path: Path, *, create: bool = True) -> int | None:
    """A descriptor of `path`'s lock file; None without fcntl, or when a reader finds none (a file no
    writer of this version touched, perhaps in a read-only directory: nothing to wait for)."""
    if fcntl is None:
        return None
    try:
        return os.open(lock_path(path), (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY, 0o644)
    except OSError:
        if create:
            raise
        return None


@contextlib.contextmanager
def _flocked(fd: int | None, *, exclusive: bool) -> Iterator[None]:
    if fd is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def _locked(path: Path, *, exclusive: bool, create: bool = True) -> Iterator[None]:
    """Hold `path`'s lock for a one-off operation (a writer keeps its descriptor instead)."""
    fd = _open_lock(path, create=create)
    try:
        with _flocked(fd, exclusive=exclusive):
            yield
    finally:
        if fd is not None:
            os.close(fd)


def _write_synced(path: Path, mode: str, raws: list[bytes]) -> None:
    """Write (or append) whole lines and fsync them before returning."""
    with path.open(mode) as f:
        for raw in raws:
            f.write(raw + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(d: Path) -> None:
    """Make a rename in `d` durable (POSIX; elsewhere a directory cannot be opened and this is a no-op)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ends_whole(path: Path, size: int) -> bool:
    """Whether a file of `size` bytes ends on a line end: its last byte only, cheap enough per line."""
    if size == 0:
        return True
    with path.open("rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


def _trim_cut_short(path: Path) -> bool:
    """Remove an incomplete last line (a killed writer) so that appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
    return True


class TrajectoryWriter:
    """Appends one flushed line per episode; repairs a cut-short last line first.

    Other processes may append to the same file, or compact it (`set_aside`), meanwhile: each line is
    written under the exclusive lock, to the file now at `path` (reopened when a compaction replaced
    it, else the line would go to the unlinked old file and be lost).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = resolve_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _open_lock(self.path)
        with _flocked(self._lock, exclusive=True):
            self._f = self._open()

    def _open(self) -> TextIO:
        """Open the file at `path` for appending, without a killed writer's cut-short last line (a line
        appended after it would be glued to it). Called with the lock held."""
        if _trim_cut_short(self.path):
            warnings.warn(
                f"{self.path}: removed an incomplete last line left by an interrupted run", stacklevel=3
            )
        return self.path.open("a", encoding="utf-8")

    def _follow(self) -> None:
        """Reopen `path` if the file there is no longer the one open (a compaction replaced it), or if
        another writer died mid-line since the last write. Called with the lock held."""
        mine = os.fstat(self._f.fileno())
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        same = now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
        if not (same and _ends_whole(self.path, mine.st_size)):
            self._f.close()
            self._f = self._open()

    def write(self, episode: Episode) -> None:
        line = episode.model_dump_json() + "\n"
        with _flocked(self._lock, exclusive=True):
            self._follow()
            # One write call per line, then flush + fsync: a kill leaves whole lines or a cut-short last one.
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
        if self._lock is not None:
            os.close(self._lock)

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def finished_ids(path: str | Path) -> set[str]:
    """Ids of episodes already in a file (to skip on resume); empty for a missing file."""
    p = resolve_path(path)
    if not p.exists():
        return set()
    return {ep.episode_id for ep in read_episodes(p)}
