"""Agent profiles (`agents/*.yaml`): configuration only, read and checked before a run starts.

A profile names a backend (the embedded local model, any OpenAI-compatible endpoint, or one of your
own: see `backends.py`), the model, sampling, a persona and the structured-output dialect.
`--agents` takes profile names, a path to a profile file, or `random`, `scripted`, `human`.
`--base-url/--model/--api-key-env` override the endpoint of every LLM profile, so one endpoint serves
a whole run. Building agents and chat clients from profiles is `factory.py`'s job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from ..catalog import content_dir
from ..llm import Dialect, Endpoint, Sampling, check_http_url, is_loopback
from ..spec import format_validation_error
from .backends import BackendError, check_options, find_backend

BUILTIN_AGENTS = ("random", "scripted", "human")

_log = logging.getLogger(__name__)


class ProfileError(Exception):
    """A profile that cannot be used; the message names the file and the field."""


class AgentProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    description: str = ""
    backend: str = Field(
        "local",
        description="`local` (the embedded model), `endpoint` (an OpenAI-compatible server at base_url), "
        "a registered backend name, or an import path `module:Class` (see rsi_env.agents.backends).",
    )
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    dialect: Dialect = "auto"
    sampling: Sampling = Field(default_factory=Sampling)
    persona: str = ""
    window: int = Field(8, ge=1, le=200, description="Past exchanges kept in the prompt.")
    timeout_s: float = Field(60.0, gt=0, le=3600)
    max_retries: int = Field(3, ge=0, le=20)
    max_parallel: int | None = Field(
        None, ge=1, description="Requests the endpoint's server runs at once; more wait in the client."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the backend (backends of your own)."
    )
    # The folder of the profile's file: a backend module may sit beside it.
    _folder: Path | None = PrivateAttr(None)

    @property
    def folder(self) -> Path | None:
        return self._folder

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return v if v is None else check_http_url(v)

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
            # Only what the profile sets: the rest (dialect, timeout, one request at a time) comes
            # from the embedded server's own endpoint.
            fields = {k: v for k, v in fields.items() if k in self.model_fields_set}
            return Endpoint(base_url=None, **fields)
        return Endpoint(base_url=self.base_url, max_parallel=self.max_parallel, **fields)


class EndpointOverride(BaseModel):
    """`--base-url`, `--model`, `--api-key-env`, `--call-timeout`: applied to every LLM profile of a run."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float | None = Field(None, gt=0)

    def apply(self, profile: AgentProfile) -> AgentProfile:
        changes: dict[str, Any] = {}
        if self.base_url:
            # The embedded model's profiles move to the endpoint; a backend of your own keeps its class
            # and gets the URL (it is its business what it does with it).
            changes["base_url"] = self.base_url
            if profile.backend == "local":
                changes["backend"] = "endpoint"
        if self.timeout_s is not None:
            changes["timeout_s"] = self.timeout_s
        # The embedded model has one model and needs no key: these would only mislabel the profile.
        if changes.get("backend", profile.backend) != "local":
            if self.model:
                changes["model"] = self.model
            if self.api_key_env:
                changes["api_key_env"] = self.api_key_env
        return profile.model_copy(update=changes)

    def ignored_by(self, profile: AgentProfile) -> list[str]:
        """The options that do not apply to `profile` (they do to a profile on an endpoint)."""
        if self.base_url or profile.backend != "local":
            return []
        given = {"--model": self.model, "--api-key-env": self.api_key_env}
        return [opt for opt, value in given.items() if value]


def profile_files() -> dict[str, Path]:
    return {f.stem: f for f in sorted(content_dir("agents").glob("*.yaml"))}


def load_profile(name: str, *, builtins: bool = True) -> AgentProfile:
    """A profile by name (`agents/<name>.yaml`) or by path to a YAML file. `builtins`: whether the
    message for an unknown name lists the built-in agents (they are valid where agents are asked for)."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        files = profile_files()
        if name not in files:
            if builtins:
                raise ProfileError(f"unknown agent {name!r}; known: {', '.join([*BUILTIN_AGENTS, *files])}")
            raise ProfileError(f"unknown profile {name!r}; LLM profiles: {', '.join(files)}")
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
        profile = AgentProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{path}: " + "; ".join(format_validation_error(exc))) from None
    profile._folder = path.parent
    try:
        check_options(profile.backend, find_backend(profile.backend, near=path.parent), profile.options)
    except BackendError as exc:
        raise ProfileError(f"{path}: backend: {exc}") from None
    return profile


def resolve_profile(
    name: str, override: EndpointOverride | None = None, *, needed_by: str | None = "a generator or judge"
) -> AgentProfile:
    """Load an LLM profile and apply the run's endpoint override; checked now, not mid-run.

    `needed_by` names what needs the model, for the message when `name` is a built-in agent without
    one; None where built-in agents are valid too (`--agents`, whose built-ins never get here).
    """
    if needed_by is not None and name in BUILTIN_AGENTS:
        raise ProfileError(
            f"{name!r} is a built-in agent without a model: {needed_by} needs an LLM profile; "
            f"LLM profiles: {', '.join(profile_files())} (or a path to a profile file)"
        )
    override = override or EndpointOverride()
    profile = override.apply(load_profile(name, builtins=needed_by is None))
    profile.endpoint()
    check_api_key(profile, explicit=bool(override.api_key_env))
    for option in override.ignored_by(profile):
        _warn_once(
            f"warning: {option} does not apply to profile {profile.name!r}, which runs the embedded "
            "model; add --base-url to use another endpoint"
        )
    return profile


def check_api_key(profile: AgentProfile, *, explicit: bool = False) -> None:
    """Fail before the run when the key's variable is unset: on a real API every call would be a 401.

    A server on this machine (llama.cpp, vLLM, Ollama) needs no key unless started with one, so an
    unset variable a profile names is fine there; one named on the command line (`explicit`) is not.
    """
    if profile.backend == "local" or profile.base_url is None or os.environ.get(profile.api_key_env):
        return
    var = profile.api_key_env
    if explicit:
        raise ProfileError(f"--api-key-env {var}: the environment variable {var} is not set")
    if is_loopback(profile.base_url):
        return
    raise ProfileError(
        f"profile {profile.name!r}: {profile.base_url} needs an API key and the environment variable "
        f"{var} (api_key_env) is not set; set it (any value, for a server that takes no key) "
        "or name another variable with --api-key-env"
    )


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    # A run resolves a profile once per agent and judge; one line per problem is enough.
    if message not in _warned:
        _warned.add(message)
        _log.warning(message)
