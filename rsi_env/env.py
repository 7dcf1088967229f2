"""PettingZoo environments over the game engine: `make` (AEC) and `make_parallel` (Parallel).

=====================  ==========================================================================
Agents                 `player_0` … `player_{n-1}`; `n_players=` within the spec's range
Observation space      `Dict({"text": Text(...)})`: what that player may see, written for an LLM
Action space           `Text(...)`: any string; a JSON action is expected, near-JSON is forgiven
info[agent]            `is_turn`, `legal_actions`, `action_schema` (JSON Schema, acting player
                       only), `view` (structured), `feedback`, `invalid_count`, `phase`, `turn`
Rewards                the spec's payoff, once, when the game ends (0 before)
Clock                  one tick per Parallel `step`; the AEC env visits every live agent per tick,
                       and a player who is not on turn may send anything (it is ignored)
max_cycles             ticks before truncation (default: turn limit x (invalid allowance + 1) + 10)
render_mode            "ansi" returns the transcript so far; "human" prints the new lines
=====================  ==========================================================================

Both envs share one engine class, so the two APIs play the same game; `snapshot()` / `restore()`
on either copies the exact game state (branching for preference data depends on it).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.utils import wrappers

from .catalog import load_game
from .engine import GameEngine
from .spec import GameSpec
from .view import DEFAULT_HISTORY, action_schema, player_view, render_observation, rules_head, transcript

MAX_OBSERVATION_CHARS = 100_000
MAX_ACTION_CHARS = 4_000

# Observations carry arbitrary model-written text, so the charset is the whole Basic Multilingual
# Plane minus control characters and surrogates; anything else is replaced by U+FFFD so that the
# observation is always a member of its declared space.
_ALLOWED = (
    "\t\n"
    + "".join(chr(c) for c in range(0x20, 0x7F))
    + "".join(chr(c) for c in (*range(0xA0, 0xD800), *range(0xE000, 0xFFFE)))
)
_DISALLOWED = re.compile("[^\t\n\x20-\x7e\xa0-\ud7ff\ue000-\ufffd]")


class UnicodeText(spaces.Text):
    """`Text` over a large charset with a fast uniform `sample`.

    gymnasium's `Text.sample` builds a probability vector over the whole charset and converts the
    charset tuple to an array on every call (~20 ms for 63k characters); drawing indices into a
    cached array gives the same distribution at a fraction of the cost. Given the regex of the
    characters outside its charset, `contains` is one regex search instead of a set lookup per
    character.
    """

    def __init__(self, *args: Any, outside: re.Pattern[str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._outside = outside

    def contains(self, x: Any) -> bool:
        if self._outside is None or not isinstance(x, str):
            return super().contains(x)
        return self.min_length <= len(x) <= self.max_length and self._outside.search(x) is None

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        codes = self.__dict__.get("_codes")
        if codes is None:
            codes = self.__dict__["_codes"] = np.array([ord(c) for c in self.character_list], dtype="<u4")
        length = int(self.np_random.integers(self.min_length, self.max_length + 1))
        picked = codes[self.np_random.integers(0, len(codes), size=length)]
        return picked.tobytes().decode("utf-32-le")


@cache
def _charset() -> frozenset[str]:
    # Built once per process: the 63k-character charset takes ~50 ms to index.
    return frozenset(_ALLOWED)


def text_space(max_length: int) -> UnicodeText:
    """A `Text` space over what any model may write: the Basic Multilingual Plane minus control
    characters and surrogates (the task envs use it too)."""
    return UnicodeText(max_length=max_length, min_length=0, charset=_charset(), outside=_DISALLOWED)


def printable(text: str) -> str:
    """`text` with every character outside `text_space`'s charset replaced by U+FFFD."""
    return _DISALLOWED.sub("\ufffd", text)


@cache
def _spaces() -> tuple[spaces.Dict, spaces.Text]:
    return spaces.Dict({"text": text_space(MAX_OBSERVATION_CHARS)}), text_space(MAX_ACTION_CHARS)


