"""The episode runner, along the data's path: `plan` (which episodes, their ids, what a rerun skips)
→ `episode` (play one) → `run` (the Runner: many at once, each recorded as it finishes) with
`callbacks` (progress bar, live view); `ray_backend` plays on Ray actors (imported only with Ray)."""

from .callbacks import LiveCallback, ProgressCallback, RunCallback, RunStats
from .episode import EpisodeAborted, TurnHook, build_agents, continue_episode, new_episode, play_episode
from .plan import EpisodeJob, Resume, plan, resume
from .run import EpisodeHook, Runner

__all__ = [
    "EpisodeAborted",
    "EpisodeHook",
    "EpisodeJob",
    "LiveCallback",
    "ProgressCallback",
    "Resume",
    "RunCallback",
    "RunStats",
    "Runner",
    "TurnHook",
    "build_agents",
    "continue_episode",
    "new_episode",
    "plan",
    "play_episode",
    "resume",
]
