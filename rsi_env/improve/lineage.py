"""The loop's record: `DIR/lineage.jsonl`, one line per iteration, and the models it names.

A line has exactly the fields issue 13 lists: `iteration`, `parent`, `model` (path and sha256),
`rows`, `yield_per_1k_calls`, `train` (steps, loss, reward accuracy, seconds), `eval` (episodes, the
new model's win rate against its parent with its 95% interval, Elo and its interval and conduct per
episode for the new model and the parent) and `promoted`. Everything else a stage measured (the
yield's parts, per-stage times, the match against the original model, normalised payoffs) stays in
that stage's own file under `DIR/iter-N/` (see `checkpoint`).

This module needs nothing heavier than pydantic: `python -m rsi_env.report DIR` reads it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

LINEAGE = "lineage.jsonl"


class ModelRef(BaseModel):
    """A model of the lineage: its file (a GGUF, or a checkpoint directory on the endpoint path) and
    the file's sha256 (for a directory: of its weight files, in name order)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str


class TrainSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int
    loss: float | None  # mean training loss over the run; None when nothing was trained
    reward_accuracy: (
        float | None
    )  # share of pairs whose chosen side got the higher implicit reward (last logs)
    seconds: float


class PerModel(BaseModel):
    """One figure for the new model and for its parent."""

    model_config = ConfigDict(extra="forbid")

    new: float | None
    parent: float | None


class Interval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lo: float
    hi: float


class PerModelInterval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    new: Interval | None
    parent: Interval | None


class ConductPerModel(BaseModel):
    """Conduct flags per seat-episode (lies, broken promises, violations, referee manipulation)."""

    model_config = ConfigDict(extra="forbid")

    new: dict[str, float]
    parent: dict[str, float]


class EvalSummary(BaseModel):
    """The new model against its parent on held-out seeds, seats swapped, paired by seed."""

    model_config = ConfigDict(extra="forbid")

    episodes: int  # finished head-to-head episodes against the parent
    win_rate: float | None  # the new model's score against the parent (ties count half)
    win_rate_ci: Interval | None  # 95%
    elo: PerModel
    elo_ci: PerModelInterval
    conduct_per_episode: ConductPerModel


class LineageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iteration: int
    parent: ModelRef
    model: ModelRef | None  # None when the iteration produced no model (no preference rows)
    rows: int
    yield_per_1k_calls: float
    train: TrainSummary
    eval: EvalSummary | None  # None when there was no new model to evaluate
    promoted: bool


def sha256_of(path: str | Path) -> str:
    """sha256 of a file; of a directory, over its weight files (name and content, in name order)."""
    p = Path(path)
    h = hashlib.sha256()
    files = (
        [p]
        if p.is_file()
        else sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".gguf"))
    )
    for f in files:
        if p.is_dir():
            h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def model_ref(path: str | Path) -> ModelRef:
    return ModelRef(path=str(Path(path).resolve()), sha256=sha256_of(path))


def read_lineage(out_dir: str | Path) -> list[LineageRecord]:
    """The lineage's lines in iteration order (the last line per iteration wins; a cut-short last line
    from a killed run is ignored: its iteration is recorded again on resume)."""
    path = Path(out_dir) / LINEAGE
    if not path.is_file():
        return []
    by_iteration: dict[int, LineageRecord] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = LineageRecord.model_validate_json(line)
        except ValueError as exc:
            if no == len(lines):
                continue
            raise ValueError(f"{path}:{no}: not a lineage record: {str(exc)[:200]}") from None
        by_iteration[rec.iteration] = rec
    return [by_iteration[i] for i in sorted(by_iteration)]


def append_lineage(out_dir: str | Path, record: LineageRecord) -> None:
    """One flushed, fsynced line (a partial last line, left by a writer killed mid-line, is cut off
    first: that iteration is being recorded again)."""
    path = Path(out_dir) / LINEAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    with path.open("a", encoding="utf-8") as f:
        f.write(record.model_dump_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
