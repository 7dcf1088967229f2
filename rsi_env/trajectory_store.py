"""The trajectory file: append-only JSONL, one flushed line per finished episode, read as a stream.

A line cut short by a kill is never a record: the readers skip it with a warning and
`TrajectoryWriter` trims it before appending, so everything complete that was written stays. Any
other unreadable line is skipped with a warning naming file:line. The one rewrite is the runner's
compaction on a rerun: failed attempts it replaces move to a side file (`set_aside`), so no record
of a failure is lost.

Several processes may share one file (two games played into the same `runs/` at once, or the same
command started twice): an advisory lock on a sidecar file (`lock_path`) orders them. Writers hold
it exclusively per line, a compaction for its whole rewrite, and a writer whose file was replaced
under it reopens the new one. `TrajectoryWriter.append_new` keeps each episode once in the file
however many runs play it: under the lock it reads what others appended since its last line and
does not append an episode the file already holds finished.

Readers stream: a file of any size is read one line at a time (`scan`, `iter_episodes`), never
held whole. They read the whole lines present when they start (a consistent snapshot: writers only
append whole lines under the lock, and a compaction replaces the file, leaving the one being read
as it was).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from pydantic import ValidationError

from .trajectory import SCHEMA_VERSION, Episode

try:
    import fcntl
except ImportError:  # not POSIX: no lock, as before it (one run per output directory there)
    fcntl = None  # type: ignore[assignment]

FILE_NAME = "trajectories.jsonl"
FAILED_ATTEMPTS = "failed_attempts.jsonl"  # beside it: failed attempts a rerun replaced (see `set_aside`)

# Per file, this many unreadable lines are named one by one, the rest counted: a damaged file must not
# bury the output in warnings.
MAX_LINE_WARNINGS = 5


class TrajectoryFileError(Exception):
    """A file that is not a trajectory file (foreign or unreadable)."""


def resolve_path(path: str | Path) -> Path:
    """A run directory or a .jsonl file -> the .jsonl file."""
    p = Path(path)
    return p / FILE_NAME if p.is_dir() or p.suffix != ".jsonl" else p


def failed_attempts_path(path: str | Path) -> Path:
    """The side file beside a trajectory file that keeps the failed attempts a rerun replaced."""
    p = resolve_path(path)
    return p.with_name(FAILED_ATTEMPTS if p.name == FILE_NAME else f"{p.stem}.{FAILED_ATTEMPTS}")


def lock_path(path: str | Path) -> Path:
    """The sidecar file whose advisory lock orders the processes sharing a trajectory file. Never
    removed: a process may be waiting on it."""
    p = resolve_path(path)
    return p.with_name(f".{p.name}.lock")


class RunDirBusy(RuntimeError):
    """Another process runs, on the same run directory, a command that must have it alone."""


@contextlib.contextmanager
def sole_writer(run_dir: Path, command: str) -> Iterator[None]:
    """Hold `run_dir` for `command` alone while it runs. A second process running it on the same
    directory gets RunDirBusy at once: not a wait, and not a second copy of every line (two `prefs
    generate` runs into one --out wrote each rollout twice). `play` needs no such lock: its episodes
    are claimed one by one. An advisory lock the kernel releases when the process ends, however it
    ends; a no-op without fcntl (one run per directory there, as before)."""
    if fcntl is None:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / f".{command.replace(' ', '-')}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 16, 0).decode("ascii", "replace").strip()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise RunDirBusy(
                f"{run_dir}: another `{command}` is writing here{pid}; wait for it to end, or give "
                "another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


# --- reading -------------------------------------------------------------------------------------


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


def parse_line(p: Path, no: int, raw: bytes) -> RecordLine:
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


@contextlib.contextmanager
def _snapshot(p: Path) -> Iterator[tuple[BinaryIO, int]]:
    """The file open for reading and its size when opened under the shared lock: a line another
    process is appending then is read whole or not at all (not as "cut short")."""
    if not p.is_file():
        raise TrajectoryFileError(f"{p}: no such trajectory file")
    with _locked(p, exclusive=False, create=False):
        f = p.open("rb")
        size = os.fstat(f.fileno()).st_size
    try:
        yield f, size
    finally:
        f.close()


def _raw_lines(f: BinaryIO, size: int, start: int = 0) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, line without its newline, whole) for each line in bytes [start, size) of `f`; only the
    last can be `whole=False` (cut short)."""
    f.seek(start)
    pos = start
    while pos < size:
        raw = f.readline(size - pos)
        if not raw:
            return  # the file shrank under us (a cut-short tail trimmed): nothing whole was there
        whole = raw.endswith(b"\n")
        yield pos, raw[:-1] if whole else raw, whole
        pos += len(raw)


