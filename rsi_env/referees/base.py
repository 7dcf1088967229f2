"""The referee extension point: one small base class for everything that scores a recorded episode.

A referee reads an `Episode` (its typed events, flags, payoffs, turns) and the game's spec, and returns
a `Verdict`: per player, per dimension, a score and one line of reasoning. A procedural referee computes
it with no model call (subclass `ProceduralReferee`, write `scores`); an LLM evaluator asks a model
(subclass `Referee`, write `async score`), as Sotopia's rule-based and LLM evaluators share one
`Evaluator` base. The built-in ones: `procedural.PayoffAndConduct` (payoffs, conduct flags, invalid
moves) and `panel.RubricJudge` (an LLM judge on a rubric).

`score_episodes` (`panel.py`) runs any list of referees and adds each one's verdict once per
(`id`, `rubric`); `python -m rsi_env.play --referee MODULE:CLASS` adds one to a run, and `report`
shows its dimensions beside the others (README: "Adding a referee").
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

from ..spec import GameSpec
from ..trajectory import DimensionScore, Episode, Verdict

Scores = dict[str, dict[str, DimensionScore]]  # player -> dimension -> score


class RefereeError(Exception):
    """A referee that cannot be loaded (a bad MODULE:CLASS); the message names it."""


class Referee(ABC):
    """Scores recorded episodes. `id` and `rubric` name its verdicts (`Verdict.judge`, `.rubric`)."""

    id: str
    rubric: str
    kind: ClassVar[Literal["procedural", "llm"]] = "llm"
    # An aborted episode has no payoffs; only referees that score what happened anyway (procedural
    # facts such as invalid moves) see it.
    scores_aborted: ClassVar[bool] = False

    @abstractmethod
    async def score(self, ep: Episode, spec: GameSpec) -> Verdict:
        """This referee's verdict on `ep`. A failed model call is a verdict with that `status` and no
        scores (missing, never zero); it must not raise for it."""


class ProceduralReferee(Referee):
    """A referee that needs no model: `scores` is a plain function of the record."""

    kind: ClassVar[Literal["procedural", "llm"]] = "procedural"
    scores_aborted: ClassVar[bool] = True

    @abstractmethod
    def scores(self, ep: Episode, spec: GameSpec) -> Scores:
        """Per player, per dimension: a score (None when it cannot be computed) and its reasoning."""

    def verdict(self, ep: Episode, spec: GameSpec) -> Verdict:
        return Verdict(judge=self.id, rubric=self.rubric, kind="procedural", scores=self.scores(ep, spec))

    async def score(self, ep: Episode, spec: GameSpec) -> Verdict:
        return self.verdict(ep, spec)


def load_referee(target: str) -> Referee:
    """`MODULE:NAME`: a `Referee` subclass (built with no arguments) or instance in an importable module."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise RefereeError(f"--referee {target!r}: expected MODULE:CLASS, e.g. my_referee:Talk")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # someone else's module: one clear message, no traceback
        raise RefereeError(f"--referee {target}: {type(exc).__name__}: {exc}") from None
    try:
        referee = found() if isinstance(found, type) else found
    except Exception as exc:
        raise RefereeError(f"--referee {target}: building it failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(referee, Referee):
        raise RefereeError(f"--referee {target}: {attr} is not a Referee (rsi_env.referees.base)")
    for name in ("id", "rubric"):
        if not isinstance(getattr(referee, name, None), str) or not getattr(referee, name):
            raise RefereeError(f"--referee {target}: it needs a non-empty `{name}`")
    return referee
