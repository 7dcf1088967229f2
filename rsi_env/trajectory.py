"""Trajectory records: one JSON line per episode, enough to replay it exactly and to rebuild
preference data without new model calls.

This module is the record schema only (pydantic models crossing file boundaries). Where the lines
live — the locked, append-only JSONL file, its readers, writer and compaction — is
`trajectory_store`.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, Field

from .events import ConductFlag, Event

SCHEMA_VERSION = 1

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
    cached_tokens: int | None = None  # prompt tokens from the server's prompt cache (None: not reported)
    retries: int = 0
    attempts: list[str] = Field(default_factory=list)
    error: str | None = None


# Replies are untrusted: a 5 MB reply must not make a 150 MB trajectory file. What is stored of one
# reply (the game parsed it whole); set RSI_ENV_MAX_REPLY_CHARS to change it.
MAX_STORED_REPLY_CHARS = int(os.environ.get("RSI_ENV_MAX_REPLY_CHARS", "20000"))


def cap_reply(text: str, limit: int | None = None) -> tuple[str, int]:
    """`text` cut to `limit` characters (default MAX_STORED_REPLY_CHARS) and how many were cut."""
    limit = MAX_STORED_REPLY_CHARS if limit is None else limit
    return (text, 0) if len(text) <= limit else (text[:limit], len(text) - limit)


class Turn(BaseModel):
    """One acting player at one tick."""

    tick: int
    turn: int
    phase: str
    player: str
    observation: str
    prompt: str | None = None  # the user message an LLM agent sent for this turn (None for others)
    raw: str  # the reply, at most MAX_STORED_REPLY_CHARS of it (`cap_reply`)
    raw_dropped: int = 0  # characters of the reply past that cap, counted, not stored
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
    options: dict[str, Any] = Field(default_factory=dict)  # the game's options as played (all of them)
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
    flags: list[ConductFlag] = Field(default_factory=list)  # procedural conduct flags
    invalid_counts: dict[str, int] = Field(default_factory=dict)
    events: list[Event] = Field(default_factory=list)  # the engine's full event log
    errors: list[str] = Field(default_factory=list)  # runtime errors in spec expressions
    warnings: list[str] = Field(default_factory=list)  # scripted policy rules that failed (rule, error)
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
