"""Agent profiles (`agents/*.yaml`) and turning `--agents` names into agents for one episode.

A profile names a backend (the embedded local model, or any OpenAI-compatible endpoint), the
model, sampling, a persona and the structured-output dialect. `--agents` takes profile names,
a path to a profile file, or `random`, `scripted`, `human`. `--base-url/--model/--api-key-env`
override the endpoint of every LLM profile, so one endpoint serves a whole run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..catalog import content_dir
from ..llm import ChatClient, Endpoint, Sampling
from ..spec import GameSpec, format_validation_error
from .base import Agent
from .baseline import RandomAgent, ScriptedAgent

BUILTIN_AGENTS = ("random", "scripted", "human")


class ProfileError(Exception):
    """A profile that cannot be used; the message names the file and the field."""


class AgentProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    description: str = ""
    backend: Literal["local", "endpoint"] = "local"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    dialect: Literal["auto", "json_schema", "json_object", "prompt"] = "auto"
    sampling: Sampling = Field(default_factory=Sampling)
    persona: str = ""
    window: int = Field(8, ge=1, le=200, description="Past exchanges kept in the prompt.")
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)

    def endpoint(self) -> Endpoint:
        if self.backend == "endpoint" and not self.base_url:
            raise ProfileError(f"profile {self.name!r}: backend `endpoint` needs `base_url`")
        fields = {
            "model": self.model,
            "api_key_env": self.api_key_env,
            "dialect": self.dialect,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
        }
        if self.backend == "local":
            # Only what the profile sets: the rest comes from the embedded server's own endpoint
            # (its dialect, and a timeout long enough to wait in its one-at-a-time queue).
            fields = {k: v for k, v in fields.items() if k in self.model_fields_set}
            return Endpoint(base_url=None, **fields)
        return Endpoint(base_url=self.base_url, **fields)


class EndpointOverride(BaseModel):
    """`--base-url`, `--model`, `--api-key-env`: applied to every LLM profile of a run."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None

    def apply(self, profile: AgentProfile) -> AgentProfile:
        changes: dict[str, Any] = {}
        if self.base_url:
            changes.update(backend="endpoint", base_url=self.base_url)
        if self.model:
            changes["model"] = self.model
        if self.api_key_env:
            changes["api_key_env"] = self.api_key_env
        return profile.model_copy(update=changes)


def profile_files() -> dict[str, Path]:
    return {f.stem: f for f in sorted(content_dir("agents").glob("*.yaml"))}


def load_profile(name: str) -> AgentProfile:
    """A profile by name (`agents/<name>.yaml`) or by path to a YAML file."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        files = profile_files()
        if name not in files:
            known = ", ".join([*BUILTIN_AGENTS, *files])
            raise ProfileError(f"unknown agent {name!r}; known: {known}")
        path = files[name]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a mapping of fields")
    data.setdefault("name", path.stem)
    try:
        return AgentProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{path}: " + "; ".join(format_validation_error(exc))) from None


class ClientPool:
    """One chat client per distinct endpoint, shared by every agent and judge of a run."""

    def __init__(self) -> None:
        self._clients: dict[str, ChatClient] = {}

    def client(self, profile: AgentProfile) -> ChatClient:
        ep = profile.endpoint()
        key = ep.model_dump_json()
        if key not in self._clients:
            self._clients[key] = ChatClient(ep)
        return self._clients[key]

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()


def resolve_profile(name: str, override: EndpointOverride | None = None) -> AgentProfile:
    """Load a profile and apply the run's endpoint override; checked now, not mid-run."""
    profile = (override or EndpointOverride()).apply(load_profile(name))
    profile.endpoint()
    return profile


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
                self.profiles[n] = resolve_profile(n, self.override)
        self.pool = pool or ClientPool()

    @property
    def uses_models(self) -> bool:
        return bool(self.profiles)

    def client(self, profile: AgentProfile) -> ChatClient:
        return self.pool.client(profile)

    def seat_names(self, n_players: int) -> list[str]:
        """Names cycle over the seats: `--agents local` fills every seat with `local`."""
        return [self.names[i % len(self.names)] for i in range(n_players)]

    def build(self, name: str, player: str, seed: int) -> Agent:
        from .human import HumanAgent
        from .llm_agent import LLMAgent

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
