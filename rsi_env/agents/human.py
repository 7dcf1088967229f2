"""A person plays a seat in the terminal: the observation is shown, the legal actions listed, and
whatever is typed goes to the env (which forgives near-JSON and answers mistakes with feedback).
End of input (stdin closed) cancels the episode: the runner records it aborted, never scored."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.panel import Panel

from .base import CANCELLED, TurnReport, observation_text
from .baseline import schema_branches


class HumanAgent:
    def __init__(self, player: str, console: Console | None = None) -> None:
        self.name = "human"
        self.player = player
        self.console = console or Console()
        self.last: TurnReport | None = None

    async def act(self, observation: Any, info: dict[str, Any]) -> str:
        if info.get("action_schema") is None:
            self.last = TurnReport(raw="")
            return ""
        self.console.print(
            Panel(observation_text(observation), title=f"{self.player}: your turn", expand=False)
        )
        names = [b["properties"]["action"]["const"] for b in schema_branches(info["action_schema"])]
        self.console.print(f"Legal actions: {', '.join(names)}")
        self.console.print('Type JSON like {"action": "...", ...} or `name key=value ...`:')
        try:
            raw = await asyncio.to_thread(input, "> ")
        except EOFError:
            # Nobody is left to play this seat: an empty reply every turn would be scored as play.
            self.last = TurnReport(
                raw="", status=CANCELLED, error="stdin closed (EOF): the human left the game"
            )
            return ""
        self.last = TurnReport(raw=raw)
        return raw
