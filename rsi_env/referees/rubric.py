"""Rubrics (`referees/*.yaml`): dimensions with a name, a description and a numeric range.

A judge answers every dimension as a typed `(reasoning, score)` pair (Sotopia-style); the JSON
Schema it is constrained with is built here from the rubric and the players being judged.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..catalog import content_dir
from ..spec import format_validation_error

REASONING_CHARS = 160  # short rationales: judges are often small models and output is slow


class RubricError(Exception):
    pass


class Dimension(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    range: tuple[int, int] = (0, 10)

    @model_validator(mode="after")
    def _ordered(self) -> Dimension:
        if self.range[0] >= self.range[1]:
            raise ValueError(f"range {list(self.range)} must go from low to high")
        return self

    def normalise(self, score: float) -> float:
        """Map a score to [0, 1] so dimensions with different ranges can be combined."""
        lo, hi = self.range
        return (score - lo) / (hi - lo)


class Rubric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    scope: Literal["player", "game"] = "player"
    description: str = ""
    dimensions: list[Dimension] = Field(min_length=1)

    def dimension(self, name: str) -> Dimension:
        return next(d for d in self.dimensions if d.name == name)

    def scores_schema(self) -> dict[str, Any]:
        """Schema of one subject's scores: every dimension as {reasoning, score}."""
        return {
            "type": "object",
            "properties": {
                d.name: {
                    "type": "object",
                    "properties": {
                        "reasoning": {"type": "string", "maxLength": REASONING_CHARS},
                        "score": {"type": "integer", "minimum": d.range[0], "maximum": d.range[1]},
                    },
                    "required": ["reasoning", "score"],
                    "additionalProperties": False,
                }
                for d in self.dimensions
            },
            "required": [d.name for d in self.dimensions],
            "additionalProperties": False,
        }

    def verdict_schema(self, subjects: list[str]) -> dict[str, Any]:
        """Schema of a whole verdict: subject (player id, or "game") -> dimension scores."""
        one = self.scores_schema()
        return {
            "type": "object",
            "properties": {s: one for s in subjects},
            "required": list(subjects),
            "additionalProperties": False,
        }

    def describe(self) -> str:
        return "\n".join(f"- {d.name} ({d.range[0]}..{d.range[1]}): {d.description}" for d in self.dimensions)


def rubric_files() -> dict[str, Path]:
    return {f.stem: f for f in sorted(content_dir("referees").glob("*.yaml"))}


@cache
def load_rubric(name: str) -> Rubric:
    """A rubric by id (`referees/<id>.yaml`) or path."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        files = rubric_files()
        if name not in files:
            raise RubricError(f"unknown rubric {name!r}; known: {', '.join(files)}")
        path = files[name]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Rubric.model_validate(data)
    except OSError as exc:
        raise RubricError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RubricError(f"{path}: invalid YAML: {exc}") from None
    except ValidationError as exc:
        raise RubricError(f"{path}: " + "; ".join(format_validation_error(exc))) from None
