"""Speed work on the expression layer must not change a single episode: each built-in game, on a fixed
seed, played by random legal moves, by damaged and invalid text, and by the scripted policy, gives
the same observations, infos, rewards and end state as recorded before that work (a hash of each).

A deliberate change to a game's spec or to what an observation shows changes its hashes: record the
new ones then (`_fingerprint` prints what to paste), not after a change that was meant to be neutral.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings

import pytest

import rsi_env
from rsi_env.agents.baseline import RandomAgent, ScriptedAgent
from rsi_env.catalog import load_game

SEED = 3
# (steps, hash) per arm: legal random moves, invalid text half the time, the scripted policy.
RECORDED: dict[str, tuple[str, str, str]] = {
    "auction": ("39:49111a9302a33ae0", "72:4a14873b82763d38", "39:25d055c9f7420554"),
    "avalon": ("210:988b8c54b1918508", "280:9108a8c79540ec06", "290:3461867264cfbe0d"),
    "coalition": ("18:089ac28b1cb9b071", "48:271e563be5d00048", "18:c71eed7e6e285644"),
    "codenames": ("128:b44ef8033edba25c", "244:a315cadc36c47ba0", "104:a9a570d32ebaa020"),
    "commons": ("39:84fb6a4b60da0517", "87:2396a04d0b824de4", "39:ee48ca58eaa7d17d"),
    "coup": ("66:a0be3e84c2d87aa8", "165:1daa235f869579be", "96:9aacb36cb93c1250"),
    "diplomacy": ("90:4e4765856813f144", "189:b4a0f9ad87eeb8a7", "57:e3c8bc92a8a3bebe"),
    "leduc_holdem": ("4:2866ef0b9f65911d", "14:3868e4f777893a32", "10:0c98081b01c7de0b"),
    "negotiation": ("4:f11d0bf866bd13e0", "14:209dc9db068c0e11", "22:529b6b694419a1a1"),
    "prisoners_dilemma": ("38:d693e40a98feaf11", "72:4a01702de803e008", "38:913ee61363ef4f73"),
    "public_goods": ("28:d4803063eb61c337", "64:a8ea687eeb9def0f", "28:d308707a288b29b7"),
    "trading": ("48:d6705f716339d56a", "60:16e45a504e9c982e", "30:ef093798824d044e"),
    "trust": ("26:0449b565d0a75bbc", "38:1831220d899f23e8", "26:d45a24302800928d"),
    "ultimatum": ("10:ae7d5370964dd8c3", "24:9f42d7c8105179fe", "10:3f099bfa661515a4"),
    "werewolf": ("40:12d9c7a3e6ec304c", "70:a71d0e6ed5fe5286", "40:003a70215d86dcf6"),
}
ARMS = ("legal", "invalid", "scripted")
_JUNK = ['{"action": "x"}', "hello", "{}", '{"action": 3}', ""]


def _fingerprint(game: str, seed: int, arm: str) -> str:
    """`steps:hash` of one AEC episode: every step's agent, observation, reward, flags, info and
    move, then the end state, payoffs and recorded errors."""
    env = rsi_env.make(game)
    env.reset(seed=seed)
    spec = load_game(game)
    rnd = random.Random(seed)
    agents: dict[str, RandomAgent | ScriptedAgent] = {}
    h = hashlib.sha256()
    steps = 0
    for agent in env.agent_iter():
        obs, reward, term, trunc, info = env.last()
        move: str | None
        if term or trunc:
            move = None
        elif arm == "invalid":
            junk = rnd.random() < 0.5
            move = rnd.choice(_JUNK) if junk else RandomAgent(rnd.randrange(99)).choose(info)
        elif arm == "scripted":
            move = agents.setdefault(agent, ScriptedAgent(spec, seed=seed + len(agents))).choose(info)
        else:
            move = agents.setdefault(agent, RandomAgent(len(agents) + seed)).choose(info)
        record = [agent, obs, reward, term, trunc, info, move]
        h.update(json.dumps(record, sort_keys=True, default=repr).encode())
        env.step(move)
        steps += 1
    eng = env.unwrapped.engine
    end = [eng.state, eng.pstate, eng.payoffs, eng.errors]
    h.update(json.dumps(end, sort_keys=True, default=repr).encode())
    return f"{steps}:{h.hexdigest()[:16]}"


@pytest.mark.parametrize("game", sorted(RECORDED))
def test_episodes_are_the_recorded_ones(game: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        got = tuple(_fingerprint(game, SEED, arm) for arm in ARMS)
    assert got == RECORDED[game], f'"{game}": {got},'
