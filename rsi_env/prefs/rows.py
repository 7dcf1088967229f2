"""Preference rows in TRL's conversational formats, read by `DPOTrainer` / `KTOTrainer` as they are.

DPO row: `prompt` (messages up to the decision), `chosen` and `rejected` (one assistant message
each), plus metadata columns of fixed types. Both sides share the exact same prompt object.
KTO row: `prompt`, `completion` (one assistant message), `label` (bool), same metadata.
Every task family (games, judges, programming, output prediction, trivia) writes these rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

UNLEASHED_PREFIX = "UNLEASHED: "


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class RowMeta(BaseModel):
    """Metadata columns; every field has one type in every row (Arrow needs that)."""

    source: str  # game | judge | programming | predict | trivia
    task: str  # game id or task name
    # action | judgement | challenge | validator | solution | ranking | program | prediction
    # | question | answer
    level: str = "action"
    episode_id: str = ""
    seed: int = -1
    player: str = ""
    turn: int = -1
    chosen_rank: int = 0  # 0 = best
    rejected_rank: int = 0
    n_candidates: int = 0
    # Ranking scores (higher is better). A candidate that failed a hard check is ranked below every one that
    # passed, its score shifted down with the others that failed (see `demote`), so chosen_score >
    # rejected_score and margin > 0 in every row.
    chosen_score: float = 0.0
    rejected_score: float = 0.0
    margin: float = 0.0
    # Mean pairwise Kendall tau-b between the set's rankers (procedural ground truth and each LLM judge);
    # None when fewer than two of them ranked it (no panel), so -1.0 only ever means real disagreement.
    judge_agreement: float | None = None


class DPORow(RowMeta):
    prompt: list[Message]
    chosen: list[Message] = Field(min_length=1, max_length=1)
    rejected: list[Message] = Field(min_length=1, max_length=1)


class KTORow(RowMeta):
    prompt: list[Message]
    completion: list[Message] = Field(min_length=1, max_length=1)
    label: bool


HARD_CHECK_GAP = 1.0  # least score gap between the weakest candidate that passed and the best that failed


def demote(strength: dict[str, float], unchoosable: frozenset[str] | set[str]) -> dict[str, float]:
    """Scores in which every candidate in `unchoosable` (it failed a hard check: a conduct flag, a program
    the filter rejected) ranks below every other candidate, whatever the referees thought of it.

    The ranking is lexicographic (passed the check first, then strength). To keep the scores consistent
    with that order, the failing candidates are shifted down together (their own gaps kept) until the best
    of them sits `HARD_CHECK_GAP` below the weakest candidate that passed."""
    passed = [strength[c] for c in strength if c not in unchoosable]
    failed = [strength[c] for c in strength if c in unchoosable]
    if not passed or not failed:
        return dict(strength)
    shift = max(0.0, max(failed) - min(passed) + HARD_CHECK_GAP)
    return {c: s - shift if c in unchoosable else s for c, s in strength.items()}


def ranked_pairs(
    prompt: list[Message],
    completions: dict[str, str],
    strength: dict[str, float],
    meta: RowMeta,
    *,
    all_pairs: bool = False,
    margin: float = 0.0,
    unchoosable: frozenset[str] | set[str] = frozenset(),
) -> list[DPORow]:
    """DPO rows from candidate completions of one prompt ranked by `strength` (higher is better):
    best vs worst, or with `all_pairs` every better-worse pair whose gap exceeds `margin`. A candidate
    in `unchoosable` (it failed a hard check) ranks below every other one: it may be rejected, never
    chosen. `meta` gives the row's fixed columns; ranks, scores and the margin are filled in per pair."""
    score = demote(strength, unchoosable)
    order = sorted(score, key=lambda c: (-score[c], c))
    rank = {c: i for i, c in enumerate(order)}
    choosable = [c for c in order if c not in unchoosable]
    if not choosable:
        return []
    if all_pairs:
        pairs = [(a, b) for a in choosable for b in order if rank[a] < rank[b]]
    else:
        pairs = [(choosable[0], order[-1])]
    rows = []
    for a, b in pairs:
        gap = score[a] - score[b]
        if gap <= margin or gap <= 1e-9 or completions[a] == completions[b]:
            continue  # no preference, or two identical completions: nothing to learn
        columns = meta.model_dump() | {
            "chosen_rank": rank[a],
            "rejected_rank": rank[b],
            "n_candidates": len(order),
            "chosen_score": score[a],
            "rejected_score": score[b],
            "margin": gap,
        }
        rows.append(
            DPORow(
                prompt=prompt,
                chosen=[Message(role="assistant", content=completions[a])],
                rejected=[Message(role="assistant", content=completions[b])],
                **columns,
            )
        )
    return rows


def unleash(prompt: list[Message]) -> list[Message]:
    """Prefix the system prompt with `UNLEASHED: ` (for open-endedly judged tasks)."""
    if prompt and prompt[0].role == "system":
        return [Message(role="system", content=UNLEASHED_PREFIX + prompt[0].content), *prompt[1:]]
    return [Message(role="system", content=UNLEASHED_PREFIX.strip()), *prompt]


def kto_rows(rows: Iterable[DPORow]) -> list[KTORow]:
    """The KTO view of DPO pairs: one row, with one label, per (prompt, completion).

    A completion every pair agrees on keeps that label: only ever chosen = desirable, only ever
    rejected = undesirable (so best-vs-worst pairs give best = True, worst = False, and a candidate
    that failed a hard check, never chosen, is never desirable). A middle candidate of `--all-pairs`,
    chosen in one pair and rejected in another, is labelled by its rank in its set: above the median
    desirable, below it undesirable, exactly at the median (odd set sizes) dropped as uninformative."""
    seen: dict[tuple[str, str], _Occurrences] = {}
    for r in rows:
        key_prompt = json.dumps([m.model_dump() for m in r.prompt])
        sides = ((r.chosen, True, r.chosen_rank), (r.rejected, False, r.rejected_rank))
        for completion, label, rank in sides:
            occ = seen.setdefault(
                (key_prompt, completion[0].content), _Occurrences(row=r, completion=completion)
            )
            occ.labels.add(label)
            occ.positions.append(rank / max(1, r.n_candidates - 1))  # 0 = best, 1 = worst
    out: list[KTORow] = []
    for occ in seen.values():
        verdict = occ.label()
        if verdict is None:
            continue
        meta = occ.row.model_dump(exclude={"prompt", "chosen", "rejected"})
        out.append(KTORow(prompt=occ.row.prompt, completion=occ.completion, label=verdict, **meta))
    return out


@dataclass
class _Occurrences:
    """Where one (prompt, completion) appeared among the DPO rows."""

    row: DPORow  # the first row it appeared in (its metadata goes to the KTO row)
    completion: list[Message]
    labels: set[bool] = field(default_factory=set)
    positions: list[float] = field(default_factory=list)  # rank / (n - 1) in each row

    def label(self) -> bool | None:
        if len(self.labels) == 1:
            return next(iter(self.labels))
        pos = sum(self.positions) / len(self.positions)
        return None if abs(pos - 0.5) < 1e-9 else pos < 0.5


def write_rows(path: str | Path, rows: Iterable[BaseModel], append: bool = False) -> int:
    """JSONL, one row per line, flushed; returns how many rows were written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with p.open("a" if append else "w", encoding="utf-8") as f:
        for r in rows:
            f.write(r.model_dump_json() + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n
