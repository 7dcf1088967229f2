"""The model seam: the `Chat` protocol every model call in rsi_env goes through, and its records.

Agents, judges, the game generator and the task families depend on `Chat` only; `ChatClient`
(`client.py`) is the implementation for OpenAI-compatible servers, and an agent backend
(`rsi_env.agents.backends`) may bring any other class with the same two methods.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

Dialect = Literal["auto", "json_schema", "json_object", "prompt"]


class CallStatus(StrEnum):
    """Final (or per-attempt) outcome of a model call."""

    OK = "ok"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CONNECTION_ERROR = "connection_error"
    INVALID_OUTPUT = "invalid_output"
    REFUSED = "refused"
    CONTEXT_EXCEEDED = "context_exceeded"
    # Not retried: other 4xx (bad key, unknown model, bad request) - a configuration problem.
    CLIENT_ERROR = "client_error"


class Endpoint(BaseModel):
    """Where to send calls and how patiently."""

    # None: the backend decides where (the `local` backend: the embedded model, found when first used).
    base_url: str | None = None
    model: str | None = None  # None = the first id the server lists at /models
    api_key_env: str = "OPENAI_API_KEY"  # env var holding the key; a dummy key is used when unset
    dialect: Dialect = "auto"
    timeout_s: float = Field(60.0, gt=0)  # per attempt, from when the request is sent
    max_retries: int = Field(3, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(8.0, ge=0)
    # Requests the server works on at once (None: no limit). Calls beyond it wait in the client for a
    # slot, before their timeout starts: a one-at-a-time server would otherwise time out its queue.
    max_parallel: int | None = Field(None, ge=1)


def on_local_server(ep: Endpoint, local: Endpoint) -> Endpoint:
    """`ep` (base_url None) resolved to the embedded server: the server's settings, except what the
    caller set explicitly (the server's own model alias always wins)."""
    explicit = ep.model_dump(include=ep.model_fields_set - {"base_url", "model"})
    return local.model_copy(update=explicit)


def check_http_url(url: str) -> str:
    """`url` if it is an http(s) URL; ValueError otherwise (for profiles and the --base-url option)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return url


def is_loopback(base_url: str | None) -> bool:
    """Whether calls stay on this machine: the embedded model (None) or a server on localhost.

    Local servers (llama.cpp, vLLM, Ollama) need no API key unless started with one."""
    if base_url is None:
        return True
    host = urllib.parse.urlsplit(base_url).hostname
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified  # 0.0.0.0 reaches this machine too


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key in a profile must not pass silently

    # The OpenAI API's own ranges: a value outside them makes every call a 400.
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    seed: int | None = None


class CallRecord(BaseModel):
    """Accounting for one ``chat`` call, across all of its attempts."""

    status: CallStatus
    latency_s: float = 0.0  # the call's own time, without queued_s
    queued_s: float = 0.0  # waiting for a slot on a server that runs few requests at once
    prompt_tokens: int | None = None  # summed over attempts; None when the server reported no usage
    completion_tokens: int | None = None
    # Prompt tokens the server took from its prompt cache (usage.prompt_tokens_details.cached_tokens),
    # summed over attempts; None when the server does not report it.
    cached_tokens: int | None = None
    retries: int = 0  # requests beyond the first (transport retries, dialect fallbacks, repairs)
    attempt_errors: list[CallStatus] = Field(default_factory=list)  # status of each failed attempt
    repairs: int = 0  # repair round trips after unusable output
    dialect: str | None = None  # structured-output dialect of the last attempt; None for plain text
    model: str | None = None
    base_url: str | None = None
    finish_reason: str | None = None
    error: str | None = None  # short message of the last failure


class ChatResult(BaseModel):
    text: str | None = None
    parsed: Any | None = None
    record: CallRecord

    @property
    def ok(self) -> bool:
        return self.record.status == CallStatus.OK


class BackendMissing(RuntimeError):
    """What a backend needs is not installed (e.g. the embedded model's packages).

    An installation problem, not a failed call: the one exception `Chat.chat` lets through, so a run
    stops with one clear message instead of recording every call as a connection error."""


@runtime_checkable
class Chat(Protocol):
    """What every caller of a model needs: `ChatClient`, an agent backend, or a test double.

    `chat` never raises for model, server or network trouble: the record's status says what
    happened (a failed call is recorded, never scored as zero); only `BackendMissing` goes
    through. With `schema` (a JSON Schema), `parsed` holds the reply's JSON value, valid against
    it. `aclose` releases connections; a run calls it once, at its end.
    """

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        schema_name: str = "response",
        sampling: Sampling | None = None,
    ) -> ChatResult: ...

    async def aclose(self) -> None: ...
