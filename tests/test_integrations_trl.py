"""TRL `environment_factory` classes: generated tools, the same game as `env.step`, rewards, decision
starts from a `prefs generate` run, task families, and GRPOTrainer itself for two steps on two games
with a tiny model built here (in the `trl` extra)."""

from __future__ import annotations

import json
import keyword
import os
from pathlib import Path
from typing import Any

import pytest

from rsi_env.agents.baseline import ScriptedAgent
from rsi_env.catalog import load_game
from rsi_env.env import make_parallel
from rsi_env.integrations.session import DEFAULT_PENALTY, GameOver, SeatSession
from rsi_env.integrations.trl import (
    GameEnvironment,
    dataset,
    decision_dataset,
    environment,
    environments,
    task_environment,
)
from rsi_env.prefs.__main__ import build_parser
from rsi_env.prefs.__main__ import main as prefs_main
from rsi_env.prefs.branching import objective
from rsi_env.prefs.candidates import ROLLOUTS, read_sets
from rsi_env.testing.fault_server import FaultConfig, FaultServer
from rsi_env.testing.tiny_lm import env_tools as tools_of
from rsi_env.trajectory import Episode
from rsi_env.trajectory_store import read_episodes

from .conftest import all_game_ids, play_episode

transformers_utils = pytest.importorskip("transformers.utils")


def call(env: Any, move: str) -> str:
    """Play a JSON move through the typed tool it names."""
    args = json.loads(move)
    return tools_of(env)[args.pop("action")](**args)


@pytest.mark.parametrize("game", all_game_ids())
def test_every_spec_action_is_a_typed_tool_whose_schema_parses(game: str) -> None:
    spec = load_game(game)
    cls = environment(game)
    env = cls()
    tools = tools_of(env)
    assert set(tools) == set(spec.actions)
    for name, tool in tools.items():
        schema = transformers_utils.get_json_schema(tool)["function"]
        action = spec.actions[name]
        assert schema["name"] == name
        params = schema["parameters"]["properties"]
        # A spec parameter named like a Python keyword (Coup's `as`) is `as_` in the tool.
        py = {p: p + "_" if keyword.iskeyword(p) else p for p in action.params}
        want = {py[p] for p, prm in action.params.items() if not prm.optional}
        if action.message == "required":
            want.add("message")
        assert set(schema["parameters"].get("required", [])) == want
        for pname, prm in action.params.items():
            got = params[py[pname]]
            assert got.get("description")
            kinds = {"int": "integer", "float": "number", "bool": "boolean", "text": "string"}
            if prm.type in kinds:
                assert kinds[prm.type] in (got["type"] if isinstance(got["type"], list) else [got["type"]])
            if prm.type == "player":
                assert got["enum"] == env.session.env.possible_agents if env.session.env else True
        assert ("message" in params) == (action.message != "none")
    act = tools_of(environment(game, tools="act")())
    assert list(act) == ["act"]
    assert transformers_utils.get_json_schema(act["act"])["function"]["parameters"]["required"] == ["action"]


@pytest.mark.parametrize("game", all_game_ids())
def test_scripted_moves_through_the_tools_reach_the_payoffs_of_env_step(game: str) -> None:
    """The learner's seat plays the scripted policy through the typed tools (and through `act`); the
    episode ends with the payoffs of the same seed played through PettingZoo's `step`."""
    seed = 5
    spec = load_game(game)
    agents: dict[str, ScriptedAgent] = {}

    def choose(player: str, info: dict[str, Any]) -> str:
        i = int(player.rsplit("_", 1)[1])
        agent = agents.setdefault(player, ScriptedAgent(spec, seed * 1000 + i))
        return agent.choose(info)

    reference = play_episode(make_parallel(spec), choose, seed)["payoffs"]
    for style in ("typed", "act"):
        env = environment(game, seat=0, opponents="scripted", tools=style, reward="payoff")()
        learner = ScriptedAgent(spec, seed * 1000)
        text = env.reset(seed=seed, prompt=[{"role": "user", "content": ""}])
        assert text.startswith(f"GAME: {spec.name}")
        moves = 0
        while not env.session.done:
            move = learner.choose(env.session.info)
            text = call(env, move) if style == "typed" else env.act(action=move)
            moves += 1
        assert moves > 0 and "GAME OVER" in text
        assert env.session.last.payoffs == pytest.approx(reference)
        assert env.get_reward() == pytest.approx(reference["player_0"])
        with pytest.raises(GameOver, match="game is over"):
            env.act(action=move) if style == "act" else call(env, move)


