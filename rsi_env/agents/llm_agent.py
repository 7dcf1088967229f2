"""An LLM agent: one chat call per turn through the shared chat client, with the action schema as
structured output.

The conversation is the player's own history: the first user message is the full observation
(rules included); later ones are short (what changed since the first, events since its previous
turn, the legal actions by name when the first prompt described them);
each of its replies is an assistant message. `conversation()` builds it, and the preference
builder calls the same function, so a preference row's prompt is exactly what the model saw.
"""

from __future__ import annotations

import json
from typing import Any

from ..llm import Chat
from ..spec import GameSpec
from ..trajectory import cap_reply
from ..view import render_observation
from .base import TurnReport
from .profiles import AgentProfile

# The same for every seat (the first user message says who you are): the players' prompts then share
# their first tokens, which the embedded server's prompt cache evaluates once.
INSTRUCTIONS = (
    'You play the game "{game}". Each turn you read the game state and the legal actions. '
    "Reply with exactly one JSON object that chooses one legal action, and nothing else."
)


_NOTE_REPLY_CHARS = 80  # per dropped reply in the note that replaces them


def system_prompt(profile: AgentProfile, spec: GameSpec, player: str) -> str:
    base = INSTRUCTIONS.format(game=spec.name)
    return f"{profile.persona.strip()}\n{base}" if profile.persona.strip() else base


def conversation(
    system: str, exchanges: list[tuple[str, str]], prompt: str, window: int
) -> list[dict[str, str]]:
    """Messages for one call: system, the first exchange (it holds the rules), then at most
    `window - 1` of the latest exchanges.

    Older exchanges are dropped in blocks of half a window, not one per turn: between two drops each
    prompt extends the previous one, so a prompt cache re-evaluates only the newest message (a window
    sliding by one turn changes the prompt right after the first exchange at every turn). A drop is
    marked by one line listing the dropped replies.
    """
    messages = [{"role": "system", "content": system}]
    kept = exchanges
    note = ""
    if len(exchanges) > window:
        step = max(1, window // 2)
        dropped = -(-(len(exchanges) - window) // step) * step  # a multiple of `step`
        kept = [exchanges[0], *exchanges[1 + dropped :]]
        shown = exchanges[max(1, 1 + dropped - window) : 1 + dropped]
        replies = "; ".join(" ".join(reply.split())[:_NOTE_REPLY_CHARS] for _, reply in shown)
        note = f"(Not shown: {dropped} earlier turns. Your replies in the last {len(shown)}: {replies})\n"
    for i, (user, assistant) in enumerate(kept):
        content = note + user if i == 1 else user
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": note + prompt if note and len(kept) == 1 else prompt})
    return messages


class LLMAgent:
    def __init__(
        self, profile: AgentProfile, client: Chat, spec: GameSpec, player: str, seed: int | None = None
    ) -> None:
        self.name = profile.name
        self.profile = profile
        self.client = client
        self.spec = spec
        self.player = player
        self.system = system_prompt(profile, spec, player)
        self.exchanges: list[tuple[str, str]] = []
        self.last_tick: int | None = None
        self.last: TurnReport | None = None
        self.resolved_model: str | None = None  # what the server says it ran
        # Call k samples with seed + k (when the profile sets none): reproducible where servers honour
        # seeds, and branch rollouts replay their opponents' sampling exactly.
        self.seed = seed
        self.calls = 0

    @property
    def model(self) -> str | None:
        return self.resolved_model or self.profile.model

    def restore(self, turns: list[Any]) -> None:
        """Rebuild the conversation from recorded turns of this player (to branch mid-episode)."""
        self.exchanges = [
            (t.prompt, t.raw) for t in turns if t.player == self.player and t.prompt is not None
        ]
        mine = [t for t in turns if t.player == self.player and t.prompt is not None]
        self.last_tick = mine[-1].tick if mine else None
        self.calls = len(mine)

    def messages_for(self, info: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
        """The prompt text and the full message list this agent would send now."""
        prompt = self.prompt_for(info)
        return prompt, conversation(self.system, self.exchanges, prompt, self.profile.window)

    def prompt_for(self, info: dict[str, Any]) -> str:
        first = not self.exchanges
        # Later turns leave out what the first prompt (always in the window) and the previous one
        # (the latest exchange, always kept) already say: see render_observation.
        return render_observation(
            self.spec,
            info["view"],
            info["action_schema"],
            info.get("feedback"),
            include_rules=first,
            since_tick=None if first else self.last_tick,
            first_prompt=None if first else self.exchanges[0][0],
            last_prompt=None if first else self.exchanges[-1][0],
        )

    async def act(self, observation: Any, info: dict[str, Any]) -> str:
        if info.get("action_schema") is None:
            self.last = TurnReport(raw="")
            return ""
        prompt, messages = self.messages_for(info)
        sampling = self.profile.sampling
        if sampling.seed is None and self.seed is not None:
            sampling = sampling.model_copy(update={"seed": self.seed + self.calls})
        self.calls += 1
        result = await self.client.chat(
            messages, schema=info["action_schema"], schema_name="action", sampling=sampling
        )
        rec = result.record
        # The model's own text is the record; the game parses it (forgivingly) like any reply.
        raw = result.text if result.text is not None else ""
        if not raw and result.parsed is not None:
            raw = json.dumps(result.parsed, ensure_ascii=False)
        self.last = TurnReport(
            raw=raw,
            prompt=prompt,
            status=str(rec.status),
            latency_s=rec.latency_s,
            prompt_tokens=rec.prompt_tokens or 0,
            completion_tokens=rec.completion_tokens or 0,
            cached_tokens=rec.cached_tokens,
            retries=rec.retries,
            error=rec.error,
            attempts=[str(a) for a in rec.attempt_errors],
        )
        if rec.model:
            self.resolved_model = rec.model
        if result.ok or self.last.status in ("invalid_output", "refused"):
            # The model answered (well or badly): that answer is part of its history.
            # Capped as the record is: a huge reply would otherwise ride along in every later prompt.
            self.exchanges.append((prompt, cap_reply(raw)[0]))
            self.last_tick = info.get("tick")
        return raw
