"""One generation run: generate → validate (+ repair) → near-duplicate check → play-test → rank → accept.

Every attempt ends as one `AttemptRecord`: a line in the JSONL log and a line on the console
(generated, valid after repair, passed play-test, accepted, and why not). The run ends with the
rates and the diversity figures of the accepted games and of the whole pool.

Near-duplicates are checked right after validation (against every game on the search path, the
output folder and the games passing earlier in the run): a copy is rejected before a play-test is
spent on it.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from ..catalog import game_dirs, game_files
from ..llm import Chat
from ..referees.judge import LLMJudge
from ..referees.meta import MetaReport
from ..referees.rubric import Rubric
from ..spec import GameSpec, SpecError, read_spec_file
from .diversity import NEAR_DUPLICATE, DiversityReport, NearDuplicate, diversity, near_duplicates
from .generator import CallLog, Generation, GenerationConfig, generate, sample_brief
from .playtest import EPISODES, SKILL_SEEDS, PlaytestResult, ProceduralMetrics, playtest
from .rank import RankEntry, rank_games

Stage = Literal[
    "llm", "parse", "schema", "static", "dry_run", "duplicate", "playtest", "quality", "write", "accepted"
]


class AttemptRecord(BaseModel):
    """One attempt, as logged (one JSON line) and reported (one console line)."""

    run_id: str
    attempt: int
    attempt_id: str
    timestamp: str
    theme: str
    mechanic: str
    profile: str | None = None
    model: str | None = None
    prompt_hash: str = ""
    calls: list[CallLog] = Field(default_factory=list)
    generated: bool = False  # the model replied with something
    valid: bool = False  # after the repair round, if there was one
    repaired: bool = False  # valid only after the repair round
    spec_id: str | None = None
    nearest: NearDuplicate | None = None
    playtest: PlaytestResult | None = None
    ranking: RankEntry | None = None
    decision: Literal["accepted", "rejected", "pending"] = "pending"
    stage: Stage | None = None  # where the attempt stopped
    reason: str = ""
    game_id: str | None = None  # the id it was accepted under
    path: str | None = None

    def line(self) -> str:
        def yn(flag: bool | None) -> str:
            return "-" if flag is None else ("yes" if flag else "no")

        valid = yn(self.valid) if self.generated else "-"
        if self.repaired:
            valid += " (after repair)"
        elif not self.valid and len(self.calls) > 1:
            valid += " (repair failed)"
        passed = None if self.playtest is None else self.playtest.passed
        head = f"#{self.attempt} {self.attempt_id} [{self.spec_id or '?'}]"
        why = f"  — {self.reason}" if self.decision != "accepted" else f"  → {self.path}"
        return (
            f"{head} generated {yn(self.generated)} | valid {valid} | passed play-test {yn(passed)} | "
            f"accepted {yn(self.decision == 'accepted')}{why}"
        )


class RunConfig(BaseModel):
    n: int
    seed: int
    theme: str | None = None
    out_dir: Path
    log_path: Path
    profile: str | None = None
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    near_duplicate: float = NEAR_DUPLICATE
    min_quality: float = 0.0  # judges' weighted mean quality in [0, 1] needed to accept (0 = off)
    episodes: int = EPISODES
    skill_seeds: int = SKILL_SEEDS
    ray: str | None = None  # play-tests as Ray tasks on this cluster (`--ray`), else in this process


class RunReport(BaseModel):
    run_id: str
    attempts: list[AttemptRecord]
    rates: dict[str, int]
    why_not: dict[str, int]
    diversity: list[DiversityReport]
    meta: MetaReport | None = None
    on_search_path: bool = True

    def rate_line(self) -> str:
        n = self.rates["attempts"] or 1

        def pct(k: str) -> str:
            return f"{self.rates[k]}/{self.rates['attempts']} ({100 * self.rates[k] / n:.0f}%)"

        return (
            f"generated {pct('generated')} · valid {pct('valid')}, {self.rates['repaired']} of them only "
            f"after repair · passed play-test {pct('passed_playtest')} · accepted {pct('accepted')}"
        )


def load_pool(out_dir: Path) -> dict[str, GameSpec]:
    """Every game a new one must differ from: the search path and the output folder."""
    files = dict(game_files())
    if out_dir.is_dir():
        for f in sorted(out_dir.glob("*.yaml")):
            files.setdefault(f.stem, f)
    pool = {}
    for gid, path in files.items():
        try:
            pool[gid] = read_spec_file(path)
        except SpecError:
            continue  # an invalid file is reported by `games list`, not here
    return pool


def unique_id(wanted: str, taken: set[str]) -> str:
    if wanted not in taken:
        return wanted
    for k in range(2, 1000):
        suffix = f"_{k}"
        cand = wanted[: 40 - len(suffix)] + suffix
        if cand not in taken:
            return cand
    raise ValueError(f"no free id for {wanted!r}")


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_spec(spec: GameSpec) -> str:
    body = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    body.pop("provenance", None)
    body["provenance"] = spec.provenance  # last: the game first, then who made it
    return yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def write_game(spec: GameSpec, out_dir: Path) -> Path:
    """Write `<out_dir>/<id>.yaml` and check it reads back as the same game."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.id}.yaml"
    path.write_text(dump_spec(spec), encoding="utf-8")
    back = read_spec_file(path)
    if back.spec_hash() != spec.spec_hash():
        path.unlink()
        raise SpecError(str(path), ["the written file does not read back as the same spec"])
    return path


