"""A judge panel from the command line, and scoring recorded episodes with it.

`--judges local@0.3,local@1.0#7,openai` = profile, optional temperature after `@`, optional seed
after `#`: several profiles, or one model at several temperatures and seeds.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from ..agents.factory import ClientPool
from ..agents.profiles import EndpointOverride, ProfileError, resolve_profile
from ..spec import GameSpec
from ..trajectory import Episode
from .judge import LLMJudge
from .procedural import procedural_verdict
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


@dataclass
class Missing:
    """The verdicts `score_episodes` would add to an episode; false when there are none."""

    procedural: bool
    judges: list[LLMJudge]

    def __bool__(self) -> bool:
        return self.procedural or bool(self.judges)


def missing_verdicts(ep: Episode, judges: list[LLMJudge], rubric: Rubric | None) -> Missing:
    """What `score_episodes` has to add to `ep` (the one place that decides it). Checked verdict by
    verdict, not "has any verdict": an episode may already carry the procedural one (the runner can
    add it) and still lack the panel's. An aborted episode gets only the procedural verdict."""
    have = {(v.judge, v.rubric) for v in ep.verdicts}
    procedural = ("procedural", "procedural") not in have
    if rubric is None or ep.status == "aborted":
        return Missing(procedural, [])
    return Missing(procedural, [j for j in judges if (j.id, rubric.id) not in have])


async def score_episodes(
    episodes: list[Episode],
    spec: GameSpec,
    judges: list[LLMJudge],
    rubric: Rubric | None,
    concurrency: int = 4,
) -> list[Episode]:
    """Add the procedural verdict and each judge's rubric verdict to every episode (missing ones only)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(ep: Episode) -> Episode:
        missing = missing_verdicts(ep, judges, rubric)
        if missing.procedural:
            ep.verdicts.append(procedural_verdict(ep))

        async def judged(j: LLMJudge) -> None:
            assert rubric is not None  # a judge is missing only where there is a rubric
            async with sem:
                ep.verdicts.append(await j.score_episode(ep, spec, rubric))

        await asyncio.gather(*(judged(j) for j in missing.judges))
        return ep

    return list(await asyncio.gather(*(one(ep) for ep in episodes)))
