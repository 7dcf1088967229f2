"""Stage checkpoints: a stage is done when its result file exists, so a killed loop resumes at the
stage it was in.

Each iteration has a directory `DIR/iter-N/`; each finished stage writes its result there as one
JSON file (`collect.json`, `train.json`, `export.json`, `evaluate.json`), atomically (a temporary
file renamed into place), as the stage's last act. A rerun finds the file, loads the result and skips
the stage; a stage cut short left no file and runs again (the tools under it resume too: the runner
skips finished episodes, `prefs generate` skips branched decisions).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

STAGES = ("collect", "train", "export", "evaluate")

R = TypeVar("R", bound=BaseModel)


def iteration_dir(out_dir: str | Path, iteration: int) -> Path:
    return Path(out_dir) / f"iter-{iteration}"


class Checkpoints:
    """The finished stages of one iteration."""

    def __init__(self, out_dir: str | Path, iteration: int) -> None:
        self.dir = iteration_dir(out_dir, iteration)

    def path(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        return self.dir / f"{stage}.json"

    def load(self, stage: str, model: type[R]) -> R | None:
        """The stage's result when it finished earlier, else None."""
        p = self.path(stage)
        return model.model_validate_json(p.read_text(encoding="utf-8")) if p.is_file() else None

    def save(self, stage: str, result: BaseModel) -> None:
        p = self.path(stage)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{stage}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(result.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