def _record_lines(p: Path, f: BinaryIO, size: int) -> Iterator[tuple[int, int, bytes]]:
    """(line number, offset, bytes) of each whole, non-blank line; an incomplete last line (an
    interrupted run) is skipped with a warning, the one rule every reader of the file follows."""
    no = 0
    for offset, raw, whole in _raw_lines(f, size):
        no += 1
        if not whole:
            # stacklevel 3: the warning names the caller of the reader, not the reader.
            warnings.warn(f"{p}: last line is incomplete (a run was interrupted); skipped", stacklevel=3)
            return
        if raw.strip():
            yield no, offset, raw


class _Problems:
    """Unreadable lines of one file, warned about as `read_lines` promises: none at all when the
    file turns out foreign (then one TrajectoryFileError), the first few by name, the rest counted."""

    def __init__(self, p: Path, strict: bool) -> None:
        self.p, self.strict = p, strict
        self.first: str | None = None
        self.held: list[str] = []  # until a record line shows the file is a trajectory file
        self.shaped = False
        self.count = 0

    def see(self, line: RecordLine) -> None:
        if line.shaped and not self.shaped:
            self.shaped = True
            for problem in self.held:
                self._warn(problem)
            self.held.clear()
        if line.problem is None:
            return
        if self.strict:
            raise TrajectoryFileError(line.problem)
        self.first = self.first or line.problem
        self.count += 1
        if self.count <= MAX_LINE_WARNINGS:
            if self.shaped:
                self._warn(line.problem)
            else:
                self.held.append(line.problem)

    def end(self) -> None:
        if self.first is not None and not self.shaped:
            raise TrajectoryFileError(self.first)
        if self.count > MAX_LINE_WARNINGS:
            self._warn(f"{self.p}: {self.count - MAX_LINE_WARNINGS} more unreadable line(s)")

    @staticmethod
    def _warn(problem: str) -> None:
        warnings.warn(f"{problem}; line skipped", stacklevel=4)


def scan(path: str | Path, *, strict: bool = False) -> Iterator[RecordLine]:
    """Every whole line of a trajectory file, parsed, in file order, one at a time.

    A cut-short last line (a killed writer) is left out with a warning. An unreadable line (not an
    episode, or a record this version cannot validate) is skipped with one warning naming file:line,
    so one bad line never hides the rest of a run; `strict` raises for it instead. A file with no
    episode-shaped line at all is foreign: TrajectoryFileError with its first problem (raised once the
    file is read through, before which no line of it was an episode).
    """
    p = resolve_path(path)
    problems = _Problems(p, strict)
    with _snapshot(p) as (f, size):
        for no, _, raw in _record_lines(p, f, size):
            line = parse_line(p, no, raw)
            problems.see(line)
            yield line
    problems.end()


def read_lines(path: str | Path, *, strict: bool = False) -> list[RecordLine]:
    """Every whole line of a trajectory file, parsed (see `scan`). Holds the file: for tests and small
    files; everything else streams."""
    return list(scan(path, strict=strict))


# Our writer puts these two fields first: the id of a line is found without parsing it.
_ID_PREFIX = re.compile(rb'\{"schema_version":(\d+),"episode_id":"((?:[^"\\]|\\.)*)"')


def _quick_id(raw: bytes) -> str | None:
    """The episode id of a line, cheaply: from its first bytes when our writer wrote it, else by
    parsing it (None for a line that is not a record this version reads)."""
    m = _ID_PREFIX.match(raw)
    if m is not None:
        if int(m.group(1)) > SCHEMA_VERSION:
            return None
        return str(json.loads(b'"' + m.group(2) + b'"'))
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or "episode_id" not in data or "turns" not in data:
        return None
    return str(data["episode_id"])


