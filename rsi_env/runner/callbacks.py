"""Hooks into a run, as TRL's `TrainerCallback`s are: the Runner calls each callback at the start of the
run, when an episode starts, after each turn (only for callbacks that follow turns), when an episode
has been recorded, and at the end. The progress bar and `play --live` are callbacks.

Wherever the episodes play (this process, or Ray actors on other machines), the callbacks run here,
in the process that writes the file, with the same arguments: with Ray, the turns of one episode at
a time stream back for callbacks that follow turns (`follows_turns`), and finished episodes for all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ..trajectory import Episode, Turn, abort_status

if TYPE_CHECKING:
    from .plan import EpisodeJob


@dataclass
class RunStats:
    """The run so far: what callbacks see, and what `Runner.run` returns."""

    planned: int = 0
    skipped: int = 0  # planned episodes already in the file (or written there by another run meanwhile)
    retried: int = 0  # planned episodes recorded unfinished by an earlier run, played again
    done: int = 0  # episodes played and recorded by this run
    aborted: int = 0
    aborted_by: dict[str, int] = field(default_factory=dict)  # aborted episodes by the status that ended them
    calls: int = 0
    failed_calls: int = 0
    tokens: int = 0
    requeued: int = 0  # episodes whose Ray actor (or node) was lost mid-episode, played again
    actors: int = 0  # Ray actors that played (0: this process alone)
    ray_start_s: float = 0.0  # connecting to (or starting) Ray and starting the actors
    started: float = field(default_factory=time.perf_counter)

    @property
    def calls_per_s(self) -> float:
        return self.calls / max(1e-9, time.perf_counter() - self.started)

    def count(self, ep: Episode) -> None:
        """Add a recorded episode (its model calls, tokens and status) to the run's figures."""
        self.done += 1
        self.calls += ep.usage.calls
        self.failed_calls += ep.usage.failed_calls
        self.tokens += ep.usage.prompt_tokens + ep.usage.completion_tokens
        if ep.status == "aborted":
            self.aborted += 1
            why = abort_status(ep)
            self.aborted_by[why] = self.aborted_by.get(why, 0) + 1


class RunCallback:
    """A run's hooks, each a no-op: override what you need. `follows_turns`: whether `on_turn` is
    wanted (turns are then delivered as they are played; with Ray, one episode at a time)."""

    follows_turns = False

    def on_run_start(self, stats: RunStats, todo: int) -> None:
        """`todo` episodes are about to play (`stats` says how many were planned and skipped)."""

    def on_episode_start(self, job: EpisodeJob) -> None:
        """An episode is handed to a player (this process's event loop, or a Ray actor)."""

    def on_turn(self, ep: Episode, turn: Turn) -> None:
        """A turn was played (`ep` holds the turns and events so far)."""

    def on_episode_end(self, ep: Episode, stats: RunStats) -> None:
        """An episode was recorded (`stats` counts it already)."""

    def on_episode_skipped(self, episode_id: str, stats: RunStats) -> None:
        """A planned episode was not played, or not appended: another run sharing the file recorded
        it first."""

    def on_run_end(self, stats: RunStats) -> None:
        """Every episode was recorded, or the run was interrupted."""


class EpisodeView(Protocol):
    """What `LiveCallback` drives: `render.LiveView`, which follows one episode at a time."""

    def on_turn(self, ep: Episode, turn: Turn) -> None: ...
    def on_episode(self, ep: Episode) -> bool: ...


class LiveCallback(RunCallback):
    """`play --live`: one episode at a time as it unfolds (the view prints its ticks and summary)."""

    follows_turns = True

    def __init__(self, view: EpisodeView) -> None:
        self.view = view

    def on_turn(self, ep: Episode, turn: Turn) -> None:
        self.view.on_turn(ep, turn)

    def on_episode_end(self, ep: Episode, stats: RunStats) -> None:
        self.view.on_episode(ep)


class ProgressCallback(RunCallback):
    """The progress bar: episodes recorded of those to play, aborted ones, tokens, model calls per
    second (rich prints anything else above it)."""

    def __init__(self, description: str, console: Console | None = None) -> None:
        self.description = description
        self.console = console or Console(stderr=True)
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def on_run_start(self, stats: RunStats, todo: int) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("aborted {task.fields[aborted]}"),
            TextColumn("tokens {task.fields[tokens]}"),
            TextColumn("{task.fields[rate]:.1f} calls/s"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task = self.bar.add_task(self.description, total=todo, aborted=0, tokens=0, rate=0.0)
        self.bar.start()

    def on_episode_end(self, ep: Episode, stats: RunStats) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(
                self.task, advance=1, aborted=stats.aborted, tokens=stats.tokens, rate=stats.calls_per_s
            )

    def on_episode_skipped(self, episode_id: str, stats: RunStats) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=1)

    def on_run_end(self, stats: RunStats) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