def _fresh(space: Any) -> Any:
    """A copy sharing the (large, immutable) charset but with its own random generator."""
    out = copy.copy(space)
    out._np_random = None
    if isinstance(space, spaces.Dict):
        out.spaces = {k: _fresh(v) for k, v in space.spaces.items()}
    return out


def sanitize(text: str, clean_head: str = "") -> str:
    """`text` printable and cut to the observation's length. A start of it known to be printable
    (`clean_head`: the rules, ~half of an observation) is not scanned again."""
    if clean_head and text.startswith(clean_head):
        text = clean_head + printable(text[len(clean_head) :])
    else:
        text = printable(text)
    if len(text) > MAX_OBSERVATION_CHARS:
        text = "…" + text[-(MAX_OBSERVATION_CHARS - 1) :]
    return text


class _GameEnvBase:
    """What both PettingZoo APIs share: the engine, spaces, observations and infos per tick."""

    metadata: dict[str, Any]
    possible_agents: list[str]
    render_mode: str | None

    def _init_game(
        self,
        spec: GameSpec,
        n_players: int | None,
        max_cycles: int | None,
        render_mode: str | None,
        history: int,
    ) -> None:
        if render_mode is not None and render_mode not in ("human", "ansi"):
            raise ValueError(f"render_mode must be 'human', 'ansi' or None, got {render_mode!r}")
        self.spec = spec
        self.engine = GameEngine(spec, n_players=n_players, max_ticks=max_cycles)
        self.possible_agents = list(self.engine.players)
        self.render_mode = render_mode
        self.history = history
        self.metadata = {"name": spec.id, "render_modes": ["human", "ansi"], "is_parallelizable": True}
        self._cache: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
        self._rendered_events = 0
        head = rules_head(spec)
        self._clean_head = head if printable(head) == head else ""
        obs_space, act_space = _spaces()
        # Per agent and per env, so that seeding one agent's space does not move another's samples.
        self._obs_spaces = {a: _fresh(obs_space) for a in self.possible_agents}
        self._act_spaces = {a: _fresh(act_space) for a in self.possible_agents}

    def observation_space(self, agent: str) -> spaces.Dict:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Text:
        return self._act_spaces[agent]

    def _obs_info(self, agent: str) -> tuple[dict[str, str], dict[str, Any]]:
        """Observation and info of `agent` for the current tick (cached until the next tick)."""
        hit = self._cache.get(agent)
        if hit is None:
            e = self.engine
            schema = action_schema(e, agent) if agent in e.current_actors() else None
            view = player_view(e, agent, self.history, schema)
            over: list[str] = []
            text = render_observation(e.spec, view, schema, e.feedback.get(agent), over_budget=over)
            for message in over:  # a hint over the budget in a state the dry run never reached
                e.record_error(message)
            text = sanitize(text, self._clean_head)
            info = {
                "is_turn": view["is_turn"],
                "legal_actions": e.legal_actions(agent),
                "action_schema": schema,
                "view": view,
                "feedback": e.feedback.get(agent),
                "invalid_count": e.invalid_total[agent],
                "phase": e.phase,
                "turn": e.turn,
                "tick": e.tick_no,
            }
            if e.done:
                info["payoff"] = (e.payoffs or {}).get(agent)
                info["end_reason"] = e.end_reason
                failure = e.failure()
                if failure is not None:  # the payoffs are not a score (the runner's rule)
                    info["game_error"] = failure.removeprefix("game_error: ")
            hit = self._cache[agent] = ({"text": text}, info)
        return hit

    def observe(self, agent: str) -> dict[str, str]:
        """The observation of one agent now (rendered on demand, cached for the tick)."""
        return self._obs_info(agent)[0]

    def agent_info(self, agent: str) -> dict[str, Any]:
        """The info of one agent now (cached for the tick)."""
        return self._obs_info(agent)[1]

    def _reward(self, agent: str) -> float:
        payoffs = self.engine.payoffs or self.engine.forfeit_payoffs
        v = payoffs.get(agent)
        return float(v) if v is not None and v == v else 0.0

    def snapshot(self) -> dict[str, Any]:
        return {"engine": self.engine.snapshot(), "env": self._env_snapshot()}

    def restore(self, snap: dict[str, Any]) -> None:
        self.engine.restore(snap["engine"])
        self._cache = {}
        self._env_restore(snap["env"])

    def _env_snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def _env_restore(self, snap: dict[str, Any]) -> None:
        raise NotImplementedError

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return transcript(self.engine)
        if self.render_mode == "human":
            lines = transcript(self.engine).splitlines()
            new = lines[self._rendered_events :]
            self._rendered_events = len(lines)
            if new:
                print("\n".join(new))
        return None

    def close(self) -> None:
        pass


