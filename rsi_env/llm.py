"""The one chat client every model call in rsi_env goes through.

It speaks the OpenAI chat-completions API (any compatible server) via ``openai.AsyncOpenAI`` and adds
what a long run of many concurrent calls needs: structured output in several dialects, JSON Schema
validation, one repair round trip, retries with backoff, and a ``CallRecord`` per call. ``chat`` never
raises for model, server or network trouble: failures come back as a record with a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import inspect
import ipaddress
import json
import math
import os
import random
import re
import time
import urllib.parse
import weakref
from enum import StrEnum
from types import ModuleType, TracebackType
from typing import Any, Literal, Protocol

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CallRecord",
    "CallStatus",
    "ChatClient",
    "ChatResult",
    "Dialect",
    "Endpoint",
    "Sampling",
    "check_http_url",
    "extract_json",
    "is_loopback",
    "validate_json",
]

Dialect = Literal["auto", "json_schema", "json_object", "prompt"]
# Order tried by "auto": each is dropped when the server says it does not understand it.
_DIALECT_CHAIN: tuple[str, ...] = ("json_schema", "json_object", "prompt")
_DUMMY_KEY = "sk-no-key-required"  # local servers ignore the key but the openai client insists on one
_MAX_ERROR_CHARS = 300


def _httpx_module() -> ModuleType:
    """The httpx flavour the installed openai package is built on (httpx, or httpx2 in openai>=3)."""
    for cls in inspect.getmro(openai.DefaultAsyncHttpxClient):
        if cls.__name__ == "AsyncClient":
            mod = inspect.getmodule(cls)
            if mod is not None:
                top = mod.__name__.split(".")[0]
                return __import__(top)
    import httpx  # pragma: no cover - only for openai versions without the alias

    return httpx  # pragma: no cover


_httpx = _httpx_module()


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


_RETRYABLE = {
    CallStatus.TIMEOUT,
    CallStatus.RATE_LIMITED,
    CallStatus.SERVER_ERROR,
    CallStatus.CONNECTION_ERROR,
}


class Endpoint(BaseModel):
    """Where to send calls and how patiently."""

    base_url: str | None = None  # None = the embedded local model (rsi_env.local_model)
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


def on_local_server(ep: Endpoint, local: Endpoint) -> Endpoint:
    """`ep` (base_url None) resolved to the embedded server: the server's settings, except what the
    caller set explicitly (the server's own model alias always wins)."""
    explicit = ep.model_dump(include=ep.model_fields_set - {"base_url", "model"})
    return local.model_copy(update=explicit)


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


# ---------------------------------------------------------------------------------------------------
# JSON extraction and validation
# ---------------------------------------------------------------------------------------------------

_MAX_JSON_STARTS = 32
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)


def extract_json(text: str) -> Any:
    """Parse the JSON value in a reply, tolerating code fences and leading/trailing prose.

    Raises ValueError with a short reason when there is none.
    """
    s = text.strip()
    if not s:
        raise ValueError("the reply is empty")
    # strict=False: models put raw newlines and tabs inside strings (a multi-line message); the
    # meaning is unambiguous, so it is accepted rather than sent back for repair.
    with contextlib.suppress(ValueError):
        return json.loads(s, strict=False)
    candidates = [s]
    m = _FENCE_RE.search(s)
    if m is not None and m.group(2).strip():
        candidates.insert(0, m.group(2).strip())  # the fenced block first; the whole text if that fails
    decoder = json.JSONDecoder(strict=False)
    last_error = "no JSON object or array found"
    for cand in candidates:
        with contextlib.suppress(ValueError):
            return json.loads(cand, strict=False)
        # Try each opening bracket in turn: prose before the JSON may contain brackets too.
        starts = [i for i, ch in enumerate(cand) if ch in "{["][:_MAX_JSON_STARTS]
        for start in starts:
            try:
                value, _end = decoder.raw_decode(cand, start)
                return value
            except json.JSONDecodeError as e:
                if start == starts[0]:
                    last_error = f"{e.msg} at char {e.pos}"
    raise ValueError(f"the reply is not valid JSON ({last_error})")


def _lenient_json(text: str) -> Any:
    """json_repair's best effort (trailing commas, single quotes, …); ValueError when it finds nothing."""
    try:
        import json_repair
    except ImportError as e:  # declared dependency, but keep working without it
        raise ValueError("no lenient parser") from e
    m = _FENCE_RE.search(text)
    candidate = m.group(2) if m is not None and m.group(2).strip() else text
    value = json_repair.loads(candidate)
    if value in ("", None):
        raise ValueError("nothing recoverable")
    return value


