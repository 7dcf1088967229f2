"""What went wrong with a request: exceptions of the openai client and its transport, classified into
a `CallStatus`, whether a retry may help, and whether the server rejected the structured-output
dialect (then the next dialect is tried)."""

from __future__ import annotations

import contextlib
import email.utils
import inspect
import json
import re
import time
from types import ModuleType
from typing import Any

import openai
from pydantic import BaseModel

from .chat import CallStatus

__all__ = ["RETRYABLE", "Failure", "classify", "httpx", "retry_after"]


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


httpx = _httpx_module()

RETRYABLE = frozenset(
    {CallStatus.TIMEOUT, CallStatus.RATE_LIMITED, CallStatus.SERVER_ERROR, CallStatus.CONNECTION_ERROR}
)

_CONTEXT_RE = re.compile(
    r"context[ _-]?length|context window|context size|maximum context|exceed_context|n_ctx|too many tokens|"
    r"prompt is too long|"
    r"exceeds? (the )?(model'?s? )?(max(imum)? )?(context|token)",
    re.IGNORECASE,
)
_DIALECT_RE = re.compile(r"response_format|json_schema|json_object|structured output", re.IGNORECASE)


class Failure(BaseModel):
    """One failed request, classified."""

    status: CallStatus
    message: str
    retry_after_s: float | None = None
    dialect_unsupported: bool = False


def retry_after(headers: Any) -> float | None:
    """The server's `retry-after-ms` / `retry-after` hint in seconds (a number or an HTTP date)."""
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


def classify(exc: BaseException, *, structured: bool) -> Failure:
    """The status of a request that raised `exc` (`structured`: it asked for structured output)."""
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return Failure(status=CallStatus.TIMEOUT, message="request timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f": {type(cause).__name__}: {cause}" if cause else ""
        return Failure(status=CallStatus.CONNECTION_ERROR, message=f"connection error{detail}")
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        text = f"{exc.message} {exc.body if exc.body is not None else ''}"
        msg = f"HTTP {code}: {text}"
        if code in (400, 413, 422, 500) and _CONTEXT_RE.search(text):
            return Failure(status=CallStatus.CONTEXT_EXCEEDED, message=msg)
        # llama-cpp-python answers an unknown response_format type with a 500 (validation error), others
        # with 400/422: any of these naming response_format means "try the next dialect".
        if structured and code in (400, 422, 500) and _DIALECT_RE.search(text):
            return Failure(status=CallStatus.CLIENT_ERROR, message=msg, dialect_unsupported=True)
        headers = exc.response.headers if exc.response is not None else None
        if code == 429:
            return Failure(status=CallStatus.RATE_LIMITED, message=msg, retry_after_s=retry_after(headers))
        if code == 408:
            return Failure(status=CallStatus.TIMEOUT, message=msg)
        if code >= 500 or code == 409:
            return Failure(status=CallStatus.SERVER_ERROR, message=msg, retry_after_s=retry_after(headers))
        return Failure(status=CallStatus.CLIENT_ERROR, message=msg)
    if isinstance(exc, json.JSONDecodeError):
        # The openai client surfaces a non-JSON response body as a bare JSONDecodeError.
        return Failure(status=CallStatus.SERVER_ERROR, message=f"response body is not JSON: {exc}")
    if isinstance(exc, httpx.HTTPError | OSError):
        return Failure(status=CallStatus.CONNECTION_ERROR, message=f"{type(exc).__name__}: {exc}")
    if isinstance(exc, openai.APIError):
        return Failure(status=CallStatus.SERVER_ERROR, message=f"{type(exc).__name__}: {exc}")
    return Failure(status=CallStatus.SERVER_ERROR, message=f"unexpected {type(exc).__name__}: {exc}")
