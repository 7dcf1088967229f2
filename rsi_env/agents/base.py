"""The agent contract, and what an agent reports about each of its turns."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

# The status of a turn whose agent gave up the episode (a human closed stdin): the runner aborts the
# episode with it at once. Not a failed model call, and never a move that could be scored.
CANCELLED = "cancelled"


class TurnReport(BaseModel):
    """What one `act` call did: the raw reply and, for model-backed agents, the call's accounting."""

    raw: str
    prompt: str | None = None  # the user message an LLM agent sent (None for other agents)
    status: str = "ok"  # a CallStatus value for model calls; "ok" for local agents
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None  # prompt tokens served from the server's cache, when it says
    retries: int = 0
    error: str | None = None
    attempts: list[str] = []  # statuses of failed attempts before the final one
    warnings: list[str] = []  # the scripted policy's rules that failed this turn (rule, error)


@runtime_checkable
class Agent(Protocol):
    """Plays one seat of one episode. `last` describes the most recent `act` call."""

    name: str
    last: TurnReport | None

    async def act(self, observation: dict[str, Any] | str, info: dict[str, Any]) -> str: ...


def observation_text(observation: dict[str, Any] | str) -> str:
    return observation["text"] if isinstance(observation, dict) else str(observation)
