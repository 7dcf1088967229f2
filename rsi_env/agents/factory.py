"""From profiles to running parts: one `Chat` per distinct backend and endpoint (the pool), and the
agents of each episode (the factory).

The pool builds each `Chat` through the profile's backend (`backends.py`); for the built-in `local`
backend that client resolves the embedded model's endpoint when its first call needs it.
"""

from __future__ import annotations

import json

from ..llm import Chat
from ..spec import GameSpec
from .backends import BackendError, make_chat
from .base import Agent
from .baseline import RandomAgent, ScriptedAgent
from .human import HumanAgent
from .llm_agent import LLMAgent
from .profiles import BUILTIN_AGENTS, AgentProfile, EndpointOverride, ProfileError, resolve_profile


class ClientPool:
    """One chat client per distinct backend + endpoint + options, shared by every agent and judge of
    a run (connections, the dialect a server accepts, its request slots)."""

    def __init__(self) -> None:
        self._clients: dict[str, Chat] = {}

    def client(self, profile: AgentProfile) -> Chat:
        ep = profile.endpoint()
        key = json.dumps(
            [profile.backend, ep.model_dump(mode="json"), profile.options], sort_keys=True, default=repr
        )
        if key not in self._clients:
            try:
                self._clients[key] = make_chat(profile.backend, ep, profile.options, near=profile.folder)
            except BackendError as exc:
                raise ProfileError(f"profile {profile.name!r}: backend: {exc}") from None
        return self._clients[key]

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()


class AgentFactory:
    """Builds the agents of each episode; LLM agents of one endpoint share one chat client."""

    def __init__(
        self,
        names: list[str],
        spec: GameSpec,
        override: EndpointOverride | None = None,
        pool: ClientPool | None = None,
    ) -> None:
        self.names = names
        self.spec = spec
        self.override = override or EndpointOverride()
        self.profiles: dict[str, AgentProfile] = {}
        for n in names:
            if n not in BUILTIN_AGENTS and n not in self.profiles:
                self.profiles[n] = resolve_profile(n, self.override, needed_by=None)
        self.pool = pool or ClientPool()

    @property
    def uses_models(self) -> bool:
        return bool(self.profiles)

    def client(self, profile: AgentProfile) -> Chat:
        return self.pool.client(profile)

    def build(self, name: str, player: str, seed: int) -> Agent:
        if name == "random":
            return RandomAgent(seed)
        if name == "scripted":
            return ScriptedAgent(self.spec, seed)
        if name == "human":
            return HumanAgent(player)
        profile = self.profiles[name]
        return LLMAgent(profile, self.client(profile), self.spec, player, seed=seed)

    async def aclose(self) -> None:
        await self.pool.aclose()
