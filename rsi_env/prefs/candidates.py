"""Candidate sets: several replies of a model to one exact prompt, what is known of each, and the
judges' rankings of them. Games and task families use the same models, so one path ranks them all
(`prefs.ranking`).

A task family's set (`CandidateSet`) says its procedural truth per candidate (a validator pass rate,
an exact match, ...) and which candidates failed a hard check. A game's set (`BranchSet`: moves at one
decision, each rolled out to the end) is the same model plus the decision's fields; its truth and its
hard-check failures follow from the rollouts (the procedural objective; a conduct flag).

Set ids are made by `set_id` only (`decision_id` for a game decision): `prefs generate` resumes by
looking sets up by id, so two ways of writing one would silently branch the same decision twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from ..referees.judge import Ranking
from .rows import Message, RowMeta

BRANCHES = "branch_sets.jsonl"  # a games run's sets, one line each, appended as they are made
ROLLOUTS = "rollouts.jsonl"  # the rollouts of its candidates, as episode records


def set_id(item_id: str, part: str) -> str:
    """The id of the set about `part` of `item_id` (`ITEM/PART`; PART alone for a set about no one item)."""
    return f"{item_id}/{part}" if item_id else part


def decision_id(episode_id: str, tick: int, player: str) -> str:
    """The id of the set branched at `player`'s decision at `tick` of an episode."""
    return set_id(episode_id, f"t{tick}-{player}")


class CandidateRecord(BaseModel):
    """One reply in a set."""

    id: str
    raw: str  # the model's completion: what a preference row pairs
    shown: str = ""  # what judges see (a game shows the rollout instead, built when it is judged)
    status: str = "ok"  # the model call's status

    @property
    def usable(self) -> bool:
        """Whether it takes part in the ranking: a failed call is missing, never a bad candidate."""
        return self.status == "ok"


class BranchCandidate(CandidateRecord):
    """A candidate move at a game decision and how its rollout ended."""

    rollout_id: str = ""
    rollout_status: str = ""
    payoff: float | None = None
    best: float | None = None
    flags: int = 0  # the decider's conduct flags from the decision on
    objective: float | None = None  # procedural score: normalised payoff minus conduct penalty

    @property
    def usable(self) -> bool:
        # A reply the game took (even an invalid one) whose rollout finished; an aborted rollout is an
        # infrastructure failure, not the move's fault, so it is missing rather than ranked.
        return self.objective is not None


class JudgeRecord(BaseModel):
    """A judge's ranking of a set, as stored with the set (`Ranking` is the in-memory form)."""

    judge: str
    scores: dict[str, float | None]
    reasoning: dict[str, str] = Field(default_factory=dict)
    status: str = "ok"
    prompt: list[dict[str, str]] = Field(default_factory=list)
    response: str = ""
    pairwise: list[tuple[str, str, str]] = Field(default_factory=list)

    @classmethod
    def of(cls, r: Ranking) -> JudgeRecord:
        return cls(
            judge=r.judge,
            scores=r.scores,
            reasoning=r.reasoning,
            status=r.status,
            prompt=r.prompt,
            response=r.response,
            pairwise=[(a, b, w) for (a, b), w in r.pairwise.items()],
        )

    def ranking(self, set_id: str) -> Ranking:
        return Ranking(
            judge=self.judge,
            set_id=set_id,
            scores=dict(self.scores),
            reasoning=dict(self.reasoning),
            status=self.status,
            prompt=list(self.prompt),
            response=self.response,
            pairwise={(a, b): w for a, b, w in self.pairwise},
        )


