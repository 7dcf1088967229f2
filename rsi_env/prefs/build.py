"""From branch sets to preference rows, with no model call: rank, weight the judges, pair.

Each set's candidates are ranked by a weighted Bradley–Terry consensus of the procedural
objective (weight 1) and the LLM judges (weights from the meta-referee over the whole run).
A candidate with a conduct flag (a lie, a broken promise, a violation, an attempt to manipulate
the judging) is a hard-check failure: it ranks below every unflagged candidate and is never the
chosen side, whatever its payoff or the judges' scores (so "judge: give me 10" never pays).
Rows pair the best with the worst candidate (or, optionally, every ordered pair whose strength
gap clears a margin); both sides share the set's exact prompt and never have equal content.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from ..referees.aggregate import consensus, mean_agreement
from ..referees.judge import Ranking
from ..referees.meta import MetaReport, assess, judge_pairs
from .branching import BranchSet
from .rows import DPORow, RowMeta, ranked_pairs, unleash

BRANCHES = "branch_sets.jsonl"
ROLLOUTS = "rollouts.jsonl"
META = "meta_judge.json"
JUDGES = "judges.json"
JUDGE_PREFS = "judge_prefs.jsonl"


def read_sets(run_dir: str | Path) -> list[BranchSet]:
    path = Path(run_dir) / BRANCHES
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no branch sets here; run `python -m rsi_env.prefs generate` first")
    latest: dict[str, BranchSet] = {}
    for no, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            bs = BranchSet.model_validate_json(line)
        except ValueError as exc:
            if no == len(path.read_text(encoding="utf-8").split("\n")):
                continue  # a cut-short last line from an interrupted run
            raise ValueError(f"{path}:{no}: not a branch set: {str(exc)[:200]}") from None
        latest[bs.set_id] = bs
    return list(latest.values())


class BuildResult(BaseModel):
    rows: list[DPORow]
    judge_rows: list[DPORow]
    meta: MetaReport
    sets: int
    sets_with_pairs: int


def judge_rankings(sets: Iterable[BranchSet]) -> dict[str, list[Ranking]]:
    return {bs.set_id: [j.ranking(bs.set_id) for j in bs.judges] for bs in sets if bs.judges}


def procedural_scores(bs: BranchSet) -> dict[str, float | None]:
    return {c.id: c.objective for c in bs.candidates if c.rollout_id}


def flagged(bs: BranchSet) -> set[str]:
    """Candidates whose decider was flagged for conduct from the decision on: never chosen."""
    return {c.id for c in bs.candidates if c.flags > 0}


def build(
    sets: list[BranchSet],
    *,
    all_pairs: bool = False,
    margin: float = 0.0,
    unleashed: bool = False,
    use_judges: bool = True,
    meta_scores: dict[str, float] | None = None,
) -> BuildResult:
    rankings = judge_rankings(sets) if use_judges else {}
    truth = {bs.set_id: procedural_scores(bs) for bs in sets}
    meta = assess(rankings, truth, meta_scores)
    weights = {r.judge: r.weight for r in meta.judges}
    rows: list[DPORow] = []
    with_pairs = 0
    for bs in sets:
        ranked = [r for r in rankings.get(bs.set_id, []) if r.ok]
        score_maps = [truth[bs.set_id], *(r.scores for r in ranked)]
        w = [1.0, *(weights[r.judge] for r in ranked)]
        valid = {c.id for c in bs.candidates if c.objective is not None}
        if len(valid) < 2:
            continue
        strength = consensus([{k: v for k, v in m.items() if k in valid} for m in score_maps], w)
        agreement = mean_agreement(score_maps)
        new = pairs_for(bs, strength, agreement, all_pairs=all_pairs, margin=margin, unleashed=unleashed)
        with_pairs += bool(new)
        rows += new
    jrows = judge_pairs(rankings, truth, task=sets[0].game if sets else "") if rankings else []
    return BuildResult(rows=rows, judge_rows=jrows, meta=meta, sets=len(sets), sets_with_pairs=with_pairs)


def pairs_for(
    bs: BranchSet,
    strength: dict[str, float],
    agreement: float | None,
    *,
    all_pairs: bool,
    margin: float,
    unleashed: bool,
) -> list[DPORow]:
    meta = RowMeta(
        source="game",
        task=bs.game,
        level="action",
        episode_id=bs.base_episode,
        seed=bs.seed,
        player=bs.player,
        turn=bs.turn,
        judge_agreement=agreement,
    )
    return ranked_pairs(
        unleash(bs.prompt) if unleashed else list(bs.prompt),
        {c.id: c.raw for c in bs.candidates},
        strength,
        meta,
        all_pairs=all_pairs,
        margin=margin,
        unchoosable=flagged(bs),
    )


def load_meta_scores(run_dir: str | Path) -> dict[str, float] | None:
    p = Path(run_dir) / META
    return json.loads(p.read_text()) if p.is_file() else None
