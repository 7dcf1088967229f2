"""Throughput of the bare openai client and of ChatClient against the fault server (no faults), and
what validating a reply (the `jsonschema` package) costs beside a whole call.

Ideal duration = calls x latency / concurrency; efficiency = ideal / achieved. The server runs in a
child process so that it does not share the client's GIL. The validation rows time `validate_json`
per reply (an action, a whole generated game spec) and give it as a share of ChatClient's client CPU
per structured call, measured in the same run. Prints figures; asserts nothing.

    python scripts/bench_client.py [--calls 256] [--latency 0.1] [--concurrency 8 16 32 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

import openai

from rsi_env.llm import ChatClient, Endpoint, Sampling, _httpx, validate_json
from rsi_env.testing.fault_server import FaultConfig, FaultServerProcess

MESSAGES = [
    {"role": "system", "content": "You are a negotiator. " * 40},
    {"role": "user", "content": "The other player offers you 1 book. What do you do?"},
]
SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "properties": {
                "action": {"const": "propose"},
                "books": {"type": "integer", "minimum": 0, "maximum": 3},
                "message": {"type": "string", "maxLength": 200},
            },
            "required": ["action", "books"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"action": {"const": "accept"}},
            "required": ["action"],
            "additionalProperties": False,
        },
    ]
}


async def run_bounded(
    n_calls: int, concurrency: int, one_call: Callable[[], Awaitable[bool]]
) -> tuple[float, int]:
    """n_calls calls with at most `concurrency` in flight; returns (seconds, n_ok)."""
    sem = asyncio.Semaphore(concurrency)

    async def guarded() -> bool:
        async with sem:
            return await one_call()

    t0 = time.perf_counter()
    results = await asyncio.gather(*(guarded() for _ in range(n_calls)))
    return time.perf_counter() - t0, sum(results)


async def bench_raw(base_url: str, n_calls: int, concurrency: int, structured: bool) -> tuple[float, int]:
    """Baseline: a minimal keep-alive HTTP/1.1 client on asyncio streams, one connection per slot.

    It shows what the server sustains when client overhead is near zero.
    """
    host, port = base_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    body: dict[str, Any] = {"model": "fault-test-model", "messages": MESSAGES, "max_tokens": 64}
    if structured:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}
    payload = json.dumps(body).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    conns = [await asyncio.open_connection(host, int(port)) for _ in range(concurrency)]
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)

    async def one() -> bool:
        reader, writer = await free.get()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
            )
            data = json.loads(await reader.readexactly(length))
            return bool(data["choices"][0]["message"]["content"])
        finally:
            free.put_nowait((reader, writer))

    try:
        return await run_bounded(n_calls, concurrency, one)
    finally:
        for _, writer in conns:
            writer.close()


async def bench_bare(base_url: str, n_calls: int, concurrency: int, structured: bool) -> tuple[float, int]:
    http = openai.DefaultAsyncHttpxClient(
        limits=_httpx.Limits(max_connections=256, max_keepalive_connections=256)
    )
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0, http_client=http)
    extra: dict[str, Any] = {}
    if structured:
        extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}

    async def one() -> bool:
        r = await client.chat.completions.create(
            model="fault-test-model",
            messages=MESSAGES,
            max_tokens=64,
            **extra,  # type: ignore[arg-type]
        )
        return bool(r.choices[0].message.content)

    try:
        await run_bounded(concurrency, concurrency, one)  # warm the connection pool
        return await run_bounded(n_calls, concurrency, one)
    finally:
        await client.close()


async def bench_chat_client(
    base_url: str, n_calls: int, concurrency: int, structured: bool
) -> tuple[float, int]:
    sampling = Sampling(max_tokens=64)
    async with ChatClient(Endpoint(base_url=base_url, model="fault-test-model")) as client:

        async def one() -> bool:
            res = await client.chat(MESSAGES, schema=SCHEMA if structured else None, sampling=sampling)
            return res.ok

        await run_bounded(concurrency, concurrency, one)
        return await run_bounded(n_calls, concurrency, one)


def validation_us(instance: Any, schema: dict[str, Any]) -> float:
    """Microseconds per `validate_json` call (the validator is built per call, as ChatClient does)."""
    number = 200
    best = min(timeit.repeat(lambda: validate_json(instance, schema), number=number, repeat=5))
    return best / number * 1e6


def spec_case() -> tuple[Any, dict[str, Any]]:
    """A whole game spec (negotiation) and the generator's structured-output schema for it."""
    from rsi_env.catalog import load_game
    from rsi_env.generate.generator import structured_schema

    spec = load_game("negotiation").model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"provenance"}
    )
    return spec, structured_schema("full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32, 64])
    ns = parser.parse_args()

    config = FaultConfig(latency_s=ns.latency)
    with FaultServerProcess("--config", config.model_dump_json()) as server:
        print(f"fault server {server.base_url}: latency {ns.latency * 1000:.0f} ms, {ns.calls} calls per row")
        cols = [
            ("conc", 5),
            ("ideal s", 9),
            ("actual s", 10),
            ("calls/s", 9),
            ("ideal/s", 9),
            ("eff", 7),
            ("ok", 6),
            ("cpu ms/call", 13),
        ]
        print(f"{'client':<22}" + "".join(f"{name:>{width}}" for name, width in cols))
        call_cpu_ms: dict[str, float] = {}
        for name, fn, structured in [
            ("raw asyncio (schema)", bench_raw, True),
            ("bare openai (text)", bench_bare, False),
            ("bare openai (schema)", bench_bare, True),
            ("ChatClient (text)", bench_chat_client, False),
            ("ChatClient (schema)", bench_chat_client, True),
        ]:
            for conc in ns.concurrency:
                cpu0 = time.process_time()
                elapsed, n_ok = asyncio.run(fn(server.base_url, ns.calls, conc, structured))
                # Client CPU per call (warm-up calls included): what caps throughput on a small box.
                cpu_ms = (time.process_time() - cpu0) * 1000 / (ns.calls + conc)
                call_cpu_ms[name] = min(cpu_ms, call_cpu_ms.get(name, cpu_ms))
                ideal = ns.calls * ns.latency / conc
                print(
                    f"{name:<22}{conc:>5}{ideal:>9.2f}{elapsed:>10.2f}{ns.calls / elapsed:>9.1f}"
                    f"{conc / ns.latency:>9.1f}{ideal / elapsed:>7.2f}{n_ok:>6}{cpu_ms:>13.2f}"
                )

        per_call_us = call_cpu_ms["ChatClient (schema)"] * 1000
        wall_us = ns.latency * 1e6
        spec, spec_schema = spec_case()
        print(
            f"\nvalidation (jsonschema), per reply; against ChatClient (schema): {per_call_us:.0f} µs client "
            f"CPU per call, {wall_us:.0f} µs server latency per call"
        )
        print(f"{'reply':<30}{'µs':>10}{'of call CPU':>14}{'of call wall':>14}")
        for label, instance, schema in [
            ("action, valid", {"action": "propose", "books": 2, "message": "deal?"}, SCHEMA),
            ("action, invalid", {"action": "propose", "books": 9}, SCHEMA),
            ("game spec (negotiation)", spec, spec_schema),
        ]:
            us = validation_us(instance, schema)
            print(f"{label:<30}{us:>10.0f}{us / per_call_us:>14.1%}{us / (wall_us + per_call_us):>14.1%}")


if __name__ == "__main__":
    main()