def iter_episodes(path: str | Path, *, strict: bool = False) -> Iterator[Episode]:
    """Episodes of a file, streamed. The latest readable line wins when an episode id repeats (a rerun,
    or verdicts added later), and each episode comes where its winning line is. Unreadable lines are
    skipped with a warning each (see `scan`).

    Two passes, memory in the number of episodes, not the size of the file: the first finds where each
    id last occurs; the second parses each line that is the last of its id (an earlier one is parsed
    only when the last one cannot be read).
    """
    p = resolve_path(path)
    with _snapshot(p) as (f, size):
        last: dict[str, int] = {}
        for offset, raw, whole in _raw_lines(f, size):
            if whole and raw.strip() and (eid := _quick_id(raw)) is not None:
                last[eid] = offset
        problems = _Problems(p, strict)
        fallback: dict[str, list[int]] = {}  # id -> offsets of its earlier lines, latest first
        for no, offset, raw in _record_lines(p, f, size):
            eid = _quick_id(raw)
            if eid is not None and last.get(eid, offset) != offset:
                fallback.setdefault(eid, []).insert(0, offset)
                continue
            line = parse_line(p, no, raw)
            problems.see(line)
            if line.episode is not None:
                yield line.episode
            elif eid is not None:
                ep = _earlier_readable(p, f, fallback.pop(eid, []))
                if ep is not None:
                    yield ep
                f.seek(offset + len(raw) + 1)
        problems.end()


def _earlier_readable(p: Path, f: BinaryIO, offsets: list[int]) -> Episode | None:
    """The latest readable episode among earlier lines (their last line could not be read)."""
    for offset in offsets:
        f.seek(offset)
        line = parse_line(p, 0, f.readline().rstrip(b"\n"))
        if line.episode is not None:
            return line.episode
    return None


def read_episodes(path: str | Path, *, strict: bool = False) -> Iterator[Episode]:
    """Episodes of a file in order; the latest line wins when an id repeats (see `iter_episodes`)."""
    return iter_episodes(path, strict=strict)


# --- compaction ------------------------------------------------------------------------------------


def set_aside(path: str | Path, moved: list[RecordLine]) -> Path:
    """Move the lines `moved` (read from the file earlier) to the side file of failed attempts, and
    rewrite the trajectory file without them; returns the side file.

    Under the exclusive lock, the file is read again (streamed): lines other processes appended since
    `moved` was read stay, and lines are matched by their bytes (another compaction may have
    renumbered them). Crash-safe in this order: the side file is appended and fsynced first (skipping
    lines it already holds, so a repeat after a kill adds nothing), then the trajectory file is
    replaced atomically by a fsynced temporary copy (os.replace). A kill at any point leaves both files
    whole, and every line in at least one of them.
    """
    p = resolve_path(path)
    side = failed_attempts_path(p)
    with _locked(p, exclusive=True):
        _trim_cut_short(side)
        held = _digests(side)
        _write_synced(side, "ab", [line.raw for line in moved if _digest(line.raw) not in held])
        gone = {line.raw for line in moved}
        tmp = p.with_name(f".{p.name}.compacting")
        with p.open("rb") as src, tmp.open("wb") as dst:
            for _, raw, whole in _raw_lines(src, os.fstat(src.fileno()).st_size):
                # A killed writer's partial line is no record; an empty line is nothing.
                if whole and raw.strip() and raw not in gone:
                    dst.write(raw + b"\n")
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, p)
        _fsync_dir(p.parent)
    return side


def _digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


def _digests(path: Path) -> set[bytes]:
    """Digests of a file's lines (streamed: a side file grows with every rerun)."""
    if not path.exists():
        return set()
    with path.open("rb") as f:
        return {_digest(raw.rstrip(b"\n")) for raw in f}


# --- locking and writing -------------------------------------------------------------------------


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
        size = os.fstat(f.fileno()).st_size
        # Back from the end to the last newline, a block at a time: the file may be large.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            if end == size and block.endswith(b"\n"):
                return False
            nl = block.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                return True
            end = start
        f.truncate(0)
    return True


