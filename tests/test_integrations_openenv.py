"""The OpenEnv server on loopback: every built-in game played by an OpenEnv client to the payoffs of
the same seed through PettingZoo, OpenEnv's own runtime conformance check, the CLI, the manifest,
and a TRL environment class over the client training one GRPO step (in the `trl` extra)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openenv")
uvicorn = pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

from openenv.cli._validation import validate_running_environment  # noqa: E402
from openenv.validation.parsers.openenv_yaml import OpenEnvYamlParser  # noqa: E402

from rsi_env.agents.baseline import ScriptedAgent  # noqa: E402
from rsi_env.catalog import load_game  # noqa: E402
from rsi_env.env import make_parallel  # noqa: E402
from rsi_env.integrations.openenv import (  # noqa: E402
    GameAction,
    GameClient,
    GameObservation,
    create_app,
    remote_environment,
)
from rsi_env.integrations.session import seat_reward  # noqa: E402
from rsi_env.integrations.trl import dataset  # noqa: E402

from .conftest import all_game_ids, play_episode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """A real uvicorn server for `app` on a free loopback port, in a thread; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def scripted_reference(game: str, seed: int) -> dict[str, float]:
    spec = load_game(game)
    agents: dict[str, ScriptedAgent] = {}

    def choose(player: str, info: dict[str, Any]) -> str:
        i = int(player.rsplit("_", 1)[1])
        return agents.setdefault(player, ScriptedAgent(spec, seed * 1000 + i)).choose(info)

    return play_episode(make_parallel(spec), choose, seed)["payoffs"]


@pytest.mark.parametrize("game", all_game_ids())
def test_an_openenv_client_plays_every_game_to_the_payoffs_of_pettingzoo(game: str) -> None:
    seed = 7
    spec = load_game(game)
    with serving(create_app(game, seat=0, opponents="scripted")) as url:
        with GameClient(base_url=url).sync() as env:
            result = env.reset(seed=seed)
            obs = result.observation
            assert isinstance(obs, GameObservation) and not result.done and result.reward is None
            assert obs.game == game and obs.player == "player_0" and obs.text.startswith(f"GAME: {spec.name}")
            assert obs.action_schema is not None and obs.legal_actions
            learner = ScriptedAgent(spec, seed * 1000)
            steps = 0
            while not result.done:
                reply = learner.choose(
                    {"view": result.observation.view, "action_schema": result.observation.action_schema}
                )
                # both forms of a move: raw text, and the JSON object
                action = (
                    GameAction(text=reply) if steps % 2 else GameAction(move=__import__("json").loads(reply))
                )
                result = env.step(action)
                steps += 1
            final = result.observation
            assert final.payoffs == pytest.approx(scripted_reference(game, seed))
            assert final.status in ("complete", "truncated") and "GAME OVER" in final.text
            assert result.reward == pytest.approx(seat_reward(final, "objective"))
            state = env.state()
            assert state.step_count == steps and state.game == game and state.seed == seed
            with pytest.raises(Exception, match="game is over"):
                env.step(GameAction(text="{}"))


def test_server_endpoints_pass_openenvs_own_runtime_check() -> None:
    with serving(create_app("negotiation", opponents="random", reward="payoff")) as url:
        assert requests.get(f"{url}/health", timeout=10).json()["status"] == "healthy"
        schema = requests.get(f"{url}/schema", timeout=10).json()
        assert {"move", "text"} <= set(schema["action"]["properties"])
        assert {"text", "action_schema", "payoffs", "flags", "done", "reward"} <= set(
            schema["observation"]["properties"]
        )
        meta = requests.get(f"{url}/metadata", timeout=10).json()
        assert meta["name"] == "rsi_env/negotiation"
        report = validate_running_environment(url)
        failed = [c for c in report["criteria"] if not c["passed"]]
        assert report["passed"], failed
        # a move that is neither form is refused by the Action model (HTTP 422), not played
        bad = requests.post(
            f"{url}/step", json={"action": {"move": {"action": "x"}, "text": "y"}}, timeout=10
        )
        assert bad.status_code == 422


