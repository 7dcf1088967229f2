"""Collect: preference rows from the current model's own play, with `prefs generate` and `prefs build`.

For every game and every opponent kind the current model plays `episodes` episodes (seats cycled:
the model first, the opponent second), its decisions are branched `branch` ways, each candidate is
rolled out, the rollouts are scored (procedural payoffs and conduct, and the judge panel's ranking
where `judges` are given) and the rows are built: the same pipeline, referees and conduct rules as
`python -m rsi_env.prefs generate`, into `iter-N/collect/<game>-<opponent>/`. Their rows are then
concatenated into `iter-N/prefs.jsonl` and `iter-N/kto.jsonl`.

Opponents: `scripted` (the game's own policy), `random`, `self` (the current model in every seat:
both seats' decisions are branched), or any agent profile (`local` = the embedded original model).

The yield is measured from the run's own records: decision sets branched, sets with a preference,
and rows per 1,000 model calls (the calls behind the episodes, the candidates, the rollouts and the
judges' rankings).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from ..prefs.candidates import BRANCHES, ROLLOUTS, read_sets
from ..trajectory import Episode
from ..trajectory_store import read_episodes


class RunYield(BaseModel):
    game: str
    opponent: str
    run_dir: str
    episodes: int
    sets: int
    sets_with_preference: int
    rows: int
    model_calls: int


class CollectResult(BaseModel):
    prefs: str  # the iteration's DPO rows
    kto: str
    rows: int
    kto_rows: int
    sets: int
    sets_with_preference: int
    model_calls: int
    yield_per_1k_calls: float
    seconds: float
    runs: list[RunYield] = Field(default_factory=list)


class CollectPlan(BaseModel):
    games: list[str]
    opponents: list[str]
    episodes: int
    branch: int
    decisions: int
    judges: str
    seed: int
    concurrency: int = 4


def opponent_agents(model_agent: str, opponent: str) -> list[str]:
    """Seats for one collection run: the model, then its opponent (cycled over the seats)."""
    return [model_agent] if opponent == "self" else [model_agent, opponent]


def prefs_generate(run_dir: Path, game: str, agents: list[str], plan: CollectPlan, quiet: bool) -> int:
    """`python -m rsi_env.prefs generate` for one run; its exit status (1: nothing could be branched).

    The one place the loop calls the preference pipeline: its command line is the stable interface."""
    from ..prefs.__main__ import main as prefs_main

    argv = [
        "generate", "--game", game, "--agents", ",".join(agents), "--episodes", str(plan.episodes),
        "--branch", str(plan.branch), "--decisions", str(plan.decisions), "--judges", plan.judges,
        "--meta-judge", "", "--rubric", "", "--seed", str(plan.seed), "--concurrency", str(plan.concurrency),
        "--out", str(run_dir),
    ]  # fmt: skip
    if quiet:
        argv.append("--quiet")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
            return prefs_main(argv)
    except SystemExit as exc:  # `fail()`: bad input (2) or nothing branched (1)
        code = exc.code if isinstance(exc.code, int) else 1
        if code != 1:
            raise
        return code


def count_model_calls(run_dir: Path) -> int:
    """Model calls recorded in a `prefs generate` run directory."""
    calls = 0
    for ep in read_episodes(run_dir):
        calls += _episode_calls(ep, from_tick=0)
        calls += sum(1 for v in ep.verdicts if v.kind == "llm")
    if (run_dir / BRANCHES).is_file():
        for bs in read_sets(run_dir):
            calls += max(bs.draws, len(bs.candidates))  # the samples at the decision, repeats included
            calls += sum(len(j.pairwise) or 1 for j in bs.judges)
    for line in _lines(run_dir / ROLLOUTS):
        ep = Episode.model_validate_json(line)
        if ep.branch_of is not None:  # after the decision: its own move was a candidate, counted above
            calls += _episode_calls(ep, from_tick=int(ep.branch_of["tick"]) + 1)
    return calls


def _episode_calls(ep: Episode, from_tick: int) -> int:
    return sum(1 + len(t.failed_calls) for t in ep.turns if t.prompt is not None and t.tick >= from_tick)


def collect(out_dir: Path, model_agent: str, plan: CollectPlan, *, quiet: bool = False) -> CollectResult:
    """Run every (game, opponent) collection, then gather their rows and yield."""
    t0 = time.perf_counter()
    runs: list[RunYield] = []
    dpo_lines: list[str] = []
    kto_lines: list[str] = []
    for game in plan.games:
        for opponent in plan.opponents:
            run_dir = out_dir / "collect" / f"{game}-{opponent.replace('/', '_')}"
            prefs_generate(run_dir, game, opponent_agents(model_agent, opponent), plan, quiet)
            dpo = _lines(run_dir / "prefs.jsonl")
            kto_lines += _lines(run_dir / "kto.jsonl")
            dpo_lines += dpo
            sets = read_sets(run_dir) if (run_dir / BRANCHES).is_file() else []
            runs.append(
                RunYield(
                    game=game,
                    opponent=opponent,
                    run_dir=str(run_dir),
                    episodes=sum(1 for _ in read_episodes(run_dir)) if run_dir.exists() else 0,
                    sets=len(sets),
                    sets_with_preference=_sets_with_rows(dpo),
                    rows=len(dpo),
                    model_calls=count_model_calls(run_dir) if run_dir.exists() else 0,
                )
            )
    prefs_path, kto_path = out_dir / "prefs.jsonl", out_dir / "kto.jsonl"
    _write_lines(prefs_path, dpo_lines)
    _write_lines(kto_path, kto_lines)
    calls = sum(r.model_calls for r in runs)
    rows = sum(r.rows for r in runs)
    return CollectResult(
        prefs=str(prefs_path.resolve()),
        kto=str(kto_path.resolve()),
        rows=rows,
        kto_rows=len(kto_lines),
        sets=sum(r.sets for r in runs),
        sets_with_preference=sum(r.sets_with_preference for r in runs),
        model_calls=calls,
        yield_per_1k_calls=1000.0 * rows / calls if calls else 0.0,
        seconds=time.perf_counter() - t0,
        runs=runs,
    )


def _sets_with_rows(lines: list[str]) -> int:
    from ..prefs.rows import DPORow

    return len({(r.episode_id, r.player, r.turn) for r in (DPORow.model_validate_json(x) for x in lines)})


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