class TrajectoryWriter:
    """Appends one flushed line per episode; repairs a cut-short last line first.

    Other processes may append to the same file, or compact it (`set_aside`), meanwhile: each line is
    written under the exclusive lock, to the file now at `path` (reopened when a compaction replaced
    it, else the line would go to the unlinked old file and be lost). Thread-safe: the runner writes
    from one thread while its event loop asks `holds_finished`.

    `write` appends every record it is given (a later line supersedes an earlier one of the same id:
    how verdicts are added). `append_new` is the runner's: it appends an episode only when the file
    holds no finished record of that id yet, so runs racing on one output record each episode once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = resolve_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _open_lock(self.path)
        self._mutex = threading.Lock()  # flock is per open file: threads of one process need this too
        self._finished: set[str] | None = None  # finished ids in the file, read lazily by `append_new`
        self._read_to = 0  # bytes of the open file already read into `_finished`
        with _flocked(self._lock, exclusive=True):
            self._f = self._open()

    def _open(self) -> TextIO:
        """Open the file at `path` for appending, without a killed writer's cut-short last line (a line
        appended after it would be glued to it). Called with the lock held."""
        if _trim_cut_short(self.path):
            warnings.warn(
                f"{self.path}: removed an incomplete last line left by an interrupted run", stacklevel=3
            )
        self._read_to = 0  # another file, or a trimmed one: read it again from the start
        if self._finished is not None:
            self._finished = set()
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

    def _catch_up(self) -> set[str]:
        """The finished ids in the file, reading only the whole lines appended since the last call (by
        this writer or any other). Called with the lock held, after `_follow`."""
        if self._finished is None:
            self._finished, self._read_to = set(), 0
        size = os.fstat(self._f.fileno()).st_size
        if size > self._read_to:
            with self.path.open("rb") as f:
                for offset, raw, whole in _raw_lines(f, size, self._read_to):
                    if not whole:
                        break  # a killed writer's cut-short line: trimmed before the next append
                    self._read_to = offset + len(raw) + 1
                    eid, finished = _record_status(raw)
                    if eid is not None and finished:
                        self._finished.add(eid)
        return self._finished

    def _append(self, line: str) -> None:
        # Written with os.write, then fsync: a kill leaves whole lines or a cut-short last one, and no
        # buffer keeps half a line after a failed write. A write that fails (a full disk) is cut off
        # again, so the file still ends with a whole line, and the error goes up to the caller.
        fd = self._f.fileno()
        size = os.fstat(fd).st_size
        data = line.encode("utf-8")
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def write(self, episode: Episode) -> None:
        line = episode.model_dump_json() + "\n"
        with self._mutex, _flocked(self._lock, exclusive=True):
            self._follow()
            self._append(line)

    def append_new(self, episode: Episode) -> bool:
        """Append `episode` unless the file already holds it finished (another run played it meanwhile);
        True when appended. An aborted attempt of an episode finished elsewhere goes to the side file of
        failed attempts instead: no record of a failure is lost."""
        line = episode.model_dump_json() + "\n"
        with self._mutex, _flocked(self._lock, exclusive=True):
            self._follow()
            finished = self._catch_up()
            if episode.episode_id in finished:
                if not episode.finished:
                    side = failed_attempts_path(self.path)
                    _trim_cut_short(side)
                    _write_synced(side, "ab", [line.rstrip("\n").encode()])
                return False
            self._append(line)
            if episode.finished:
                finished.add(episode.episode_id)
            self._read_to = os.fstat(self._f.fileno()).st_size
            return True

    def holds_finished(self, episode_id: str) -> bool:
        """Whether the file holds a finished record of `episode_id` now (another run may have written
        it since this run planned): the runner skips such an episode instead of playing it again."""
        with self._mutex, _flocked(self._lock, exclusive=False):
            if self._finished is None:
                return False  # nothing read yet: the plan, made from the whole file, is current
            mine = os.fstat(self._f.fileno())
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                return False
            if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                return False  # replaced: re-read at the next append, under the exclusive lock
            return episode_id in self._catch_up()

    def close(self) -> None:
        self._f.close()
        if self._lock is not None:
            os.close(self._lock)

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record_status(raw: bytes) -> tuple[str | None, bool]:
    """(episode id, finished) of a record line, as the readers see it: only a readable episode of a
    finished status is finished (a line this version cannot read is no record of the episode)."""
    try:
        ep = Episode.model_validate_json(raw)
    except ValueError:  # ValidationError included: not JSON, not a record, or one we cannot read
        return None, False
    return ep.episode_id, ep.finished
