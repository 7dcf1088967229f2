"""TextArena registration: `textarena.make("rsi-<game>-v0")` plays every built-in game to the end in
TextArena's own loop and wrappers, with the payoffs of the same seed through PettingZoo."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

ta = pytest.importorskip("textarena")

from rsi_env.agents.baseline import ScriptedAgent  # noqa: E402
from rsi_env.catalog import load_game  # noqa: E402
from rsi_env.env import make_parallel  # noqa: E402
from rsi_env.integrations.textarena import BaselineAgent, RsiGameEnv, env_id, register_all  # noqa: E402

from .conftest import all_game_ids, play_episode  # noqa: E402


def reference(game: str, seed: int, n: int) -> dict[str, float]:
    spec = load_game(game)
    agents: dict[str, ScriptedAgent] = {}

    def choose(player: str, info: dict[str, Any]) -> str:
        i = int(player.rsplit("_", 1)[1])
        return agents.setdefault(player, ScriptedAgent(spec, seed * 1000 + i)).choose(info)

    return play_episode(make_parallel(spec, n_players=n), choose, seed)["payoffs"]


def test_register_all_gives_one_id_per_game_and_is_idempotent() -> None:
    ids = register_all()
    assert ids == [env_id(g) for g in all_game_ids()] and "rsi-negotiation-v0" in ids
    assert register_all() == ids
    for suffix in ("", "-train", "-raw"):
        env = ta.make(f"rsi-negotiation-v0{suffix}")
        assert isinstance(env.unwrapped if hasattr(env, "unwrapped") else env, ta.Env)


@pytest.mark.parametrize("game", all_game_ids())
def test_textarena_loop_with_scripted_agents_plays_every_game_to_the_end(game: str) -> None:
    register_all()
    seed = 3
    spec = load_game(game)
    n = spec.players.default or spec.players.min
    env = ta.make(env_id(game))
    env.reset(num_players=n, seed=seed)
    agents = {i: BaselineAgent(env, i, "scripted", seed * 1000 + i) for i in range(n)}
    done, steps, first = False, 0, {}
    while not done:
        player_id, observation = env.get_observation()
        assert isinstance(observation, str) and observation
        first.setdefault(player_id, observation)
        done, _info = env.step(action=agents[player_id](observation))
        steps += 1
        assert steps < 2000
    rewards, game_info = env.close()
    want = reference(game, seed, n)
    assert {i: rewards[i] for i in range(n)} == pytest.approx({i: want[f"player_{i}"] for i in range(n)})
    assert all("RULES:" in text for text in first.values())  # every player read the rules first
    assert set(first) == set(range(n))
    assert all(game_info[i]["role"] for i in range(n)) and all("reason" in game_info[i] for i in range(n))


def test_an_invalid_move_is_feedback_not_an_error_and_bad_player_counts_are_refused() -> None:
    register_all()
    env = ta.make("rsi-ultimatum-v0")
    env.reset(num_players=2, seed=0)
    pid, _obs = env.get_observation()
    done, info = env.step(action="I refuse to answer in JSON")
    assert not done and info["results"][f"player_{pid}"]["valid"] is False
    pid2, observation = env.get_observation()
    assert pid2 == pid and "FEEDBACK:" in observation
    with pytest.raises(ValueError, match="takes 2 to 2 players"):
        RsiGameEnv("ultimatum").reset(num_players=3)


# A two-player bidding game; each case below breaks it one way.
BIDS = """
id: t
name: T
rules: r
ethics: {fair_play: [x], violations: [y]}
players: {min: 2, max: 2}
state:
  score: {type: int}
actions:
  bid:
    params: {amount: {type: int, min: 1, max: 3}}
    effects: [{add: state.score, value: args.amount}]
phases:
  - {name: a, mode: simultaneous, actions: [bid]DEFAULT}
invalid_actions: {allowance: 1}
end: {when: 'turn >= 2', turn_limit: 2}
payoffs: {value: PAYOFF}
policy: [{action: bid, args: {amount: '1'}}]
"""


@pytest.mark.parametrize(
    ("default", "payoff", "move", "reason"),
    [
        # A default move that fails at every turn (its amount is below the parameter's minimum): the
        # game plays to its end with payoffs of 0, which are no score.
        (", default_move: {action: bid, args: {amount: '0'}}", "state.score", "no JSON here",
         "game_error: tick 0: phases.a.default_move"),
        # player_1's payoff divides by zero, player_0's is fine: the result is a score for neither
        # (the runner's rule, `GameEngine.failure`).
        ("", """'p == "player_0" ? 1 : state.score / (state.score - state.score)'""",
         '{"action": "bid", "args": {"amount": 2}}', "game_error: payoff of player_1 is not a finite number"),
    ],
    ids=["default_move_fails", "one_payoff_fails"],
)  # fmt: skip
def test_a_spec_that_fails_while_it_runs_has_no_rewards_not_zeros(
    default: str, payoff: str, move: str, reason: str
) -> None:
    """TextArena gets None for every seat and the engine's reason, never payoffs as if played."""
    from rsi_env.spec import parse_spec

    text = BIDS.replace("DEFAULT", default).replace("PAYOFF", payoff)
    env = RsiGameEnv(parse_spec(yaml.safe_load(text), "t"))
    env.reset(num_players=2, seed=0)
    done = False
    while not done:
        done, _info = env.step(action=move)
    rewards, game_info = env.close()
    assert rewards == {0: None, 1: None}
    assert game_info[0]["reason"].startswith(reason)