class CandidateSet(BaseModel):
    """Replies to one exact prompt (so any two can form a DPO pair), their procedural truth where one
    exists, the candidates that failed a hard check, and the panel's rankings."""

    # The names a rubric's ranking question may use for a set of this kind (see `question_fields`).
    FIELDS: ClassVar[tuple[str, ...]] = ("task", "level", "item")

    set_id: str
    task: str = ""  # the task family (or game id): the rows' `task`
    level: str  # action | challenge | validator | solution | program | prediction | question | answer
    item_id: str  # what the set is about: a challenge, program, page, question, base episode
    seed: int = -1
    prompt: list[Message]
    question: str = ""  # what the judges were asked
    context: str = ""  # what the judges were shown before the candidates
    candidates: list[CandidateRecord]
    truth: dict[str, float | None] = Field(default_factory=dict)
    # Candidates that failed a hard procedural check (a program the filter rejected, a validator that never
    # ran, a move with a conduct flag): they can be the rejected side of a pair, never the chosen one.
    invalid: list[str] = Field(default_factory=list)
    judges: list[JudgeRecord] = Field(default_factory=list)

    def rankings(self) -> list[Ranking]:
        return [j.ranking(self.set_id) for j in self.judges]

    def usable_ids(self) -> list[str]:
        return [c.id for c in self.candidates if c.usable]

    def question_fields(self) -> dict[str, object]:
        return {"task": self.task, "level": self.level, "item": self.item_id}

    def row_meta(self, agreement: float | None) -> RowMeta:
        """The fixed columns of this set's rows."""
        return RowMeta(
            source=self.task,
            task=self.task,
            level=self.level,
            episode_id=self.item_id,
            seed=self.seed,
            judge_agreement=agreement,
        )


class BranchSet(CandidateSet):
    """K candidate moves for one game decision, their rollouts' outcomes, and the judges' rankings."""

    FIELDS: ClassVar[tuple[str, ...]] = (*CandidateSet.FIELDS, "game", "player", "role", "turn", "tick")

    level: str = "action"
    item_id: str = ""  # = base_episode
    game: str
    base_episode: str
    seed: int
    player: str
    role: str
    tick: int
    turn: int
    candidates: list[BranchCandidate]  # type: ignore[assignment]  # the game fields of each candidate
    draws: int = 0  # model calls that sampled the candidates (repeated moves drawn again); 0: not recorded

    @model_validator(mode="before")
    @classmethod
    def _decision_fields(cls, data: Any) -> Any:
        """Lines written before sets were unified lack `task` and `item_id`: they are the game and episode."""
        if isinstance(data, dict):
            data = dict(data)
            data.setdefault("task", data.get("game", ""))
            data.setdefault("item_id", data.get("base_episode", ""))
        return data

    @model_validator(mode="after")
    def _truth_from_rollouts(self) -> BranchSet:
        """The truth is the rolled-out candidates' objective; a conduct flag is a failed hard check."""
        self.truth = {c.id: c.objective for c in self.candidates if c.rollout_id}
        self.invalid = [c.id for c in self.candidates if c.flags > 0]
        return self

    def question_fields(self) -> dict[str, object]:
        decision = {
            "game": self.game,
            "player": self.player,
            "role": self.role,
            "turn": self.turn,
            "tick": self.tick,
        }
        return super().question_fields() | decision

    def row_meta(self, agreement: float | None) -> RowMeta:
        meta = super().row_meta(agreement)
        return meta.model_copy(update={"source": "game", "player": self.player, "turn": self.turn})


def read_sets(run_dir: str | Path) -> list[BranchSet]:
    """A games run's branch sets, the latest line of each set id (a rerun may supersede a line)."""
    path = Path(run_dir) / BRANCHES
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no branch sets here; run `python -m rsi_env.prefs generate` first")
    latest: dict[str, BranchSet] = {}
    for bs in _stream_sets(path):
        latest[bs.set_id] = bs
    return list(latest.values())


def _stream_sets(path: Path) -> Iterator[BranchSet]:
    """The file's sets, read line by line. A line that is not a set is an error naming file:line, except a
    last line with no newline: a line cut short by an interrupted run, skipped."""
    with path.open(encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield BranchSet.model_validate_json(line)
            except ValidationError as exc:
                if not line.endswith("\n"):
                    return
                raise ValueError(f"{path}:{no}: not a branch set: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "the line"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


def append_set(run_dir: Path, bs: BranchSet, rollouts: list[BaseModel]) -> None:
    """One set and its rollouts, appended as whole lines (rollouts first: a set never names a missing one)."""
    with (run_dir / ROLLOUTS).open("a", encoding="utf-8") as f:
        f.writelines(r.model_dump_json() + "\n" for r in rollouts)
    with (run_dir / BRANCHES).open("a", encoding="utf-8") as f:
        f.write(bs.model_dump_json() + "\n")
