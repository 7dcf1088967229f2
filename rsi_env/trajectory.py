"""Trajectory records: one JSON line per episode, enough to replay it exactly and to rebuild
preference data without new model calls.

Files are append-only JSONL, one flushed line per finished episode. A line cut short by a kill is
never a record: `read_episodes` skips it with a warning and `TrajectoryWriter` trims it before
appending, so everything complete that was written stays.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

SCHEMA_VERSION = 1
FILE_NAME = "trajectories.jsonl"

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


class TrajectoryFileError(Exception):
    """A file that is not a trajectory file (foreign or unreadable)."""


def resolve_path(path: str | Path) -> Path:
    """A run directory or a .jsonl file -> the .jsonl file."""
    p = Path(path)
    return p / FILE_NAME if p.is_dir() or p.suffix != ".jsonl" else p


def read_episodes(path: str | Path, *, strict: bool = False) -> Iterator[Episode]:
    """Episodes of a file in order. The latest line wins when an episode id repeats (reruns).

    A truncated last line (a killed writer) is skipped with a warning; a line that is not an episode
    raises TrajectoryFileError naming the line, so a foreign file gets one clear message.
    """
    p = resolve_path(path)
    if not p.is_file():
        raise TrajectoryFileError(f"{p}: no such trajectory file")
    latest: dict[str, Episode] = {}
    with p.open("r", encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    complete_lines = lines[:-1] if lines and lines[-1] else lines  # no final newline: cut short
    if lines and lines[-1]:
        warnings.warn(f"{p}: last line is incomplete (a run was interrupted); skipped", stacklevel=2)
    for no, line in enumerate(complete_lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise TrajectoryFileError(f"{p}:{no}: not JSON; is this a trajectory file?") from None
        if not isinstance(data, dict) or "episode_id" not in data or "turns" not in data:
            raise TrajectoryFileError(f"{p}:{no}: not an rsi_env episode record (no episode_id/turns)")
        if data.get("schema_version", 1) > SCHEMA_VERSION:
            raise TrajectoryFileError(
                f"{p}:{no}: written by a newer rsi_env (schema {data['schema_version']})"
            )
        try:
            ep = Episode.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise TrajectoryFileError(f"{p}:{no}: bad episode record at {where}: {first['msg']}") from None
        latest.pop(ep.episode_id, None)
        latest[ep.episode_id] = ep
    yield from latest.values()


class TrajectoryWriter:
    """Appends one flushed line per episode; repairs a cut-short last line first."""

    def __init__(self, path: str | Path) -> None:
        self.path = resolve_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._f = self.path.open("a", encoding="utf-8")

    def _repair(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)
        warnings.warn(
            f"{self.path}: removed an incomplete last line left by an interrupted run", stacklevel=2
        )

    def write(self, episode: Episode) -> None:
        # One write call per line, then flush + fsync: a kill leaves whole lines or a cut-short last one.
        self._f.write(episode.model_dump_json() + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

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
