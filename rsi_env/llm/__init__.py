"""The model seam and its OpenAI-compatible client.

    chat.py       the `Chat` protocol every model call goes through; Endpoint, Sampling, CallRecord,
                  CallStatus, ChatResult
    jsonparse.py  the one JSON extractor (model replies, generated specs, player actions)
    schema.py     structured output: the schema per server dialect, and validation (jsonschema)
    errors.py     classifying a failed request
    client.py     ChatClient, the `Chat` for any OpenAI-compatible server

`from rsi_env.llm import X` works for every public name. The light parts load at once; `ChatClient`
(openai, ~0.6 s to import) and the validator (jsonschema, ~0.2 s) load when first named, so reading a
profile or a command line does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .chat import (
    BackendMissing,
    CallRecord,
    CallStatus,
    Chat,
    ChatResult,
    Dialect,
    Endpoint,
    Sampling,
    check_http_url,
    is_loopback,
    on_local_server,
)
from .jsonparse import extract_json

if TYPE_CHECKING:
    from .client import ChatClient, EndpointResolver, forget_dialects
    from .schema import validate_json

__all__ = [
    "BackendMissing",
    "CallRecord",
    "CallStatus",
    "Chat",
    "ChatClient",
    "ChatResult",
    "Dialect",
    "Endpoint",
    "EndpointResolver",
    "Sampling",
    "check_http_url",
    "extract_json",
    "forget_dialects",
    "is_loopback",
    "on_local_server",
    "validate_json",
]

_LAZY = {
    "ChatClient": "client",
    "EndpointResolver": "client",
    "forget_dialects": "client",
    "validate_json": "schema",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name == "_httpx":  # the scripts' handle on the transport the openai client is built on
        return importlib.import_module(".errors", __name__).httpx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