def test_concurrent_sessions_are_independent() -> None:
    with serving(create_app("negotiation", opponents="scripted", max_sessions=4)) as url:
        a, b = GameClient(base_url=url).sync(), GameClient(base_url=url).sync()
        with a, b:
            ra, rb = a.reset(seed=1, episode_id="run-a"), b.reset(seed=2)
            assert ra.observation.view["my"] != rb.observation.view["my"]  # two deals
            # OpenEnv's `reset(seed, episode_id)`: the client's id names the episode, else the engine's
            assert a.state().episode_id == "run-a"
            assert b.state().episode_id.startswith("negotiation-s2-") and b.state().seed == 2
            ra2 = a.step(GameAction(text=""))
            assert ra2.observation.tick > ra.observation.tick
            assert b.state().step_count == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_cli_serves_a_game(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "rsi_env.serve", "--game", "trust", "--seat", "1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        with GameClient(base_url=url).sync() as client:
            result = client.reset(seed=4)
            assert result.observation.player == "player_1"
            while not result.done:
                result = client.step(GameAction(text=""))
            assert result.observation.payoffs is not None
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_cli_rejects_bad_input_with_one_message(capsys: pytest.CaptureFixture[str]) -> None:
    from rsi_env.serve import main

    for args, said in (
        (["--game", "nope"], "unknown game id"),
        (["--game", "negotiation", "--seat", "7"], "not a seat"),
        (["--game", "negotiation", "--opponents", "human"], "human"),
        (["--game", "negotiation", "--opponents", "nobody"], "unknown agent"),
        (["--game", "negotiation", "--max-sessions", "0"], "--max-sessions"),
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert said in err and err.startswith("error:") and "Traceback" not in err


def test_manifest_and_dockerfile_match_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = OpenEnvYamlParser().parse(ROOT)  # OpenEnv's own parser and schema
    assert manifest.name == "rsi_env"
    text = (ROOT / "openenv.yaml").read_text()
    assert "app: rsi_env.serve:app" in text
    assert '"rsi_env.serve:app"' in (ROOT / "Dockerfile").read_text()
    monkeypatch.setenv("RSI_ENV_GAME", "prisoners_dilemma")
    monkeypatch.setenv("RSI_ENV_OPPONENTS", "random")
    import rsi_env.serve as serve

    app = serve.app_from_environment()
    with serving(app) as url:
        with GameClient(base_url=url).sync() as client:
            assert client.reset(seed=0).observation.game == "prisoners_dilemma"


@pytest.mark.trl
def test_a_trl_environment_over_the_openenv_client_trains_one_step(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from rsi_env.testing.tiny_lm import tool_calling_model

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.set_num_threads(2)
    with serving(create_app("negotiation", opponents="scripted", reward="payoff")) as url:
        factory = remote_environment(url, "negotiation", reward="payoff")
        replies = [{"name": "propose", "arguments": {"books": 1, "hats": 1, "balls": 1}}]
        rows = dataset("negotiation", 2, seed=0)
        model, tok = tool_calling_model([(factory(), rows[0])], replies)
        args = GRPOConfig(
            output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=2,
            max_completion_length=32, max_tool_calling_iterations=2, logging_steps=1, report_to="none",
            use_cpu=True, save_strategy="no", learning_rate=1e-3,
        )  # fmt: skip
        train = datasets.Dataset.from_list(list(rows))
        trainer = GRPOTrainer(
            model=model, processing_class=tok, args=args, train_dataset=train, environment_factory=factory
        )
        out = trainer.train()
        assert out.global_step == 1
        log = next(h for h in trainer.state.log_history if "reward" in h)
        assert log["tools/call_frequency"] > 0
        pool = trainer._environment_pool[None]
        assert all(env.session.done for env in pool)
        rewards = [env.get_reward() for env in pool]
        assert log["rewards/RemoteNegotiationEnv/mean"] == pytest.approx(sum(rewards) / len(rewards))


def test_decision_starts_read_only_under_the_servers_runs_directory(tmp_path: Path) -> None:
    """A client may start from a decision of a recorded `prefs generate` run, and only under `--runs`."""
    from rsi_env.prefs.__main__ import main as prefs_main
    from rsi_env.prefs.candidates import read_sets
    from rsi_env.testing.fault_server import FaultConfig, FaultServer
    from rsi_env.trajectory_store import read_episodes

    run = tmp_path / "runs" / "prefs"
    with FaultServer(FaultConfig(seed=3)) as srv:
        code = prefs_main(
            [
                "generate", "--game", "negotiation", "--agents", "local,scripted", "--episodes", "1",
                "--branch", "2", "--decisions", "1", "--judges", "", "--meta-judge", "", "--rubric", "",
                "--out", str(run), "--base-url", srv.base_url, "--model", "double", "--quiet",
            ]
        )  # fmt: skip
    assert code == 0
    bs = read_sets(run)[0]
    decision = next(
        t for ep in read_episodes(run) for t in ep.turns if t.tick == bs.tick and t.player == bs.player
    )
    start = {"run_dir": "prefs", "episode_id": bs.base_episode, "tick": bs.tick, "player": bs.player}
    with serving(create_app("negotiation", runs=tmp_path / "runs")) as url:
        with GameClient(base_url=url).sync() as env:
            result = env.reset(start=start)
            assert result.observation.text == decision.observation and result.observation.player == bs.player
            with pytest.raises(Exception, match="outside the server's runs directory"):
                env.reset(start={**start, "run_dir": str(tmp_path)})
    with serving(create_app("negotiation")) as url:
        with GameClient(base_url=url).sync() as env:
            with pytest.raises(Exception, match="decision starts are off"):
                env.reset(start=start)
