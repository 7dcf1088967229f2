"""A judge panel from the command line, and scoring recorded episodes with it and other referees.

`--judges local@0.3,local@1.0#7,openai` = profile, optional temperature after `@`, optional seed
after `#`: several profiles, or one model at several temperatures and seeds. Each judge scores an
episode on the run's rubric as a `RubricJudge`; `score_episodes` runs it beside the procedural
referee and any other `Referee` (`base.py`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..agents.factory import ClientPool
from ..agents.profiles import EndpointOverride, ProfileError, resolve_profile
from ..spec import GameSpec
from ..trajectory import Episode, Verdict
from .base import Referee
from .judge import LLMJudge
from .procedural import PayoffAndConduct
from .rubric import Rubric

_JUDGE = re.compile(r"^(?P<profile>[^@#]+)(?:@(?P<temp>[0-9.]+))?(?:#(?P<seed>\d+))?$")


def parse_judges(text: str, pool: ClientPool, override: EndpointOverride | None = None) -> list[LLMJudge]:
    judges = []
    for item in [x.strip() for x in text.split(",") if x.strip()]:
        m = _JUDGE.match(item)
        if not m:
            raise ProfileError(f"--judges: {item!r} is not PROFILE[@TEMPERATURE][#SEED]")
        profile = resolve_profile(m["profile"], override)
        temp = float(m["temp"]) if m["temp"] else None
        if temp is not None and not 0.0 <= temp <= 2.0:
            raise ProfileError(f"--judges: {item!r}: temperature must be between 0 and 2")
        judges.append(LLMJudge(profile, pool.client(profile), temp, int(m["seed"]) if m["seed"] else None))
    ids = [j.id for j in judges]
    if len(set(ids)) != len(ids):
        raise ProfileError(f"--judges: judges must differ (profile, temperature or seed): {ids}")
    return judges


class RubricJudge(Referee):
    """An LLM judge scoring episodes on a rubric, as a `Referee`."""

    kind = "llm"

    def __init__(self, judge: LLMJudge, rubric: Rubric) -> None:
        self.judge = judge
        self.rubric_spec = rubric
        self.id = judge.id
        self.rubric = rubric.id

    async def score(self, ep: Episode, spec: GameSpec) -> Verdict:
        return await self.judge.score_episode(ep, spec, self.rubric_spec)


PROCEDURAL = PayoffAndConduct()


@dataclass
class Missing:
    """The verdicts `score_episodes` would add to an episode; false when there are none."""

    procedural: bool
    judges: list[LLMJudge]
    referees: list[Referee] = field(default_factory=list)  # others the run names (`--referee`)

    def __bool__(self) -> bool:
        return self.procedural or bool(self.judges) or bool(self.referees)


def missing_verdicts(
    ep: Episode, judges: list[LLMJudge], rubric: Rubric | None, referees: Sequence[Referee] = ()
) -> Missing:
    """What `score_episodes` has to add to `ep` (the one place that decides it). Checked verdict by
    verdict, not "has any verdict": an episode may already carry the procedural one (the runner can
    add it) and still lack the panel's. An aborted episode gets only the procedural verdicts."""
    have = {(v.judge, v.rubric) for v in ep.verdicts}
    procedural = (PROCEDURAL.id, PROCEDURAL.rubric) not in have
    aborted = ep.status == "aborted"
    others = [r for r in referees if (r.id, r.rubric) not in have and (r.scores_aborted or not aborted)]
    if rubric is None or aborted:
        return Missing(procedural, [], others)
    return Missing(procedural, [j for j in judges if (j.id, rubric.id) not in have], others)


async def score_episodes(
    episodes: list[Episode],
    spec: GameSpec,
    judges: list[LLMJudge],
    rubric: Rubric | None,
    concurrency: int = 4,
    referees: Sequence[Referee] = (),
) -> list[Episode]:
    """Add every missing verdict to every episode: the procedural referee's, each judge's on the
    rubric, and those of `referees`. Procedural ones first, in order; model calls `concurrency` at once."""
    sem = asyncio.Semaphore(concurrency)

    async def one(ep: Episode) -> Episode:
        missing = missing_verdicts(ep, judges, rubric, referees)
        todo: list[Referee] = [PROCEDURAL] if missing.procedural else []
        todo += [RubricJudge(j, rubric) for j in missing.judges if rubric is not None]
        todo += missing.referees
        for r in todo:
            if r.kind == "procedural":  # no model call: at once, in order
                ep.verdicts.append(await r.score(ep, spec))

        async def judged(r: Referee) -> None:
            async with sem:
                ep.verdicts.append(await r.score(ep, spec))

        await asyncio.gather(*(judged(r) for r in todo if r.kind != "procedural"))
        return ep

    return list(await asyncio.gather(*(one(ep) for ep in episodes)))
