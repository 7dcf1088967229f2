"""What a run plays: planned episodes with stable ids, and what a rerun into the same file skips.

An episode's id is a function of everything that decides how it is played — the game (its spec
hash), the seats, and for each seat its resolved agent profile (backend, base URL, model, sampling,
persona, history window) — and of its seed. So a rerun of the same command finds its episodes
again, and a rerun with another model or endpoint into the same output plays its own episodes
instead of reporting the first model's as "already in".

`resume` reads the file once, streaming (memory in the number of episodes, not the size of the
file): episodes with a finished record are skipped; ones recorded only as aborted are played again
(`retry_failed`), their failed attempts moved to the side file first (`set_aside`), so the file
keeps one readable line per id and no record of a failure is lost.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..compiled import compiled
from ..spec import GameSpec
from ..trajectory_store import RecordLine, TrajectoryFileError, scan, set_aside

if TYPE_CHECKING:
    from ..agents.factory import AgentFactory
    from ..agents.profiles import AgentProfile


class EpisodeJob(BaseModel):
    """One planned episode. Its id is a function of what defines it, so reruns find it again."""

    episode_id: str
    game: str
    seed: int
    n_players: int
    agents: list[str]


# The fields of a profile that change how its agent plays (not how long it waits or retries).
PLAYING_FIELDS = frozenset({"backend", "base_url", "model", "sampling", "persona", "window", "dialect"})


def profile_identity(profile: AgentProfile) -> dict[str, Any]:
    """What of a resolved profile goes into episode ids."""
    fields = set(PLAYING_FIELDS)
    if profile.options:  # a backend's settings (`local`: model_path, its GGUF); none by default: ids stay
        fields.add("options")
    return profile.model_dump(mode="json", include=fields)


def plan(
    spec: GameSpec, factory: AgentFactory, episodes: int, seed: int = 0, n_players: int | None = None
) -> list[EpisodeJob]:
    """`episodes` episodes of `spec` with seeds seed, seed+1, …; the seats cycle over the factory's
    agents (`--agents a,b` fills seats a, b, a, …)."""
    n = n_players or spec.players.default or spec.players.min
    names = factory.names
    seats = [names[i % len(names)] for i in range(n)]
    key: list[Any] = [compiled(spec).hash, seats, n]
    profiles = {name: profile_identity(factory.profiles[name]) for name in seats if name in factory.profiles}
    if profiles:  # seats of built-in agents only keep the ids they always had
        key.append(profiles)
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return [
        EpisodeJob(episode_id=f"{spec.id}-{tag}-s{s}", game=spec.id, seed=s, n_players=n, agents=seats)
        for s in range(seed, seed + episodes)
    ]


@dataclass
class Resume:
    """What a run plays of its plan, given what its output file holds."""

    todo: list[EpisodeJob]
    skipped: int  # planned episodes the file holds (finished, or aborted with retry_failed off)
    retried: int  # planned episodes the file holds unfinished, played again


def resume(path: Path, jobs: list[EpisodeJob], *, retry_failed: bool = True) -> Resume:
    """The jobs still to play. An episode with a finished record is done. One recorded only as aborted
    (or only in a line this version cannot read, which stays where it is) is played again, unless
    `retry_failed` is off (then a readable aborted record counts as done). Before anything is
    appended, the aborted attempts being replaced move to the side file. A file with a newer rsi_env's
    records is left alone: TrajectoryFileError."""
    if not path.exists():
        return Resume(todo=jobs, skipped=0, retried=0)
    finished: set[str] = set()
    recorded: set[str] = set()
    named: set[str] = set()  # every id a line names, readable or not
    last: dict[str, int] = {}  # id -> number of its last readable line
    aborted: list[RecordLine] = []  # the only lines held: candidates for the side file
    for line in scan(path):
        if line.newer:
            raise TrajectoryFileError(f"{line.problem}; play into another output directory")
        if line.episode_id is not None:
            named.add(line.episode_id)
        if line.episode is None:
            continue
        eid = line.episode.episode_id
        recorded.add(eid)
        last[eid] = line.no
        if line.episode.finished:
            finished.add(eid)
        else:
            aborted.append(line)
    done = finished if retry_failed else finished | recorded
    todo = [j for j in jobs if j.episode_id not in done]
    retry = {j.episode_id for j in todo} & named
    moved = replaced_attempts(aborted, last, retry | finished)
    if moved:
        set_aside(path, moved)
    return Resume(todo=todo, skipped=len(jobs) - len(todo), retried=len(retry))


def replaced_attempts(
    aborted: list[RecordLine], last: dict[str, int], replaced: set[str]
) -> list[RecordLine]:
    """The aborted records that no longer stand for their episode: its id is in `replaced` (being
    played again, or finished elsewhere in the file), or a later readable line of the same id (`last`:
    id -> its last readable line) supersedes them (files from before compaction). Only records read
    as aborted episodes move: a finished one stays, and so does a line this version cannot read: it
    is no known failure (it may be a newer rsi_env's finished episode), and the readers skip it with
    a warning where it is."""
    return [ln for ln in aborted if ln.episode_id in replaced or ln.no != last[str(ln.episode_id)]]
