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
    chosen_score: float = 0.0
    rejected_score: float = 0.0
    margin: float = 0.0
    judge_agreement: float = -1.0  # mean pairwise Kendall tau of the judges; -1 when not judged by a panel


class DPORow(RowMeta):
    prompt: list[Message]
    chosen: list[Message] = Field(min_length=1, max_length=1)
    rejected: list[Message] = Field(min_length=1, max_length=1)


class KTORow(RowMeta):
    prompt: list[Message]
    completion: list[Message] = Field(min_length=1, max_length=1)
    label: bool


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
    in `unchoosable` (it failed a hard check) may be rejected, never chosen. `meta` gives the row's
    fixed columns; ranks, scores and the margin are filled in per pair."""
    order = sorted(strength, key=lambda c: (-strength[c], c))
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
        gap = strength[a] - strength[b]
        if gap <= margin or gap <= 1e-9 or completions[a] == completions[b]:
            continue  # no preference, or two identical completions: nothing to learn
        columns = meta.model_dump() | {
            "chosen_rank": rank[a],
            "rejected_rank": rank[b],
            "n_candidates": len(order),
            "chosen_score": strength[a],
            "rejected_score": strength[b],
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
    """The KTO view of DPO pairs: each chosen a desirable, each rejected an undesirable example."""
    out: list[KTORow] = []
    seen: set[tuple[str, str]] = set()
    for r in rows:
        meta = r.model_dump(exclude={"prompt", "chosen", "rejected"})
        key_prompt = json.dumps([m.model_dump() for m in r.prompt])
        for completion, label in ((r.chosen, True), (r.rejected, False)):
            key = (key_prompt, completion[0].content + str(label))
            if key in seen:
                continue
            seen.add(key)
            out.append(KTORow(prompt=r.prompt, completion=completion, label=label, **meta))
    return out


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