_TYPE_CHECKS: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
}


def _json_equal(a: Any, b: Any) -> bool:
    # JSON equality: True != 1 although Python says otherwise.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _resolve_ref(ref: str, root: dict[str, Any]) -> Any:
    if not ref.startswith("#"):
        raise ValueError(f"only local $ref is supported, got {ref!r}")
    node: Any = root
    for part in ref.lstrip("#").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def validate_json(
    instance: Any, schema: dict[str, Any] | bool, *, _root: Any = None, _path: str = "$"
) -> str | None:
    """Check ``instance`` against a JSON Schema; returns the first problem as a short string, or None.

    Covers the subset rsi_env uses: type, properties/required/additionalProperties, enum, const,
    anyOf/oneOf/allOf/not, $ref (local), items/prefixItems/minItems/maxItems/uniqueItems,
    minLength/maxLength/pattern, minimum/maximum/exclusive*/multipleOf, min/maxProperties.
    Unknown keywords are ignored, as JSON Schema prescribes.
    """
    if schema is True or schema == {}:
        return None
    if schema is False:
        return f"{_path}: no value is allowed here"
    if not isinstance(schema, dict):
        raise TypeError(f"schema must be a dict or bool, got {type(schema).__name__}")
    root = schema if _root is None else _root
    p = _path

    if "$ref" in schema:
        err = validate_json(instance, _resolve_ref(schema["$ref"], root), _root=root, _path=p)
        if err:
            return err
    for sub in schema.get("allOf", []):
        err = validate_json(instance, sub, _root=root, _path=p)
        if err:
            return err
    if "anyOf" in schema:
        errs = [validate_json(instance, sub, _root=root, _path=p) for sub in schema["anyOf"]]
        if all(errs):
            detail = "; ".join(f"[{i}] {e}" for i, e in enumerate(errs))
            return f"{p}: matches no anyOf alternative ({detail})"
    if "oneOf" in schema:
        errs = [validate_json(instance, sub, _root=root, _path=p) for sub in schema["oneOf"]]
        n_ok = sum(e is None for e in errs)
        if n_ok != 1:
            detail = "; ".join(f"[{i}] {e}" for i, e in enumerate(errs) if e)
            return f"{p}: matches {n_ok} oneOf alternatives, expected exactly 1" + (
                f" ({detail})" if n_ok == 0 else ""
            )
    if "not" in schema and validate_json(instance, schema["not"], _root=root, _path=p) is None:
        return f"{p}: matches a schema it must not match"
    if "const" in schema and not _json_equal(instance, schema["const"]):
        return f"{p}: expected {json.dumps(schema['const'])}, got {_short(instance)}"
    if "enum" in schema and not any(_json_equal(instance, v) for v in schema["enum"]):
        return f"{p}: {_short(instance)} is not one of {json.dumps(schema['enum'])[:120]}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPE_CHECKS.get(t, lambda _v: True)(instance) for t in types):
            return f"{p}: expected {'/'.join(types)}, got {_json_type(instance)} {_short(instance)}"

    if isinstance(instance, dict):
        props: dict[str, Any] = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in instance:
                return f"{p}: missing required property {key!r}"
        addl = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                err = validate_json(value, props[key], _root=root, _path=f"{p}.{key}")
                if err:
                    return err
            elif addl is False:
                return f"{p}: unexpected property {key!r} (allowed: {', '.join(props) or 'none'})"
            elif isinstance(addl, dict):
                err = validate_json(value, addl, _root=root, _path=f"{p}.{key}")
                if err:
                    return err
        if "minProperties" in schema and len(instance) < schema["minProperties"]:
            return f"{p}: fewer than {schema['minProperties']} properties"
        if "maxProperties" in schema and len(instance) > schema["maxProperties"]:
            return f"{p}: more than {schema['maxProperties']} properties"
    elif isinstance(instance, list):
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        if isinstance(items, list):  # draft-07 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        n_prefix = 0
        if isinstance(prefix, list):
            n_prefix = len(prefix)
            for i, (value, sub) in enumerate(zip(instance, prefix, strict=False)):
                err = validate_json(value, sub, _root=root, _path=f"{p}[{i}]")
                if err:
                    return err
        if items is not None and items is not True:
            for i in range(n_prefix, len(instance)):
                err = validate_json(instance[i], items, _root=root, _path=f"{p}[{i}]")
                if err:
                    return err
        if "minItems" in schema and len(instance) < schema["minItems"]:
            return f"{p}: has {len(instance)} items, fewer than minItems {schema['minItems']}"
        if "maxItems" in schema and len(instance) > schema["maxItems"]:
            return f"{p}: has {len(instance)} items, more than maxItems {schema['maxItems']}"
        if schema.get("uniqueItems"):
            seen = [json.dumps(v, sort_keys=True) for v in instance]
            if len(set(seen)) != len(seen):
                return f"{p}: items are not unique"
    elif isinstance(instance, str):
        if "minLength" in schema and len(instance) < schema["minLength"]:
            return f"{p}: string shorter than minLength {schema['minLength']}"
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            return f"{p}: string of {len(instance)} chars is longer than maxLength {schema['maxLength']}"
        if "pattern" in schema and re.search(schema["pattern"], instance) is None:
            return f"{p}: string does not match pattern {schema['pattern']!r}"
    elif isinstance(instance, int | float) and not isinstance(instance, bool):
        if "minimum" in schema and instance < schema["minimum"]:
            return f"{p}: {instance} is below minimum {schema['minimum']}"
        if "maximum" in schema and instance > schema["maximum"]:
            return f"{p}: {instance} is above maximum {schema['maximum']}"
        xmin, xmax = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if isinstance(xmin, int | float) and not isinstance(xmin, bool) and instance <= xmin:
            return f"{p}: {instance} is not above exclusiveMinimum {xmin}"
        if isinstance(xmax, int | float) and not isinstance(xmax, bool) and instance >= xmax:
            return f"{p}: {instance} is not below exclusiveMaximum {xmax}"
        mult = schema.get("multipleOf")
        if mult and not math.isclose(instance / mult, round(instance / mult), abs_tol=1e-9):
            return f"{p}: {instance} is not a multiple of {mult}"
    return None