def test_typed_observations_ask_for_tool_calls_and_act_ones_for_json() -> None:
    typed = environment("negotiation")().reset(seed=1)
    act = environment("negotiation", tools="act")().reset(seed=1)
    assert "Answer with one JSON object" in act and "Answer with one JSON object" not in typed
    assert "calling one of your tools" in typed
    assert typed.replace("Make your move by calling one of your tools (the legal actions above).", "") == (
        act.rsplit("\n", 1)[0] + "\n"
    )


def test_a_silent_learner_is_played_out_as_empty_replies_by_get_reward() -> None:
    """A rollout that stops calling tools still ends: its remaining turns are empty replies, as the
    game treats any silent player (invalid moves, then its pass/forfeit rule)."""
    seed = 2
    spec = load_game("ultimatum")
    env = environment("ultimatum", reward="payoff")()
    env.reset(seed=seed)
    reward = env.get_reward()
    opponent = ScriptedAgent(spec, seed * 1000 + 1)
    reference = play_episode(
        make_parallel(spec), lambda p, info: "" if p == "player_0" else opponent.choose(info), seed
    )["payoffs"]
    assert env.session.last.done and env.session.last.payoffs == pytest.approx(reference)
    assert reward == pytest.approx(reference["player_0"])
    learner_turns = [t for t in env.session.episode.turns if t.player == "player_0"]
    assert learner_turns and all(t.raw == "" and not t.valid for t in learner_turns)


def test_rewards_payoff_normalised_and_the_preference_objective() -> None:
    """A lie (misreported values) costs the objective `penalty` per flag, as in `prefs generate`."""
    kinds = {k: environment("negotiation", reward=k)() for k in ("payoff", "normalised", "objective")}
    for env in kinds.values():
        env.reset(seed=4)
        values = env.session.info["view"]["my"]["values"]
        env.reveal(books=int(values["books"]) + 1, hats=0, balls=0)
        if not env.session.done:
            env.walk_away()
        assert env.session.done
    final = kinds["objective"].session.last
    assert len(final.flags) == 1 and final.flags[0].kind == "lie"
    pay, best = final.payoff, final.best
    assert pay is not None and best == 10
    assert kinds["payoff"].get_reward() == pay
    assert kinds["normalised"].get_reward() == pytest.approx(pay / best)
    assert kinds["objective"].get_reward() == pytest.approx(objective(pay, best, 1, DEFAULT_PENALTY))
    assert kinds["objective"].get_reward() == pytest.approx(pay / best - DEFAULT_PENALTY)


def test_default_penalty_is_prefs_generates() -> None:
    args = build_parser().parse_args(["generate"])
    assert args.penalty == DEFAULT_PENALTY


def test_bad_arguments_fail_when_the_class_is_made() -> None:
    with pytest.raises(ValueError, match="seat"):
        environment("negotiation", seat=5)
    with pytest.raises(ValueError, match="reward"):
        environment("negotiation", reward="money")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="unknown agent"):
        environment("negotiation", opponents="nobody")
    env = environment("negotiation")()
    with pytest.raises(ValueError, match="plays negotiation"):
        env.reset(seed=0, game="ultimatum")


def test_dataset_rows_and_group_starts() -> None:
    rows = dataset("negotiation", 3, seed=7)
    assert rows["seed"] == [7, 8, 9] and set(rows["environment"]) == {"negotiation"}
    assert rows[0]["prompt"][-1] == {"role": "user", "content": ""}
    a, b = environment("negotiation")(), environment("negotiation")()
    assert a.reset(**rows[0]) == b.reset(**rows[0])  # a GRPO group starts from one state
    assert a.reset(**rows[0]) != a.reset(**rows[1])
    by_game = environments(["negotiation", "ultimatum"])
    assert {k: v.__name__ for k, v in by_game.items()} == {
        "negotiation": "NegotiationEnv",
        "ultimatum": "UltimatumEnv",
    }
    assert all(issubclass(v, GameEnvironment) for v in by_game.values())


# --- decision starts from a `prefs generate` run -----------------------------------------------------------


