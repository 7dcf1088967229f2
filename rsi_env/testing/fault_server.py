"""Test double: a fault-injecting OpenAI-compatible HTTP server on loopback.

Serves ``POST /v1/chat/completions``, ``GET /v1/models`` and ``GET /stats`` (counters as JSON).
Plain asyncio streams with a minimal HTTP/1.1 keep-alive parser (no web framework); each response
is written with a single ``write`` on a TCP_NODELAY socket, so there is no delayed-ACK stall and one
event loop sustains hundreds of concurrent connections with per-call latency simulated by sleeping.

In-process: ``with FaultServer(FaultConfig(latency_s=0.1)) as srv: srv.base_url`` (runs its own loop
in a daemon thread). As a subprocess: ``python -m rsi_env.testing.fault_server --latency 0.1`` prints
``READY <base_url>`` and serves until terminated; ``FaultServerProcess`` wraps that.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import random
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from pydantic import BaseModel, Field

FaultName = Literal[
    "ok",
    "429",
    "500",
    "503",
    "hang",
    "malformed",  # 200 with a body that is not JSON at all
    "empty",  # 200, content ""
    "truncated",  # finish_reason "length" with half of the normal content
    "refusal",  # message.refusal set, content null
    "content_filter",  # finish_reason "content_filter", content null
    "context",  # 400 context length exceeded
    "garbage",  # 200 with prose instead of the requested JSON
]
FAULT_NAMES: tuple[str, ...] = FaultName.__args__  # type: ignore[attr-defined]

Responder = Callable[[dict[str, Any]], str]


class FaultConfig(BaseModel):
    """What the server does. Rates are independent probabilities drawn per request (seeded)."""

    latency_s: float = 0.0  # added to every response (except hangs, which last hang_s)
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_hang: float = 0.0
    rate_malformed: float = 0.0
    rate_empty: float = 0.0
    rate_truncated: float = 0.0
    rate_refusal: float = 0.0
    rate_content_filter: float = 0.0
    rate_context: float = 0.0
    rate_garbage: float = 0.0
    retry_after_s: float | None = 0.05  # Retry-After on 429/503; None = no header
    hang_s: float = 30.0  # a hang ends early when the client disconnects
    # Faults for the first requests in arrival order, e.g. ["429", "ok"]; then the rates apply.
    sequence: list[str] = Field(default_factory=list)
    seed: int = 0
    # response_format types accepted; a request with another type gets reject_status (dialect tests).
    dialects: tuple[str, ...] = ("json_schema", "json_object")
    reject_status: int = 400
    model: str = "fault-test-model"


# ---------------------------------------------------------------------------------------------------
# Default responder: a seeded random valid instance of the requested schema, else echo-ish text
# ---------------------------------------------------------------------------------------------------


def random_instance(schema: Any, rng: random.Random, *, root: Any = None, depth: int = 0) -> Any:
    """A random JSON value valid for (the common subset of) a JSON Schema."""
    root = schema if root is None else root
    if schema is True or not isinstance(schema, dict) or not schema:
        return "ok"
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#").split("/"):
            if part:
                node = node[part]
        return random_instance(node, rng, root=root, depth=depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return random_instance(rng.choice(schema[key]), rng, root=root, depth=depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for sub in schema["allOf"]:
            value = random_instance(sub, rng, root=root, depth=depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = rng.choice(typ)
    if typ is None:
        typ = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if typ == "object":
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if name in required or (depth < 4 and rng.random() < 0.5):
                out[name] = random_instance(sub, rng, root=root, depth=depth + 1)
        return out
    if typ == "array":
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", lo + 3))
        n = rng.randint(lo, max(lo, min(hi, lo + 3)))
        items = schema.get("items", {})
        return [random_instance(items, rng, root=root, depth=depth + 1) for _ in range(n)]
    if typ == "string":
        lo = int(schema.get("minLength", 0))
        hi = int(schema.get("maxLength", lo + 12))
        n = rng.randint(lo, max(lo, min(hi, lo + 12)))
        return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(n))
    if typ in ("integer", "number"):
        lo_v = schema.get("minimum")
        if lo_v is None:
            lo_v = schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else 0
        hi_v = schema.get("maximum")
        if hi_v is None:
            hi_v = schema["exclusiveMaximum"] - 1 if "exclusiveMaximum" in schema else lo_v + 10
        if typ == "integer":
            return rng.randint(math.ceil(lo_v), max(math.ceil(lo_v), math.floor(hi_v)))
        return round(rng.uniform(float(lo_v), max(float(lo_v), float(hi_v))), 3)
    if typ == "boolean":
        return rng.random() < 0.5
    return None


def schema_of_request(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema a request asks for: from response_format, or found in the prompt text."""
    rf = body.get("response_format")
    if isinstance(rf, dict):
        if rf.get("type") == "json_schema":
            js = rf.get("json_schema") or {}
            return js.get("schema") or {"type": "object"}
        if rf.get("type") == "json_object":
            return rf.get("schema") or {"type": "object"}
        return None
    # Prompt dialect: a schema written into a message as JSON after the word "Schema".
    decoder = json.JSONDecoder()
    for msg in body.get("messages", []):
        content = msg.get("content")
        if not isinstance(content, str) or "Schema" not in content:
            continue
        start = content.find("{", content.find("Schema"))
        while start >= 0:
            with contextlib.suppress(json.JSONDecodeError):
                value, _ = decoder.raw_decode(content, start)
                if isinstance(value, dict) and ({"type", "anyOf", "oneOf", "properties"} & value.keys()):
                    return value
            start = content.find("{", start + 1)
    return None