def _json_type(v: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPE_CHECKS[name](v):
            return name
    return type(v).__name__


def _short(v: Any, n: int = 60) -> str:
    try:
        s = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= n else s[: n - 1] + "…"


# ---------------------------------------------------------------------------------------------------
# Schema rewriting per dialect
# ---------------------------------------------------------------------------------------------------

_MAX_ENUM_RANGE = 128
_MAX_GRAMMAR_STRING = 1000  # longest maxLength sent to a llama.cpp grammar (see _long_strings_unbounded)


def _bounded_ints_to_enum(schema: Any) -> Any:
    """Rewrite small bounded integer ranges to enum, recursively (returns a copy).

    llama-cpp-python's grammar converter ignores minimum/maximum but enforces enum, so this makes the
    bounds hold in its output too. Validation still re-checks the reply.
    """
    if isinstance(schema, list):
        return [_bounded_ints_to_enum(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded_ints_to_enum(v) for k, v in schema.items()}
    if out.get("type") == "integer" and "enum" not in out and "const" not in out:
        lo, hi = out.get("minimum"), out.get("maximum")
        xmin, xmax = out.get("exclusiveMinimum"), out.get("exclusiveMaximum")
        if isinstance(xmin, int | float):
            lo = max(x for x in (lo, math.floor(xmin) + 1) if x is not None)
        if isinstance(xmax, int | float):
            hi = min(x for x in (hi, math.ceil(xmax) - 1) if x is not None)
        if isinstance(lo, int | float) and isinstance(hi, int | float) and 0 <= hi - lo <= _MAX_ENUM_RANGE:
            mult = out.get("multipleOf")
            values = [v for v in range(math.ceil(lo), math.floor(hi) + 1) if not mult or v % mult == 0]
            if values:
                out["enum"] = values
    return out


def _long_strings_unbounded(schema: Any) -> Any:
    """Drop `maxLength` above _MAX_GRAMMAR_STRING, recursively (returns a copy).

    llama.cpp's grammar unrolls `maxLength: N` into N optional characters; at ~1200 the
    llama-cpp-python server crashes on the request. Validation still enforces the limit.
    """
    if isinstance(schema, list):
        return [_long_strings_unbounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _long_strings_unbounded(v) for k, v in schema.items()}
    if isinstance(out.get("maxLength"), int) and out["maxLength"] > _MAX_GRAMMAR_STRING:
        del out["maxLength"]
    return out


def _strict_compatible(schema: Any, *, root: bool = True) -> bool:
    """Whether OpenAI's strict structured outputs would accept the schema as is."""
    if root and not (isinstance(schema, dict) and schema.get("type") == "object"):
        return False  # strict mode wants an object at the root
    if isinstance(schema, list):
        return all(_strict_compatible(s, root=False) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties", True) is not False:
            return False
        if set(schema.get("required", [])) != set(props):
            return False
    return all(_strict_compatible(v, root=False) for k, v in schema.items() if k not in ("enum", "const"))


def _schema_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]
    return cleaned or "response"


def _schema_instruction(schema: dict[str, Any]) -> str:
    return (
        "Reply with a single JSON value and nothing else: no prose, no code fences. "
        "It must validate against this JSON Schema:\n" + json.dumps(schema, separators=(",", ":"))
    )


def _with_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{note}"
        return [first, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


# ---------------------------------------------------------------------------------------------------
# Error classification
# ---------------------------------------------------------------------------------------------------

_CONTEXT_RE = re.compile(
    r"context[ _-]?length|context window|context size|maximum context|exceed_context|n_ctx|too many tokens|"
    r"prompt is too long|"
    r"exceeds? (the )?(model'?s? )?(max(imum)? )?(context|token)",
    re.IGNORECASE,
)
_DIALECT_RE = re.compile(r"response_format|json_schema|json_object|structured output", re.IGNORECASE)


class _Failure(BaseModel):
    status: CallStatus
    message: str
    retry_after_s: float | None = None
    dialect_unsupported: bool = False


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    with contextlib.suppress(TypeError, ValueError):
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _classify(exc: BaseException, *, structured: bool) -> _Failure:
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return _Failure(status=CallStatus.TIMEOUT, message="request timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f": {type(cause).__name__}: {cause}" if cause else ""
        return _Failure(status=CallStatus.CONNECTION_ERROR, message=f"connection error{detail}")
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        text = f"{exc.message} {exc.body if exc.body is not None else ''}"
        msg = f"HTTP {code}: {text}"
        if code in (400, 413, 422, 500) and _CONTEXT_RE.search(text):
            return _Failure(status=CallStatus.CONTEXT_EXCEEDED, message=msg)
        # llama-cpp-python answers an unknown response_format type with a 500 (validation error), others
        # with 400/422: any of these naming response_format means "try the next dialect".
        if structured and code in (400, 422, 500) and _DIALECT_RE.search(text):
            return _Failure(status=CallStatus.CLIENT_ERROR, message=msg, dialect_unsupported=True)
        headers = exc.response.headers if exc.response is not None else None
        if code == 429:
            return _Failure(status=CallStatus.RATE_LIMITED, message=msg, retry_after_s=_retry_after(headers))
        if code == 408:
            return _Failure(status=CallStatus.TIMEOUT, message=msg)
        if code >= 500 or code == 409:
            return _Failure(status=CallStatus.SERVER_ERROR, message=msg, retry_after_s=_retry_after(headers))
        return _Failure(status=CallStatus.CLIENT_ERROR, message=msg)
    if isinstance(exc, json.JSONDecodeError):
        # The openai client surfaces a non-JSON response body as a bare JSONDecodeError.
        return _Failure(status=CallStatus.SERVER_ERROR, message=f"response body is not JSON: {exc}")
    if isinstance(exc, _httpx.HTTPError | OSError):
        return _Failure(status=CallStatus.CONNECTION_ERROR, message=f"{type(exc).__name__}: {exc}")
    if isinstance(exc, openai.APIError):
        return _Failure(status=CallStatus.SERVER_ERROR, message=f"{type(exc).__name__}: {exc}")
    return _Failure(status=CallStatus.SERVER_ERROR, message=f"unexpected {type(exc).__name__}: {exc}")


# Remembered per (base_url, model): which structured-output dialect the server accepts.
_dialect_memory: dict[tuple[str, str], str] = {}


def forget_dialects() -> None:
    """Drop the remembered dialects (tests; or after a server was upgraded)."""
    _dialect_memory.clear()


# Per event loop (a semaphore belongs to one), per base_url: the request slots of a server with
# `max_parallel`, shared by every ChatClient that calls it (a run has one per profile endpoint).
_server_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _server_slot(ep: Endpoint) -> contextlib.AbstractAsyncContextManager[Any]:
    """Hold this while a request is at the server; no-op for servers without `max_parallel`."""
    if ep.max_parallel is None:
        return contextlib.nullcontext()
    slots = _server_slots.setdefault(asyncio.get_running_loop(), {})
    key = str(ep.base_url)
    if key not in slots:
        slots[key] = asyncio.Semaphore(ep.max_parallel)  # the first client's limit is the server's
    return slots[key]


class Chat(Protocol):
    """What callers need of a chat client: `ChatClient`, or a test double that implements just this."""

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        schema_name: str = "response",
        sampling: Sampling | None = None,
    ) -> ChatResult: ...


class ChatClient:
    """Chat calls against one endpoint, with structured output, retries and accounting.

    Safe for many concurrent calls on one event loop; moving to a new loop replaces the connection pool.
    """

    def __init__(self, endpoint: Endpoint, *, http_client: Any | None = None) -> None:
        if not isinstance(endpoint, Endpoint):
            raise TypeError(f"endpoint must be an Endpoint, got {type(endpoint).__name__}")
        self.endpoint = endpoint
        self._http_client = http_client
        self._owns_http_client = http_client is None
        self._client: openai.AsyncOpenAI | None = None
        self._resolved: Endpoint | None = None
        self._setup_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- setup -----------------------------------------------------------------------------------

    async def resolve(self) -> Endpoint:
        """The effective endpoint (starting the embedded model if needed). Raises if it cannot start."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Used from a new event loop (e.g. one asyncio.run per episode): pooled connections and the
            # lock belong to the old loop, so start over with fresh ones.
            if self._loop is not None and self._owns_http_client:
                self._http_client = None
                if self._resolved is not None:
                    self._client = self._make_client(self._resolved)
            self._setup_lock = None
            self._loop = loop
        if self._resolved is not None:
            return self._resolved
        if self._setup_lock is None:
            self._setup_lock = asyncio.Lock()
        async with self._setup_lock:
            if self._resolved is not None:
                return self._resolved
            ep = self.endpoint
            if ep.base_url is None:
                from rsi_env import local_model

                ep = on_local_server(ep, await asyncio.to_thread(local_model.ensure_local_endpoint))
            client = self._make_client(ep)
            if ep.model is None:
                ep = ep.model_copy(update={"model": await self._first_model(client)})
            self._client = client
            self._resolved = ep
            return ep

    def _make_client(self, ep: Endpoint) -> openai.AsyncOpenAI:
        timeout = _httpx.Timeout(ep.timeout_s, connect=min(ep.timeout_s, 10.0))
        if self._http_client is None:
            # Sized for the runner's 8-64 calls in flight, with headroom for retries.
            self._http_client = openai.DefaultAsyncHttpxClient(
                limits=_httpx.Limits(max_connections=256, max_keepalive_connections=256),
                timeout=timeout,
            )
        return openai.AsyncOpenAI(
            base_url=ep.base_url,
            api_key=os.environ.get(ep.api_key_env) or _DUMMY_KEY,
            timeout=timeout,
            max_retries=0,  # retries and their accounting are ours
            http_client=self._http_client,
        )

    @staticmethod
    async def _first_model(client: openai.AsyncOpenAI) -> str:
        try:
            page = await asyncio.wait_for(client.models.list(), timeout=10.0)
            for m in page.data:
                return str(m.id)
        except Exception:  # a server without /models still serves chat; any name will do then
            pass
        return "default"

    async def aclose(self) -> None:
        self._closed = True
        if self._owns_http_client and self._http_client is not None:
            with contextlib.suppress(Exception):
                await self._http_client.aclose()
        self._http_client = None
        self._client = None

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- calls -------------------------------------------------------------------------------------

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        schema_name: str = "response",
        sampling: Sampling | None = None,
    ) -> ChatResult:
        """One chat completion; with ``schema``, ``parsed`` holds the validated JSON value.

        Never raises for model/server/network trouble; the record's status says what happened.
        """
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise TypeError("messages must be a list of dicts")
        if schema is not None and not isinstance(schema, dict):
            raise TypeError("schema must be a dict (a JSON Schema) or None")
        if sampling is not None and not isinstance(sampling, Sampling):
            raise TypeError("sampling must be a Sampling or None")
        if self._closed:
            raise RuntimeError("ChatClient is closed")
        sampling = sampling or Sampling()
        t0 = time.monotonic()
        record = CallRecord(status=CallStatus.OK, base_url=self.endpoint.base_url, model=self.endpoint.model)

        try:
            ep = await self.resolve()
        except Exception as e:
            from rsi_env.local_model import LocalModelMissing

            if isinstance(e, LocalModelMissing):
                raise  # an installation problem: fail loudly, not call by call
            return self._fail(record, t0, CallStatus.CONNECTION_ERROR, f"endpoint unavailable: {e}")
        record.base_url, record.model = ep.base_url, ep.model
        t0 = time.monotonic()  # latency is the call's own, without a one-off local server startup
        try:
            return await self._run(ep, messages, schema, schema_name, sampling, record, t0)
        except (TypeError, AttributeError, KeyError, ValueError) as e:
            # Malformed-but-JSON responses can trip attribute access deep in parsing; no crash for that.
            return self._fail(
                record, t0, CallStatus.SERVER_ERROR, f"unusable response: {type(e).__name__}: {e}"
            )

    @staticmethod
    def _stop_clock(record: CallRecord, t0: float) -> None:
        record.latency_s = time.monotonic() - t0 - record.queued_s

    @classmethod
    def _fail(cls, record: CallRecord, t0: float, status: CallStatus, message: str) -> ChatResult:
        record.status = status
        record.error = message[:_MAX_ERROR_CHARS]
        cls._stop_clock(record, t0)
        return ChatResult(text=None, parsed=None, record=record)

    def _dialect_for(self, ep: Endpoint) -> str:
        if ep.dialect != "auto":
            return ep.dialect
        return _dialect_memory.get((str(ep.base_url), str(ep.model)), _DIALECT_CHAIN[0])

    def _request_for(
        self, conv: list[dict[str, Any]], schema: dict[str, Any] | None, schema_name: str, dialect: str | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        if schema is None or dialect is None:
            return conv, None
        if dialect == "json_schema":
            rf = {
                "type": "json_schema",
                "json_schema": {
                    "name": _schema_name(schema_name),
                    "schema": schema,
                    "strict": _strict_compatible(schema),
                },
            }
            return conv, rf
        if dialect == "json_object":
            grammar = _long_strings_unbounded(_bounded_ints_to_enum(schema))
            return conv, {"type": "json_object", "schema": grammar}
        return _with_system_note(conv, _schema_instruction(schema)), None

    async def _run(
        self,
        ep: Endpoint,
        messages: list[dict[str, Any]],
        schema: dict[str, Any] | None,
        schema_name: str,
        sampling: Sampling,
        record: CallRecord,
        t0: float,
    ) -> ChatResult:
        structured = schema is not None
        dialect: str | None = self._dialect_for(ep) if structured else None
        conv = list(messages)
        transport_retries = 0
        repairs_left = 1
        first = True
        while True:
            if not first:
                record.retries += 1
            first = False
            record.dialect = dialect
            msgs, response_format = self._request_for(conv, schema, schema_name, dialect)
            kwargs: dict[str, Any] = {
                "model": ep.model,
                "messages": msgs,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_tokens": sampling.max_tokens,
            }
            if sampling.seed is not None:
                kwargs["seed"] = sampling.seed
            if response_format is not None:
                kwargs["response_format"] = response_format
            try:
                completion = await self._post(ep, kwargs, record)
                if not hasattr(completion, "choices"):  # non-JSON content type: openai returns the text
                    raise json.JSONDecodeError(
                        "response is not a JSON chat completion", str(completion)[:80], 0
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = _classify(exc, structured=structured)
                record.attempt_errors.append(failure.status)
                record.error = failure.message[:_MAX_ERROR_CHARS]
                if failure.dialect_unsupported and ep.dialect == "auto" and dialect in _DIALECT_CHAIN[:-1]:
                    # Detection: step down the chain and remember it for this endpoint. A configured
                    # dialect is not second-guessed; its rejection is a client_error.
                    dialect = _DIALECT_CHAIN[_DIALECT_CHAIN.index(dialect) + 1]
                    _dialect_memory[(str(ep.base_url), str(ep.model))] = dialect
                    continue
                if failure.status in _RETRYABLE and transport_retries < ep.max_retries:
                    await asyncio.sleep(self._backoff(ep, transport_retries, failure.retry_after_s))
                    transport_retries += 1
                    continue
                return self._fail(record, t0, failure.status, failure.message)

            self._account(record, completion)
            choice = completion.choices[0] if completion.choices else None
            if choice is None:
                failure_msg = "response has no choices"
                content, finish = None, None
            else:
                message = choice.message
                content = getattr(message, "content", None) if message is not None else None
                finish = choice.finish_reason
                record.finish_reason = finish
                refusal = getattr(message, "refusal", None) if message is not None else None
                if refusal or finish == "content_filter":
                    record.attempt_errors.append(CallStatus.REFUSED)
                    return self._fail(record, t0, CallStatus.REFUSED, f"refused: {refusal or finish}")
                failure_msg = ""

            parsed: Any = None
            if not failure_msg:
                if content is None or not content.strip():
                    failure_msg = "the reply was empty"
                elif not structured:
                    record.status = CallStatus.OK
                    record.error = None
                    self._stop_clock(record, t0)
                    return ChatResult(text=content, parsed=None, record=record)
                else:
                    parsed, failure_msg = self._parse(content, schema, finish)  # type: ignore[arg-type]
                    if not failure_msg:
                        record.status = CallStatus.OK
                        record.error = None
                        self._stop_clock(record, t0)
                        return ChatResult(text=content, parsed=parsed, record=record)

            record.attempt_errors.append(CallStatus.INVALID_OUTPUT)
            record.error = failure_msg[:_MAX_ERROR_CHARS]
            if repairs_left > 0:
                repairs_left -= 1
                record.repairs += 1
                conv = self._repair_conversation(conv, content, failure_msg, schema, finish)
                continue
            result = self._fail(record, t0, CallStatus.INVALID_OUTPUT, failure_msg)
            result.text = content
            return result

    async def _post(self, ep: Endpoint, body: dict[str, Any], record: CallRecord) -> Any:
        """One request. The timeout starts once the server has a free slot for it, so on a server
        that runs one request at a time it measures the server's work on this call, not the queue."""
        assert self._client is not None
        waiting = time.monotonic()
        async with _server_slot(ep):
            record.queued_s += time.monotonic() - waiting
            # The deadline bounds the whole attempt; httpx's own timeouts are per read and a server
            # trickling bytes would never trip them.
            async with asyncio.timeout(ep.timeout_s):
                # client.post (the openai client's documented path for raw endpoints) skips the
                # per-call TypedDict transform of `create`: ~1 ms of CPU per call, which caps
                # throughput at high concurrency. Same transport, auth, errors and parsing.
                return await self._client.post("/chat/completions", body=body, cast_to=ChatCompletion)

    @staticmethod
    def _parse(content: str, schema: dict[str, Any], finish: str | None) -> tuple[Any, str]:
        try:
            value = extract_json(content)
        except ValueError as e:
            if finish == "length":
                return None, f"the reply was cut off at the token limit before the JSON ended ({e})"
            try:
                value = _lenient_json(content)
            except Exception:
                return None, str(e)
        err = validate_json(value, schema)
        if err:
            return None, f"the JSON does not match the schema: {err}"
        return value, ""

    @staticmethod
    def _repair_conversation(
        conv: list[dict[str, Any]],
        content: str | None,
        problem: str,
        schema: dict[str, Any] | None,
        finish: str | None,
    ) -> list[dict[str, Any]]:
        if not content or not content.strip():
            # Nothing to show the model: ask again as it was.
            return conv
        note = f"Your reply could not be used: {problem}."
        if finish == "length":
            note += " Keep the reply much shorter."
        if schema is not None:
            note += " " + _schema_instruction(schema)
        return [*conv, {"role": "assistant", "content": content[:2000]}, {"role": "user", "content": note}]

    @staticmethod
    def _account(record: CallRecord, completion: Any) -> None:
        usage = getattr(completion, "usage", None)
        if usage is not None:
            pt, ct = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
            if isinstance(pt, int):
                record.prompt_tokens = (record.prompt_tokens or 0) + pt
            if isinstance(ct, int):
                record.completion_tokens = (record.completion_tokens or 0) + ct
        model = getattr(completion, "model", None)
        if isinstance(model, str) and model:
            record.model = model

    @staticmethod
    def _backoff(ep: Endpoint, retry_index: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            # Honour the server's hint, capped so one bad header cannot stall a run.
            return min(retry_after_s, ep.max_backoff_s) + random.uniform(0.0, 0.1 * ep.backoff_s)
        base = min(ep.max_backoff_s, ep.backoff_s * (2**retry_index))
        return random.uniform(0.5 * base, base)  # jitter spreads out the herd after a shared failure