class GameParallelEnv(_GameEnvBase, ParallelEnv):
    """Parallel API: `step({agent: text})` is one tick; only the acting agents' texts matter."""

    def __init__(
        self,
        spec: GameSpec,
        n_players: int | None = None,
        max_cycles: int | None = None,
        render_mode: str | None = None,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        self._init_game(spec, n_players, max_cycles, render_mode, history)
        self.agents: list[str] = []

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.restart(seed)
        return self._all()

    def restart(self, seed: int | None = None) -> None:
        """`reset` without building every agent's observation: like `advance`, for drivers that
        render only the acting agents' observations, on demand."""
        self.engine.reset(seed)
        self._cache = {}
        self._rendered_events = 0
        self.agents = list(self.possible_agents)

    def _all(self) -> tuple[dict, dict]:
        obs, infos = {}, {}
        for a in self.agents:
            obs[a], infos[a] = self._obs_info(a)
        return obs, infos

    def advance(self, actions: dict[str, Any]) -> None:
        """One tick without building every agent's observation: for drivers (like the runner) that
        only read the acting agents' observations; `observe` / `agent_info` render on demand."""
        self._tick(actions)

    def _tick(self, actions: dict[str, Any]) -> tuple[list[str], set[str]]:
        live = list(self.agents)
        forfeited_before = set(self.engine.forfeited)
        if live:
            self.engine.tick({a: actions.get(a, "") for a in live})
        self._cache = {}
        e = self.engine
        self.agents = [a for a in live if not (e.done or (a in e.forfeited and a not in forfeited_before))]
        return live, forfeited_before

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        live, forfeited_before = self._tick(actions)
        if not live:
            return {}, {}, {}, {}, {}
        e = self.engine
        obs, rewards, terms, truncs, infos = {}, {}, {}, {}, {}
        for a in live:
            obs[a], infos[a] = self._obs_info(a)
            out = a in e.forfeited and a not in forfeited_before
            terms[a] = (e.done and not e.truncated) or out
            truncs[a] = e.done and e.truncated
            rewards[a] = self._reward(a) if (e.done or out) else 0.0
        if self.render_mode == "human":
            self.render()
        return obs, rewards, terms, truncs, infos

    def _env_snapshot(self) -> dict[str, Any]:
        return {"agents": list(self.agents)}

    def _env_restore(self, snap: dict[str, Any]) -> None:
        self.agents = list(snap["agents"])


class GameAECEnv(_GameEnvBase, AECEnv):
    """AEC API: each tick visits every live agent in seat order; the tick resolves after the last."""

    def __init__(
        self,
        spec: GameSpec,
        n_players: int | None = None,
        max_cycles: int | None = None,
        render_mode: str | None = None,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        super().__init__()
        self._init_game(spec, n_players, max_cycles, render_mode, history)
        self.agents: list[str] = []

    def reset(self, seed: int | None = None, options: dict | None = None) -> None:
        self.engine.reset(seed)
        self._cache = {}
        self._rendered_events = 0
        self.agents = list(self.possible_agents)
        self.rewards = dict.fromkeys(self.agents, 0.0)
        self._cumulative_rewards = dict.fromkeys(self.agents, 0.0)
        self.terminations = dict.fromkeys(self.agents, False)
        self.truncations = dict.fromkeys(self.agents, False)
        self._pending: dict[str, Any] = {}
        self._order = list(self.agents)
        self.agent_selection = self._order[0]
        self.infos = {a: self._obs_info(a)[1] for a in self.agents}

    def step(self, action: Any) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            # PettingZoo wants None from a dead agent; anything else is ignored rather than raised.
            self._was_dead_step(None)
            return
        self._cumulative_rewards[agent] = 0.0
        self._pending[agent] = action
        idx = self._order.index(agent)
        if idx == len(self._order) - 1:
            self._end_tick()
        else:
            self._clear_rewards()
            self.agent_selection = self._order[idx + 1]
        self._accumulate_rewards()
        if self.render_mode == "human":
            self.render()

    def _end_tick(self) -> None:
        e = self.engine
        forfeited_before = set(e.forfeited)
        e.tick(self._pending)
        self._pending = {}
        self._cache = {}
        for a in self.agents:
            out = a in e.forfeited and a not in forfeited_before
            self.terminations[a] = (e.done and not e.truncated) or out
            self.truncations[a] = e.done and e.truncated
            self.rewards[a] = self._reward(a) if (e.done or out) else 0.0
            self.infos[a] = self._obs_info(a)[1]
        self._order = [a for a in self.agents if not (self.terminations[a] or self.truncations[a])]
        # The next tick starts with the first live agent, after the dead ones take their last step.
        self.agent_selection = self._order[0] if self._order else self.agents[0]
        self._deads_step_first()

    def _env_snapshot(self) -> dict[str, Any]:
        return {
            "agents": list(self.agents),
            "rewards": dict(self.rewards),
            "cumulative": dict(self._cumulative_rewards),
            "terminations": dict(self.terminations),
            "truncations": dict(self.truncations),
            "pending": dict(self._pending),
            "order": list(self._order),
            "selection": self.agent_selection,
            "skip": getattr(self, "_skip_agent_selection", None),
        }

    def _env_restore(self, snap: dict[str, Any]) -> None:
        self.agents = list(snap["agents"])
        self.rewards = dict(snap["rewards"])
        self._cumulative_rewards = dict(snap["cumulative"])
        self.terminations = dict(snap["terminations"])
        self.truncations = dict(snap["truncations"])
        self._pending = dict(snap["pending"])
        self._order = list(snap["order"])
        self.agent_selection = snap["selection"]
        self._skip_agent_selection = snap["skip"]
        self.infos = {a: self._obs_info(a)[1] for a in self.agents}


def raw_env(game: str | Path | GameSpec, options: Mapping[str, Any] | None = None, **kw: Any) -> GameAECEnv:
    return GameAECEnv(load_game(game).with_options(options), **kw)


def make(game: str | Path | GameSpec, options: Mapping[str, Any] | None = None, **kw: Any) -> AECEnv:
    """An AEC env for a game id, a spec file path, or a GameSpec (wrapped like PettingZoo's `env()`).

    `options` chooses the game's options (`{"rounds": 3}`); a bad one is a SpecError naming it."""
    return wrappers.OrderEnforcingWrapper(raw_env(game, options, **kw))


def make_parallel(
    game: str | Path | GameSpec, options: Mapping[str, Any] | None = None, **kw: Any
) -> GameParallelEnv:
    return GameParallelEnv(load_game(game).with_options(options), **kw)


def game_module(game: str | Path | GameSpec, **defaults: Any) -> SimpleNamespace:
    """PettingZoo-style factories (`env`, `raw_env`, `parallel_env`) for one game, as its tests expect."""
    spec = load_game(game)
    return SimpleNamespace(
        env=lambda **kw: make(spec, **{**defaults, **kw}),
        raw_env=lambda **kw: raw_env(spec, **{**defaults, **kw}),
        parallel_env=lambda **kw: make_parallel(spec, **{**defaults, **kw}),
    )