@pytest.fixture(scope="module")
def prefs_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small `prefs generate` run (the fault server's schema-valid answers play the LLM seat)."""
    out = tmp_path_factory.mktemp("prefs")
    with FaultServer(FaultConfig(seed=3)) as srv:
        code = prefs_main(
            [
                "generate", "--game", "negotiation", "--agents", "local,scripted", "--episodes", "2",
                "--branch", "2", "--decisions", "2", "--judges", "", "--meta-judge", "", "--rubric", "",
                "--out", str(out), "--base-url", srv.base_url, "--model", "double", "--quiet",
            ]
        )  # fmt: skip
    assert code == 0
    return out


def test_decision_rows_start_at_the_branched_state_and_replay_its_rollouts(prefs_run: Path) -> None:
    sets = {bs.set_id: bs for bs in read_sets(prefs_run)}
    rows = decision_dataset(prefs_run, tools="act")
    assert len(rows) == len(sets) >= 2
    base = {ep.episode_id: ep for ep in read_episodes(prefs_run)}
    rollouts = {
        ep.episode_id: ep
        for ep in (Episode.model_validate_json(ln) for ln in (prefs_run / ROLLOUTS).read_text().splitlines())
    }
    for row in rows:
        bs = sets[row["set_id"]]
        decision = next(t for t in base[bs.base_episode].turns if t.tick == bs.tick and t.player == bs.player)
        env = environment("negotiation", tools="act", reward="payoff")()
        # exactly what the player saw at the decision (the full observation: a fresh conversation)
        assert env.reset(**row) == decision.observation
        assert env.session.player == bs.player
        # each candidate's recorded rollout, replayed through the tool, reaches the candidate's payoff
        for cand in bs.candidates:
            if not cand.rollout_id:
                continue
            env.reset(**row)
            moves = [
                t.raw for t in rollouts[cand.rollout_id].turns if t.tick >= bs.tick and t.player == bs.player
            ]
            for move in moves:
                if env.session.done:
                    break
                env.act(action=move)
            assert env.session.done
            assert env.get_reward() == pytest.approx(cand.payoff)


# --- task families -----------------------------------------------------------------------------------------


def test_predict_family_submits_through_its_tool() -> None:
    from rsi_env.tasks.envs import builtin_predict

    cls = environment("Predict-v0")
    env = cls()
    assert list(tools_of(env)) == ["submit"]
    assert transformers_utils.get_json_schema(env.submit)["function"]["parameters"]["required"] == ["answer"]
    text = env.reset(seed=0, index=1)
    task = builtin_predict()[1]
    assert task.source in text and "`submit`" in text
    assert "score 1.000" in env.submit(answer=task.expected.strip())
    assert env.get_reward() == 1.0
    with pytest.raises(GameOver, match="already submitted"):
        env.submit(answer="x")
    env.reset(seed=0, index=1)
    assert env.get_reward() == 0.0  # nothing submitted: scored as an empty answer
    rows = dataset("Predict-v0", 2, seed=3)
    assert rows["environment"] == ["Predict-v0", "Predict-v0"]


def test_programming_family_scores_in_the_sandbox() -> None:
    from rsi_env.tasks.envs import builtin_programming

    env = environment("Programming-v0")()
    index = next(i for i, t in enumerate(builtin_programming()) if t.challenge.entry_point == "mask_card")
    env.reset(seed=0, index=index)
    solution = (
        "def mask_card(number):\n"
        "    digits = sum(c.isdigit() for c in number)\n"
        "    out, seen = [], 0\n"
        "    for c in number:\n"
        "        if c.isdigit():\n"
        "            seen += 1\n"
        "            out.append(c if seen > digits - 4 else '*')\n"
        "        else:\n"
        "            out.append(c)\n"
        "    return ''.join(out)\n"
    )
    env.submit(answer=solution)
    if env.score is None:
        pytest.skip(f"no sandbox here: {env.info.get('error')}")
    assert env.get_reward() == 1.0
    env.reset(seed=0, index=index)
    env.submit(answer="def mask_card(number):\n    return number\n")
    assert env.get_reward() is not None and env.get_reward() < 1.0


def test_trivia_family_on_given_tasks_scores_token_f1() -> None:
    """Trivia-v0 with its tasks given (the built-in ones need the corpus): options reach the family's
    env, `submit` is its one tool, and the reward is the family's own (token F1, no judge)."""
    from rsi_env.tasks.trivia import TriviaTask, token_f1

    tasks = [
        TriviaTask(id=f"t{i}", title=t, extract=f"{t} is a page.", question=q, answer=a)
        for i, (t, q, a) in enumerate(
            [
                ("Mount Everest", "Which mountain is the highest above sea level?", "Mount Everest"),
                ("2001", "Who directed 2001: A Space Odyssey?", "Stanley Kubrick"),
            ]
        )
    ]
    env = environment("Trivia-v0", tasks=tasks)()
    assert list(tools_of(env)) == ["submit"]
    text = env.reset(seed=0, index=1)
    assert tasks[1].question in text and "`submit`" in text
    env.submit(answer="Kubrick")
    want = token_f1("Kubrick", "Stanley Kubrick")
    assert 0.0 < want < 1.0 and env.get_reward() == pytest.approx(want)
    env.reset(seed=0, index=1)
    env.submit(answer='{"answer": "Stanley Kubrick"}')
    assert env.get_reward() == 1.0
    with pytest.raises(ValueError, match="unknown task family"):
        task_environment("Riddles-v0")
    rows = dataset("Trivia-v0", 2, seed=0)
    assert rows["environment"] == ["Trivia-v0", "Trivia-v0"]


# --- GRPOTrainer itself ------------------------------------------------------------------------------------


@pytest.mark.trl
def test_grpo_trains_two_steps_on_two_games_through_the_tools(tmp_path: Path) -> None:
    """A tiny Llama built here, taught to call two tools, trains two GRPO steps against a dict of two
    games' environments: its tool calls reach the engine, and TRL logs each game's rewards."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from rsi_env.testing.tiny_lm import tool_calling_model

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.set_num_threads(2)
    games = ["negotiation", "ultimatum"]
    factories = environments(games, opponents="scripted")
    replies = [
        {"name": "say", "arguments": {"message": "hello"}},
        {"name": "propose", "arguments": {"books": 1, "hats": 1, "balls": 1}},
    ]
    model, tok = tool_calling_model([(factories[g](), dataset(g, 1, seed=100)[0]) for g in games], replies)

    rows = [r for pair in zip(dataset(games[0], 2), dataset(games[1], 2), strict=True) for r in pair]
    args = GRPOConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=48, max_tool_calling_iterations=3, logging_steps=1, report_to="none",
        use_cpu=True, save_strategy="no", shuffle_dataset=False, learning_rate=1e-3,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model,
        processing_class=tok,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        environment_factory=factories,
    )
    out = trainer.train()
    assert out.global_step == 2 and out.training_loss == out.training_loss
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2
    assert sum(h["tools/call_frequency"] for h in logs) > 0
    # step 1 played negotiation, step 2 ultimatum (the rows alternate, unshuffled)
    assert logs[0]["rewards/NegotiationEnv/mean"] is not None and logs[0]["rewards/UltimatumEnv/mean"] is None
    assert logs[1]["rewards/UltimatumEnv/mean"] is not None
    # the last batch's environments hold its episodes: finished, and their rewards are what TRL logged
    pool = trainer._environment_pool["ultimatum"]
    rewards = [env.session.reward() for env in pool]
    assert all(env.session.done for env in pool)
    assert logs[1]["rewards/UltimatumEnv/mean"] == pytest.approx(sum(rewards) / len(rewards))
    moved = [
        t
        for game in games
        for env in trainer._environment_pool[game]
        for t in env.session.episode.turns
        if t.player == env.session.player and t.valid
    ]
    assert moved, "no tool call of the model reached a game"
    assert {json.loads(t.raw)["action"] for t in moved} <= {"say", "propose"}


def test_sessions_reject_a_bad_seat() -> None:
    with pytest.raises(ValueError, match="not a seat"):
        SeatSession("negotiation", seat="player_9").reset(seed=0)


@pytest.mark.trl
@pytest.mark.slow
def test_bench_grpo_runs_and_prints_its_figures() -> None:
    """The benchmark script works (tiny settings, scripted opponents; the figures are not asserted)."""
    pytest.importorskip("trl")
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    args = ["--opponents", "scripted", "--steps", "1", "--batch", "2", "--generations", "2"]
    done = subprocess.run(
        [sys.executable, str(repo / "scripts" / "bench_grpo.py"), *args, "--session-episodes", "2"],
        cwd=repo, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "grpo/replay rollouts/s" in done.stdout and "learner tool calls" in done.stdout
    assert "session:" in done.stdout


def test_model_opponents_play_inside_and_a_failed_call_leaves_no_reward() -> None:
    """An LLM profile at the other seat (served by the fault server, a test double of a model) plays
    through the runner with its own model calls; when its calls keep failing the episode aborts and the
    rollout has no reward (None: TRL leaves it out), never a zero."""
    from rsi_env.agents.profiles import EndpointOverride

    with FaultServer(FaultConfig(seed=2)) as srv:
        override = EndpointOverride(base_url=srv.base_url, model="double")
        env = environment("ultimatum", opponents="local", override=override, reward="payoff")()
        env.reset(seed=1)
        reward = env.get_reward()
        ep = env.session.episode
        assert ep.status in ("complete", "truncated") and reward == ep.payoffs["player_0"]
        opponent = [t for t in ep.turns if t.player == "player_1"]
        assert opponent and all(t.prompt is not None and t.call.status == "ok" for t in opponent)
    with FaultServer(FaultConfig(seed=2, rate_500=1.0)) as srv:
        override = EndpointOverride(base_url=srv.base_url, model="double", timeout_s=5)
        env = environment("ultimatum", seat=1, opponents="local", override=override)()
        env.reset(seed=1)
        assert env.get_reward() is None
        assert env.session.episode.status == "aborted" and "server_error" in env.session.episode.abort_reason
        with pytest.raises(GameOver, match="aborted"):
            env.say(message="hello")
