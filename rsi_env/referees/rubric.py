"""Rubrics (`referees/*.yaml`): dimensions with a name, a description and a numeric range, and how
judges rank candidates.

A judge answers every dimension as a typed `(reasoning, score)` pair (Sotopia-style); the JSON
Schema it is constrained with is built here from the rubric and the players being judged.

A rubric's `ranking:` block says, per level of candidate set (`action` for a move at a game decision;
`challenge`, `validator`, `solution`, `program`, `question`, `answer` for the task families), the
question judges are asked about the candidates (a template: `{player}` etc. are filled from the set)
and the dimensions they score each candidate on, with a weight each (negative: lower is better).
With no dimensions, a judge gives each candidate one overall score. This is what decides which side
of a preference pair wins, so a new rubric changes the data, not only the scores.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..catalog import content_dir
from ..spec import format_validation_error

REASONING_CHARS = 160  # short rationales: judges are often small models and output is slow
OVERALL_RANGE = (0, 10)  # the one score per candidate when a ranking names no dimensions


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


class LevelRanking(BaseModel):
    """How judges rank the candidates of one level: `ranking: {LEVEL: {question, dimensions}}`."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)  # a template; `{name}` is filled from the candidate set
    # dimension of this rubric -> weight; a negative weight means lower is better. Empty: one overall score.
    dimensions: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _weights(self) -> LevelRanking:
        zero = [d for d, w in self.dimensions.items() if w == 0]
        if zero:
            raise ValueError(f"dimension weight 0 for {zero}: leave the dimension out instead")
        try:
            list(string.Formatter().parse(self.question))
        except ValueError as exc:
            raise ValueError(f"question: {exc} (write a literal brace as {{{{ or }}}})") from None
        return self


class Rubric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    scope: Literal["player", "game"] = "player"
    description: str = ""
    # What judges score whole episodes (or games) on; a rubric made only to rank candidates may have none.
    dimensions: list[Dimension] = Field(default_factory=list)
    ranking: dict[str, LevelRanking] = Field(default_factory=dict)  # level -> how its sets are ranked

    @model_validator(mode="after")
    def _consistent(self) -> Rubric:
        if not self.dimensions and not self.ranking:
            raise ValueError("a rubric needs `dimensions`, a `ranking` block, or both")
        names = {d.name for d in self.dimensions}
        for level, r in self.ranking.items():
            unknown = sorted(set(r.dimensions) - names)
            if unknown:
                raise ValueError(
                    f"ranking.{level}.dimensions: {unknown} are not dimensions of this rubric {sorted(names)}"
                )
        return self

    def criteria(self, level: str) -> Criteria:
        """How judges rank a set of this level; a RubricError names the levels the rubric has."""
        r = self.ranking.get(level)
        if r is None:
            have = ", ".join(self.ranking) or "none"
            raise RubricError(
                f"rubric {self.id!r} has no ranking for `{level}` candidates (it ranks: {have}); "
                f"add `ranking: {{{level}: {{question: ...}}}}` to it"
            )
        dims = tuple((self.dimension(name), w) for name, w in r.dimensions.items())
        return Criteria(rubric=self.id, level=level, template=r.question, dimensions=dims)

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


@dataclass(frozen=True)
class Criteria:
    """What judges score each candidate of a set on, and how the scores combine into one.

    With no dimensions a candidate gets one overall score in 0..10; with dimensions it is scored on each
    (in the dimension's range), and its score is the weighted mean of the normalised scores (a negative
    weight counts 1 - normalised), on the same 0..10 scale. A missing dimension leaves the candidate's
    score missing (never a zero), so the answer does not count as a complete ranking."""

    rubric: str = ""
    level: str = ""
    template: str = ""
    dimensions: tuple[tuple[Dimension, float], ...] = ()

    def check(self, available: Iterable[str]) -> None:
        """A RubricError naming any `{name}` of the question that a set does not have."""
        have = sorted(available)
        wanted = {name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None}
        unknown = sorted(wanted - set(have))
        if unknown:
            raise RubricError(
                f"rubric {self.rubric!r}: ranking.{self.level}.question uses {unknown}; "
                f"available here: {have}"
            )

    def question(self, fields: Mapping[str, object] | None = None) -> str:
        """The question with its `{name}` placeholders filled from `fields` (and the dimensions listed)."""
        fields = dict(fields or {})
        self.check(fields)
        text = self.template.format_map(fields)
        if self.dimensions:
            lines = [f"- {d.name} ({d.range[0]}..{d.range[1]}): {d.description}" for d, _ in self.dimensions]
            text += "\nJudge them on these dimensions:\n" + "\n".join(lines)
        return text

    def instruction(self) -> str:
        if not self.dimensions:
            return "Score every candidate from 0 (worst) to 10 (best)."
        return "Score every candidate on every dimension, each within its range."

    def item_schema(self) -> dict[str, Any]:
        """The JSON Schema of one candidate's answer."""
        if not self.dimensions:
            return _scored(OVERALL_RANGE)
        return {
            "type": "object",
            "properties": {d.name: _scored(d.range) for d, _ in self.dimensions},
            "required": [d.name for d, _ in self.dimensions],
            "additionalProperties": False,
        }

    def answer_tokens(self) -> int:
        """A token budget for one candidate's answer."""
        return max(1, len(self.dimensions)) * (REASONING_CHARS // 3 + 12)

    def read(self, item: object) -> tuple[float | None, str]:
        """(score, reasoning) from one candidate's answer; score None when any part is missing."""
        if not self.dimensions:
            return _score_of(item, OVERALL_RANGE), _reasoning_of(item)
        got = item if isinstance(item, dict) else {}
        total, weights, why = 0.0, 0.0, []
        missing = False
        for d, w in self.dimensions:
            part = got.get(d.name)
            score = _score_of(part, d.range)
            why.append(f"{d.name} {score if score is not None else '?'}: {_reasoning_of(part)}")
            if score is None:
                missing = True
                continue
            x = d.normalise(score)
            total += abs(w) * (x if w > 0 else 1 - x)
            weights += abs(w)
        combined = None if missing else round(OVERALL_RANGE[1] * total / weights, 6)
        return combined, "; ".join(why)


HOLISTIC = Criteria()  # one overall score per candidate, asked with the question as given


def _scored(rng: tuple[int, int]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string", "maxLength": REASONING_CHARS},
            "score": {"type": "integer", "minimum": rng[0], "maximum": rng[1]},
        },
        "required": ["reasoning", "score"],
        "additionalProperties": False,
    }


def _score_of(item: object, rng: tuple[int, int]) -> float | None:
    score = item.get("score") if isinstance(item, dict) else None
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None
    return float(score) if rng[0] <= score <= rng[1] else None


def _reasoning_of(item: object) -> str:
    return str(item.get("reasoning", "")) if isinstance(item, dict) else ""


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