class SchemaResponder:
    """Default responder: valid JSON for a requested schema, otherwise echo-ish text."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def __call__(self, body: dict[str, Any]) -> str:
        schema = schema_of_request(body)
        if schema is not None:
            return json.dumps(random_instance(schema, self.rng))
        last = ""
        for msg in body.get("messages", []):
            if msg.get("role") == "user" and isinstance(msg.get("content"), str):
                last = msg["content"]
        return f"Echo: {last[:200]}" if last else "Hello."


# ---------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 422: "Unprocessable Entity",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


def _error_body(message: str, typ: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": typ, "param": param, "code": code}}


class FaultServer:
    """The fault-injecting server, running its own event loop in a daemon thread."""

    def __init__(
        self,
        config: FaultConfig | None = None,
        *,
        responder: Responder | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.config = config or FaultConfig()
        self.responder: Responder = responder or SchemaResponder(self.config.seed)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self.reset_counters()

    # -- counters --------------------------------------------------------------------------------

    def reset_counters(self) -> None:
        """Zero the counters and restart the fault sequence and RNG."""
        self.rng = random.Random(self.config.seed)
        self._seq_index = 0
        self._ids = 0
        self.requests = 0  # chat completion requests
        self.faults: collections.Counter[str] = collections.Counter()  # by fault name, incl. "ok"
        self.dialects_seen: collections.Counter[str] = collections.Counter()  # response_format type or "none"
        self.rejected_dialect = 0
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        # Authorization header of each POST ("" when none): lets a test see which API key was sent.
        self.authorizations: collections.Counter[str] = collections.Counter()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "faults": dict(self.faults),
            "dialects_seen": dict(self.dialects_seen),
            "rejected_dialect": self.rejected_dialect,
            "connections": self.connections,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> str:
        self._thread = threading.Thread(target=self._run_thread, name="fault-server", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._start_error is not None:
            raise RuntimeError(f"fault server failed to start: {self._start_error}")
        return self.base_url

    def _run_thread(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as e:
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._close())
        loop.close()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._handle_conn, self.host, self.port, backlog=1024, limit=4 * 1024 * 1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conn_tasks):
            task.cancel()
        if self._conn_tasks:
            await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
        self._thread = None

    async def serve_forever(self) -> None:
        """Serve on the current loop (subprocess mode)."""
        self._loop = asyncio.get_running_loop()
        await self._open()
        print(f"READY {self.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await self._close()

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- HTTP ------------------------------------------------------------------------------------

    async def _handle_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        self.connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, _version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                keep_alive = headers.get("connection", "").lower() != "close"
                if method == "POST":
                    self.authorizations[headers.get("authorization", "")] += 1
                response = await self._dispatch(method, target.split("?", 1)[0], body, reader)
                if response is None:  # the client went away during a hang
                    return
                writer.write(response)
                await writer.drain()
                if not keep_alive:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except asyncio.CancelledError:
            return
        finally:
            self._conn_tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    def _http(status: int, body: bytes, *, content_type: str = "application/json", extra: str = "") -> bytes:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        )
        return head.encode("latin-1") + body  # one buffer, one write

    def _json(self, status: int, obj: Any, *, extra: str = "") -> bytes:
        return self._http(status, json.dumps(obj).encode(), extra=extra)

    async def _dispatch(
        self, method: str, path: str, body: bytes, reader: asyncio.StreamReader
    ) -> bytes | None:
        if method == "GET" and path.rstrip("/") in ("/v1/models", "/models"):
            data = {
                "object": "list",
                "data": [{"id": self.config.model, "object": "model", "owned_by": "test"}],
            }
            return self._json(200, data)
        if method == "GET" and path.rstrip("/") == "/stats":
            return self._json(200, self.stats())
        if method == "POST" and path.rstrip("/") in ("/v1/chat/completions", "/chat/completions"):
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self._chat(body, reader)
            finally:
                self.in_flight -= 1
        return self._json(404, _error_body(f"no route {method} {path}", "invalid_request_error"))

    def _next_fault(self) -> str:
        cfg = self.config
        if self._seq_index < len(cfg.sequence):
            fault = cfg.sequence[self._seq_index]
            self._seq_index += 1
            if fault not in FAULT_NAMES:
                raise ValueError(f"unknown fault {fault!r}; known: {FAULT_NAMES}")
            return fault
        for name in FAULT_NAMES[1:]:
            rate = getattr(cfg, f"rate_{name}")
            if rate > 0 and self.rng.random() < rate:
                return name
        return "ok"

    async def _chat(self, raw: bytes, reader: asyncio.StreamReader) -> bytes | None:
        cfg = self.config
        self.requests += 1
        try:
            body = json.loads(raw)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise ValueError("messages must be a list")
        except ValueError as e:
            return self._json(400, _error_body(f"invalid request body: {e}", "invalid_request_error"))
        self.bodies.append(body)
        rf = body.get("response_format")
        rf_type = rf.get("type") if isinstance(rf, dict) else None
        self.dialects_seen[rf_type or "none"] += 1
        if rf_type not in (None, "text") and rf_type not in cfg.dialects:
            self.rejected_dialect += 1
            await asyncio.sleep(cfg.latency_s)
            msg = f"response_format type {rf_type!r} is not supported by this server"
            return self._json(
                cfg.reject_status, _error_body(msg, "invalid_request_error", param="response_format")
            )

        fault = self._next_fault()
        self.faults[fault] += 1
        if fault == "hang":
            # Sleep, but stop as soon as the client gives up and closes the connection.
            sleeper = asyncio.ensure_future(asyncio.sleep(cfg.hang_s))
            eof = asyncio.ensure_future(reader.read(1))
            done, pending = await asyncio.wait({sleeper, eof}, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            if eof in done:
                return None
        else:
            await asyncio.sleep(cfg.latency_s)

        retry = f"Retry-After: {cfg.retry_after_s:g}\r\n" if cfg.retry_after_s is not None else ""
        if fault == "429":
            err = _error_body("Rate limit reached for requests", "rate_limit_error", "rate_limit_exceeded")
            return self._json(429, err, extra=retry)
        if fault == "500":
            return self._json(
                500, _error_body("The server had an error processing your request.", "server_error")
            )
        if fault == "503":
            return self._json(503, _error_body("The server is overloaded.", "server_error"), extra=retry)
        if fault == "context":
            msg = "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens."
            return self._json(
                400, _error_body(msg, "invalid_request_error", "context_length_exceeded", "messages")
            )
        if fault == "malformed":
            return self._http(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>")

        content: str | None
        refusal: str | None = None
        finish = "stop"
        if fault == "empty":
            content = ""
        elif fault == "refusal":
            content, refusal = None, "I'm sorry, I can't help with that."
        elif fault == "content_filter":
            content, finish = None, "content_filter"
        elif fault == "garbage":
            content = "Well, let me think about this. I would rather not answer in any particular format."
        else:
            content = self.responder(body)
            if fault == "truncated":
                content, finish = content[: max(1, len(content) // 2)], "length"
        return self._json(200, self._completion(body, content, refusal, finish))

    def _completion(
        self, body: dict[str, Any], content: str | None, refusal: str | None, finish: str
    ) -> dict[str, Any]:
        self._ids += 1
        prompt_chars = sum(len(m.get("content") or "") for m in body["messages"] if isinstance(m, dict))
        return {
            "id": f"chatcmpl-fault-{self._ids}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.config.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_chars // 4 + 4 * len(body["messages"]),
                "completion_tokens": max(1, len(content or "") // 4),
                "total_tokens": prompt_chars // 4
                + 4 * len(body["messages"])
                + max(1, len(content or "") // 4),
            },
        }


class FaultServerProcess:
    """The fault server in a child process (its own core and GIL: used by the throughput benchmark)."""

    def __init__(self, *args: str) -> None:
        self.args = list(args)
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rsi_env.testing.fault_server", *self.args],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fault server process did not start: {line!r}")
        self.base_url = line.split(" ", 1)[1]
        return self.base_url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self.proc = None

    def __enter__(self) -> FaultServerProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fault-injecting OpenAI-compatible test server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", default="{}", help="FaultConfig as JSON")
    parser.add_argument("--latency", type=float, default=None, help="shortcut for latency_s")
    ns = parser.parse_args(argv)
    config = FaultConfig.model_validate_json(ns.config)
    if ns.latency is not None:
        config.latency_s = ns.latency
    server = FaultServer(config, host=ns.host, port=ns.port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve_forever())


if __name__ == "__main__":
    main()
