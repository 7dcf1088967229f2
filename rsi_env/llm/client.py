"""`ChatClient`: the `Chat` implementation for any OpenAI-compatible server.

It speaks the chat-completions API via ``openai.AsyncOpenAI`` and adds what a long run of many
concurrent calls needs: structured output in several dialects (`schema.py`), JSON extraction
(`jsonparse.py`) and validation, one repair round trip, retries with backoff (`errors.py` classifies
failures), and a ``CallRecord`` per call. ``chat`` never raises for model, server or network trouble:
failures come back as a record with a status.

Where calls go is an `Endpoint`. One without `base_url` is resolved when first used by the
`resolver` the caller gives (the `local` agent backend starts the embedded model that way): this
package knows nothing of `rsi_env.local_model`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from .chat import BackendMissing, CallRecord, CallStatus, ChatResult, Endpoint, Sampling
from .errors import RETRYABLE, classify, httpx
from .jsonparse import extract_json
from .schema import response_format, schema_instruction, validate_json, with_system_note

__all__ = ["ChatClient", "EndpointResolver", "forget_dialects"]

# Order tried by "auto": each is dropped when the server says it does not understand it.
_DIALECT_CHAIN: tuple[str, ...] = ("json_schema", "json_object", "prompt")
_DUMMY_KEY = "sk-no-key-required"  # local servers ignore the key but the openai client insists on one
_MAX_ERROR_CHARS = 300

# Given the configured endpoint, the one to call (e.g. the embedded server's, once it runs).
EndpointResolver = Callable[[Endpoint], Awaitable[Endpoint]]


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


class ChatClient:
    """Chat calls against one endpoint, with structured output, retries and accounting.

    Safe for many concurrent calls on one event loop; moving to a new loop replaces the connection pool.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        resolver: EndpointResolver | None = None,
        http_client: Any | None = None,
    ) -> None:
        if not isinstance(endpoint, Endpoint):
            raise TypeError(f"endpoint must be an Endpoint, got {type(endpoint).__name__}")
        if endpoint.base_url is None and resolver is None:
            raise ValueError(
                "an Endpoint without base_url needs a resolver that says where it is "
                "(rsi_env.agents.backends: the `local` backend resolves the embedded model)"
            )
        self.endpoint = endpoint
        self._resolver = resolver
        self._http_client = http_client
        self._owns_http_client = http_client is None
        self._client: openai.AsyncOpenAI | None = None
        self._resolved: Endpoint | None = None
        self._setup_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- setup -----------------------------------------------------------------------------------

    async def resolve(self) -> Endpoint:
        """The effective endpoint (the resolver's, e.g. the embedded model once started); raises what
        the resolver raises."""
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
            ep = self.endpoint if self._resolver is None else await self._resolver(self.endpoint)
            if ep.base_url is None:  # the openai client would quietly default to api.openai.com
                raise ValueError("the endpoint resolver gave no base_url")
            client = self._make_client(ep)
            if ep.model is None:
                ep = ep.model_copy(update={"model": await self._first_model(client)})
            self._client = client
            self._resolved = ep
            return ep

    def _make_client(self, ep: Endpoint) -> openai.AsyncOpenAI:
        timeout = httpx.Timeout(ep.timeout_s, connect=min(ep.timeout_s, 10.0))
        if self._http_client is None:
            # Sized for the runner's 8-64 calls in flight, with headroom for retries.
            self._http_client = openai.DefaultAsyncHttpxClient(
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
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
        except BackendMissing:
            raise  # an installation problem: fail loudly, not call by call
        except Exception as e:
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

    @staticmethod
    def _request_for(
        conv: list[dict[str, Any]], schema: dict[str, Any] | None, schema_name: str, dialect: str | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        if schema is None or dialect is None:
            return conv, None
        rf, note = response_format(schema, schema_name, dialect)
        return (conv if note is None else with_system_note(conv, note)), rf

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
            msgs, rf = self._request_for(conv, schema, schema_name, dialect)
            kwargs: dict[str, Any] = {
                "model": ep.model,
                "messages": msgs,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_tokens": sampling.max_tokens,
            }
            if sampling.seed is not None:
                kwargs["seed"] = sampling.seed
            if rf is not None:
                kwargs["response_format"] = rf
            try:
                completion = await self._post(ep, kwargs, record)
                if not hasattr(completion, "choices"):  # non-JSON content type: openai returns the text
                    raise json.JSONDecodeError(
                        "response is not a JSON chat completion", str(completion)[:80], 0
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = classify(exc, structured=structured)
                record.attempt_errors.append(failure.status)
                record.error = failure.message[:_MAX_ERROR_CHARS]
                if failure.dialect_unsupported and ep.dialect == "auto" and dialect in _DIALECT_CHAIN[:-1]:
                    # Detection: step down the chain and remember it for this endpoint. A configured
                    # dialect is not second-guessed; its rejection is a client_error.
                    dialect = _DIALECT_CHAIN[_DIALECT_CHAIN.index(dialect) + 1]
                    _dialect_memory[(str(ep.base_url), str(ep.model))] = dialect
                    continue
                if failure.status in RETRYABLE and transport_retries < ep.max_retries:
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
        # A reply cut off at the token limit is not patched up (json_repair would close it): the
        # repair round trip asks for a shorter one instead.
        try:
            value = extract_json(content, lenient=finish != "length")
        except ValueError as e:
            if finish == "length":
                return None, f"the reply was cut off at the token limit before the JSON ended ({e})"
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
            note += " " + schema_instruction(schema)
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
            cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
            if isinstance(cached, int):
                record.cached_tokens = (record.cached_tokens or 0) + cached
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