def _provenance(rec: AttemptRecord, gen: Generation, original_id: str) -> dict[str, Any]:
    pt = rec.playtest
    r = rec.ranking
    scores: dict[str, Any] = {}
    if pt is not None and pt.metrics is not None:
        scores["procedural_metrics"] = {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in pt.metrics.model_dump().items()
        }
    if r is not None:
        scores.update(
            procedural=round(r.procedural, 4),
            judges={j.judge: None if j.quality is None else round(j.quality, 4) for j in r.judges},
            judge_quality=None if r.judge_quality is None else round(r.judge_quality, 4),
            consensus=r.consensus,
            rank=f"{r.rank} of {r.of}",
        )
    return {
        "generator": "rsi_env.generate",
        "model": gen.model,
        "profile": rec.profile,
        "prompt_hash": gen.prompt_hash,
        "theme": rec.theme,
        "mechanic": rec.mechanic,
        "run": rec.run_id,
        "attempt": rec.attempt_id,
        "created": rec.timestamp,
        "repaired": rec.repaired,
        "original_id": original_id,
        "nearest_game": None if rec.nearest is None else rec.nearest.model_dump(),
        "scores": scores,
    }


async def run_generation(
    config: RunConfig,
    llm: Chat,
    judges: list[LLMJudge] | None = None,
    rubric: Rubric | None = None,
    meta_judge: LLMJudge | None = None,
    echo: Callable[[str], None] = print,
) -> RunReport:
    """The whole run; `echo` gets progress and one line per decided attempt."""
    now = dt.datetime.now(dt.UTC)
    run_id = f"gen-{now:%Y%m%d-%H%M%S}-s{config.seed}"
    pool = load_pool(config.out_dir)
    records: list[AttemptRecord] = []
    passing: dict[str, tuple[AttemptRecord, Generation]] = {}

    def decide(rec: AttemptRecord, stage: Stage, reason: str, accepted: bool = False) -> None:
        rec.stage, rec.reason = stage, reason
        rec.decision = "accepted" if accepted else "rejected"
        config.log_path.parent.mkdir(parents=True, exist_ok=True)
        with config.log_path.open("a", encoding="utf-8") as f:
            f.write(rec.model_dump_json() + "\n")
        echo(rec.line())

    for i in range(config.n):
        rng = random.Random(f"{config.seed}:{i}")
        brief = sample_brief(rng, list(pool), config.theme)
        attempt_id = f"a{i + 1:02d}"
        echo(f"… #{i + 1} {attempt_id}: asking for a game on “{brief.theme}” ({brief.mechanic})")
        gen = await generate(llm, brief, config.generation)
        rec = AttemptRecord(
            run_id=run_id,
            attempt=i + 1,
            attempt_id=attempt_id,
            timestamp=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            theme=brief.theme,
            mechanic=brief.mechanic,
            profile=config.profile,
            model=gen.model,
            prompt_hash=gen.prompt_hash,
            calls=gen.calls,
            generated=gen.generated,
            valid=gen.spec is not None,
            repaired=gen.repaired,
        )
        records.append(rec)
        if gen.spec is None:
            final = gen.final
            decide(rec, final.stage, final.summary())  # type: ignore[arg-type]
            continue
        spec = gen.spec
        rec.spec_id = spec.id
        others = {
            **pool,
            **{f"{r.spec_id} (this run, {a})": g.spec for a, (r, g) in passing.items() if g.spec},
        }
        dups, rec.nearest = near_duplicates(spec, others, config.near_duplicate)
        if dups:
            d = dups[0]
            decide(
                rec,
                "duplicate",
                f"near-duplicate of {d.game} (TF-IDF cosine {d.cosine:.2f} ≥ {config.near_duplicate})",
            )
            continue
        echo(f"… #{i + 1} {attempt_id}: `{spec.id}` is valid; play-testing")
        if config.ray is not None:
            from ..runner.ray_backend import remote_task

            args = (spec, config.episodes, config.skill_seeds)
            rec.playtest = await remote_task(playtest, *args, address=config.ray)
        else:
            rec.playtest = playtest(spec, config.episodes, config.skill_seeds)
        if not rec.playtest.passed:
            decide(rec, "playtest", f"play-test: {rec.playtest.reason}")
            continue
        passing[attempt_id] = (rec, gen)

    meta = None
    if passing:
        echo(f"… ranking {len(passing)} game(s) with {len(judges or [])} judge(s)")
        games: dict[str, tuple[GameSpec, ProceduralMetrics]] = {}
        for a, (r, g) in passing.items():
            assert g.spec is not None and r.playtest is not None and r.playtest.metrics is not None
            games[a] = (g.spec, r.playtest.metrics)
        ranked = await rank_games(games, judges or [], rubric, meta_judge)
        meta = ranked.meta
        taken = set(pool)
        for a in sorted(passing, key=lambda a: ranked.entries[a].rank):
            rec, gen = passing[a]
            rec.ranking = ranked.entries[a]
            q = rec.ranking.judge_quality
            if config.min_quality > 0 and (q is None or q < config.min_quality):
                got = "no judge score" if q is None else f"judges rate it {q:.2f}"
                decide(rec, "quality", f"{got}, below --min-quality {config.min_quality:.2f}")
                continue
            assert gen.spec is not None
            game_id = unique_id(gen.spec.id, taken)
            spec = gen.spec.model_copy(update={"id": game_id})
            spec.provenance = _provenance(rec, gen, gen.spec.id)
            try:
                path = write_game(spec, config.out_dir)
            except (OSError, SpecError) as exc:
                decide(rec, "write", f"could not write the game: {exc}")
                continue
            taken.add(game_id)
            pool[game_id] = spec
            rec.game_id, rec.path = game_id, str(path)
            decide(rec, "accepted", f"rank {rec.ranking.rank} of {rec.ranking.of}", accepted=True)

    accepted = {r.game_id: pool[r.game_id] for r in records if r.decision == "accepted" and r.game_id}
    figures = [diversity("accepted this run", accepted)] if accepted else []
    figures.append(diversity("pool (all games incl. accepted)", pool))
    rates = {
        "attempts": len(records),
        "generated": sum(r.generated for r in records),
        "valid": sum(r.valid for r in records),
        "repaired": sum(r.repaired for r in records),
        "passed_playtest": sum(r.playtest is not None and r.playtest.passed for r in records),
        "accepted": len(accepted),
    }
    why = Counter(str(r.stage) for r in records if r.decision != "accepted")
    on_path = config.out_dir.resolve() in {d.resolve() for d in game_dirs()}
    return RunReport(
        run_id=run_id,
        attempts=records,
        rates=rates,
        why_not=dict(why),
        diversity=figures,
        meta=meta,
        on_search_path=on_path,
    )
