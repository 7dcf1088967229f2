"""rsi_env games and task families as TRL `GRPOTrainer(environment_factory=...)` environments.

TRL's contract (trl 1.16, `GRPOTrainer.__init__` and `_generate_and_score_completions`): the factory
is called with no argument and gives an instance; `reset(**row)` gets the dataset row's columns and
returns a string appended to the last user message; every other public function of the class is a
tool (its name, type hints and Google-style docstring become the JSON schema the chat template
shows, via `transformers.utils.get_json_schema`); an exception in a tool is shown to the model as
the tool's error; `get_reward()` is called once per rollout and may return None (unscorable).

    from rsi_env.integrations.trl import dataset, environment
    from trl import GRPOConfig, GRPOTrainer

    trainer = GRPOTrainer(
        model=model,
        args=GRPOConfig(...),
        train_dataset=dataset("negotiation", n=64, seed=0),
        environment_factory=environment("negotiation", seat=0, opponents="scripted"),
    )

Each rollout plays one episode at the learner's seat: the other seats are played inside by
`opponents` (`scripted`, `random` or LLM profiles) through the runner, so the learner sees an
ordinary multi-turn tool conversation. Tools are generated from the spec, one per action
(`propose(books: int, hats: int, balls: int, message: str = "")`), or with `tools="act"` one
`act(action: str)` taking the JSON move. Rewards: `payoff`, `normalised` (payoff / best
achievable) or `objective` (normalised payoff minus a penalty per conduct flag: what `prefs
generate` ranks candidates by). A rollout that stops before the game ends is played out with
empty replies at its seat (the game's own rule for a silent player: invalid moves, then pass or
forfeit); an aborted episode (an opponent's model call failed) has no reward (None).
"""

from __future__ import annotations

import inspect
import json
import keyword
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..catalog import load_game
from ..spec import GameSpec
from .session import (
    DEFAULT_PENALTY,
    REWARD_KINDS,
    DecisionPoint,
    GameOver,
    RewardKind,
    SeatSession,
)

if TYPE_CHECKING:
    from datasets import Dataset

    from ..agents.profiles import EndpointOverride
    from ..tasks.envs import TaskEnv

ToolStyle = Literal["typed", "act"]
TASK_FAMILIES = {"Programming-v0": "Programming", "Predict-v0": "Predict", "Trivia-v0": "Trivia"}

GAME_SYSTEM = {
    "typed": (
        "You are a player in a game. Each turn you read the game state, then make your move by calling "
        "exactly one of the tools. When the game is over, stop."
    ),
    "act": (
        "You are a player in a game. Each turn you read the game state, then make your move by calling "
        "the `act` tool with one JSON object that chooses a legal action. When the game is over, stop."
    ),
}
TASK_SYSTEM = "When you have your answer, call the `submit` tool with it (once)."
_JSON_LINE = re.compile(r"^Answer with one JSON object, e.g\. .*$", re.MULTILINE)
_TOOLS_LINE = "Make your move by calling one of your tools (the legal actions above)."
_GAME_OVER_NOTE = "\nThe game has ended: make no more tool calls."
_RESERVED = {"reset", "get_reward"}


# --- game environments ---------------------------------------------------------------------------------


class GameEnvironment:
    """Base of the generated classes. TRL turns every public function of the class into a tool, so the
    only public ones here are `reset` and `get_reward` (which TRL excludes); helpers are private."""

    game: ClassVar[str | GameSpec]
    tool_style: ClassVar[ToolStyle]
    reward_kind: ClassVar[RewardKind]
    penalty: ClassVar[float]
    session_options: ClassVar[dict[str, Any]]

    def __init__(self) -> None:
        self.session = SeatSession(self.game, **self.session_options)

    def reset(self, **row: Any) -> str:
        """Start an episode from a dataset row: `seed`, optionally `game` (must be this class's),
        `seat`, and a decision point of a recorded run (`run_dir`, `episode_id`, `start_tick`)."""
        game = row.get("game")
        if game is not None and game != self.session.spec.id:
            raise ValueError(f"this environment plays {self.session.spec.id}, the row asks for {game!r}")
        start = None
        if row.get("episode_id") and row.get("start_tick") is not None:
            start = DecisionPoint(
                run_dir=str(row["run_dir"]),
                episode_id=str(row["episode_id"]),
                tick=int(row["start_tick"]),
                player=str(row["seat"]),
            )
        seed = row.get("seed")
        turn = self.session.reset(None if seed is None else int(seed), seat=row.get("seat"), start=start)
        return self._shown(turn.text, turn.done)

    def get_reward(self) -> float | None:
        """The episode's reward; a rollout that stopped early is played out first (see the module)."""
        if self.session.last is None:
            return None
        if not self.session.done:
            self.session.finish()
        return self.session.reward(self.reward_kind, self.penalty)

    def _play(self, move: dict[str, Any] | str) -> str:
        raw = move if isinstance(move, str) else json.dumps(move, ensure_ascii=False)
        turn = self.session.move(raw)
        return self._shown(turn.text, turn.done)

    def _shown(self, text: str, done: bool) -> str:
        if self.tool_style == "typed":
            text = _JSON_LINE.sub(_TOOLS_LINE, text)
        return text + _GAME_OVER_NOTE if done else text


def _clean(text: str, limit: int = 300) -> str:
    """One line of spec text for a docstring (spec text is untrusted: no section headers, bounded)."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\b(Args|Returns|Raises)\s*:", r"\1 -", text)
    return text[:limit]


def _param(pname: str, prm: Any, players: list[str]) -> tuple[Any, str]:
    """Type hint and docstring description of one spec parameter."""
    desc = _clean(prm.description) or f"the {pname.replace('_', ' ')}"
    if prm.type in ("int", "float"):
        hint: Any = int if prm.type == "int" else float
        bounds = [
            f"at least {prm.min}" if prm.min is not None else "",
            f"at most {prm.max}" if prm.max is not None else "",
        ]
        said = " and ".join(b for b in bounds if b)
        if said:
            desc += f" ({'an integer' if prm.type == 'int' else 'a number'} {_clean(said, 200)})"
    elif prm.type == "bool":
        hint = bool
    elif prm.type == "player":
        hint = Literal[tuple(players)]  # type: ignore[valid-type]
        desc += " (a player id)"
    elif prm.type == "enum" and isinstance(prm.values, list) and prm.values:
        hint = Literal[tuple(str(v) for v in prm.values)]  # type: ignore[valid-type]
    elif prm.type == "enum":
        hint = str
        desc += " (one of the values the observation lists)"
    else:
        hint = str
        desc += f" (text, at most {prm.max_length} characters)"
    return hint, desc


def action_tool(spec: GameSpec, name: str, players: list[str]) -> Callable[..., str]:
    """The tool for one spec action: typed parameters, a Google-style docstring from the spec."""
    action = spec.actions[name]
    if name in _RESERVED:
        raise ValueError(f"{spec.id}: action `{name}` would shadow TRL's `{name}`; use tools='act'")
    required: list[inspect.Parameter] = []
    optional: list[inspect.Parameter] = []
    docs: list[str] = []
    hints: dict[str, Any] = {}
    params = dict(action.params)
    # A spec parameter named like a Python keyword (Coup's `as`) becomes `as_` in the tool, as PEP 8
    # spells it, and goes back to its spec name in the move.
    spec_name: dict[str, str] = {}
    for spec_pname, prm in params.items():
        pname = spec_pname + "_" if keyword.iskeyword(spec_pname) or spec_pname == "self" else spec_pname
        if pname != spec_pname and (pname in params or pname == "message"):
            raise ValueError(
                f"{spec.id}: parameter `{name}.{spec_pname}` cannot be a Python argument (and "
                f"`{pname}` is taken); use tools='act'"
            )
        spec_name[pname] = spec_pname
        hint, desc = _param(spec_pname, prm, players)
        if prm.optional:
            hints[pname] = hint | None
            optional.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=None))
            desc += " (optional)"
        else:
            hints[pname] = hint
            required.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY))
        docs.append(f"    {pname}: {desc}")
    if action.message != "none" and "message" not in params:
        hints["message"] = str
        said = "what you say to the players who see this move"
        if action.message == "required":
            required.append(inspect.Parameter("message", inspect.Parameter.KEYWORD_ONLY))
            docs.append(f"    message: {said}")
        else:
            optional.append(inspect.Parameter("message", inspect.Parameter.KEYWORD_ONLY, default=""))
            docs.append(f"    message: {said} (optional; empty for none)")
    signature = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *(p.replace(annotation=hints[p.name]) for p in (*required, *optional)),
        ],
        return_annotation=str,
    )

    def tool(self: GameEnvironment, **kwargs: Any) -> str:
        move: dict[str, Any] = {"action": name}
        move.update(
            {
                spec_name.get(k, k): v
                for k, v in kwargs.items()
                if v is not None and not (k == "message" and v == "")
            }
        )
        return self._play(move)

    summary = _clean(action.description) or f"The `{name}` move."
    doc = f"{summary}\n\n"
    if docs:
        doc += "Args:\n" + "\n".join(docs) + "\n\n"
    doc += "Returns:\n    What you see next: the game after your move and the other players' moves."
    tool.__name__ = tool.__qualname__ = name
    tool.__doc__ = doc
    tool.__signature__ = signature  # type: ignore[attr-defined]
    tool.__annotations__ = {**hints, "return": str}
    return tool


def _act(self, action: str) -> str:  # type: ignore[no-untyped-def]  # `self` unannotated: TRL skips it
    """Make your move: one JSON object that names a legal action and its parameters.

    Args:
        action: the move as JSON, e.g. {"action": "propose", "books": 1, "message": "..."}; the legal
            actions and their parameters are listed in the observation

    Returns:
        What you see next: the game after your move and the other players' moves.
    """
    return self._play(action)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part) or "Game"


def environment(
    game: str | Path | GameSpec,
    *,
    seat: int | str = 0,
    opponents: str | Sequence[str] | None = None,
    reward: RewardKind = "objective",
    penalty: float = DEFAULT_PENALTY,
    tools: ToolStyle = "typed",
    n_players: int | None = None,
    max_cycles: int | None = None,
    override: EndpointOverride | None = None,
    **task_options: Any,
) -> type:
    """The environment class TRL's `environment_factory` expects, for a game (id, spec file or
    GameSpec) or a task family (`"Programming-v0"`, `"Predict-v0"`, `"Trivia-v0"`; options go to the
    family's env, e.g. `bank=RUN_DIR`). The class itself is the factory."""
    if isinstance(game, str) and _family(game) is not None:
        return task_environment(game, **task_options)
    if task_options:
        raise TypeError(f"unexpected options for a game environment: {', '.join(task_options)}")
    if reward not in REWARD_KINDS:
        raise ValueError(f"reward must be one of {', '.join(REWARD_KINDS)}, got {reward!r}")
    if tools not in ("typed", "act"):
        raise ValueError(f"tools must be 'typed' or 'act', got {tools!r}")
    spec = load_game(game)
    options: dict[str, Any] = {
        "seat": seat,
        "opponents": opponents,
        "n_players": n_players,
        "max_cycles": max_cycles,
        "override": override,
    }
    SeatSession(spec, **options)  # fails now on a bad seat or profile, not in TRL's first batch
    n = n_players or spec.players.default or spec.players.min
    players = [f"player_{i}" for i in range(n)]
    members: dict[str, Any] = {
        "game": spec,
        "tool_style": tools,
        "reward_kind": reward,
        "penalty": penalty,
        "session_options": options,
        "__doc__": f"{spec.name} ({spec.id}) for TRL's GRPOTrainer: {_clean(spec.summary)}",
        "__module__": __name__,
    }
    if tools == "act":
        members["act"] = _act
    else:
        members.update({name: action_tool(spec, name, players) for name in spec.actions})
    return type(f"{_camel(spec.id)}Env", (GameEnvironment,), members)


def environments(games: Sequence[str], **options: Any) -> dict[str, type]:
    """One class per game for a dict `environment_factory`: rows route by their `environment` column
    (`dataset` sets it), and each prompt shows only its own game's tools."""
    return {g: environment(g, **options) for g in games}


# --- task families -------------------------------------------------------------------------------------


def _family(name: str) -> str | None:
    key = name.removeprefix("rsi_env/")
    return key if key in TASK_FAMILIES else None


def _task_env(family: str, bank: str | Path | None, options: dict[str, Any]) -> TaskEnv[Any]:
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    import rsi_env.tasks.envs  # noqa: F401  (registers the families with gymnasium)

    entry = gymnasium.spec(f"rsi_env/{family}").entry_point
    cls: Any = load_env_creator(entry) if isinstance(entry, str) else entry
    env: TaskEnv[Any] = cls.from_run(bank, **options) if bank is not None else cls(**options)
    return env


class TaskEnvironment:
    """Base of the task families' classes: one task per rollout, answered with `submit`."""

    family: ClassVar[str]
    bank: ClassVar[str | None]
    env_options: ClassVar[dict[str, Any]]

    def __init__(self) -> None:
        self.env = _task_env(self.family, self.bank, self.env_options)
        self.answer: str | None = None
        self.score: float | None = None
        self.info: dict[str, Any] = {}

    def reset(self, **row: Any) -> str:
        """Draw the task from the row's `seed` (or take the row's `index` in the bank)."""
        seed, index = row.get("seed"), row.get("index")
        options = {"index": int(index)} if index is not None else None
        text, _info = self.env.reset(seed=None if seed is None else int(seed), options=options)
        self.answer, self.score, self.info = None, None, {}
        return f"{text}\n\n{TASK_SYSTEM}"

    def submit(self, answer: str) -> str:
        """Submit your final answer to the task (only once).

        Args:
            answer: your complete answer (for a programming task, the code of the function)

        Returns:
            Your score for the answer.
        """
        if self.answer is not None:
            raise GameOver("you already submitted an answer to this task; no more submissions")
        self.answer = answer if isinstance(answer, str) else str(answer)
        _obs, reward, _term, _trunc, info = self.env.step(self.answer)
        self.info = info
        # A scorer that could not run (no sandbox) gives no score rather than a zero.
        self.score = None if info.get("scored") is False else float(reward)
        return (
            "Answer received." if self.score is None else f"Answer received; score {self.score:.3f} (0 to 1)."
        )

    def get_reward(self) -> float | None:
        """The family's reward; no submission is scored as an empty answer."""
        if self.answer is None:
            self.submit("")
        return self.score


def task_environment(family: str, *, bank: str | Path | None = None, **env_options: Any) -> type:
    """The TRL environment class of a task family (`"Programming-v0"`, ...), on its built-in tasks
    or a pipeline run's bank (`bank=RUN_DIR`)."""
    key = _family(family)
    if key is None:
        raise ValueError(f"unknown task family {family!r}; known: {', '.join(TASK_FAMILIES)}")
    _task_env(key, bank, env_options)  # fails now on a bad bank
    return type(
        f"{TASK_FAMILIES[key]}Env",
        (TaskEnvironment,),
        {
            "family": key,
            "bank": None if bank is None else str(bank),
            "env_options": env_options,
            "__module__": __name__,
        },
    )


# --- datasets ------------------------------------------------------------------------------------------


def _rows_to_dataset(rows: list[dict[str, Any]]) -> Dataset:
    from datasets import Dataset

    return Dataset.from_list(rows)


def dataset(game: str, n: int, seed: int = 0, *, tools: ToolStyle = "typed") -> Dataset:
    """`n` rows with seeds `seed`, `seed + 1`, ...: the prompt (a system message and an empty user
    message, to which `reset` appends the observation), the seed and the `environment` to route to."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    key = _family(game)
    if key is not None:
        system = f"Solve the task below. {TASK_SYSTEM}"
        name = game
    else:
        system = GAME_SYSTEM[tools]
        name = load_game(game).id
    prompt = [{"role": "system", "content": system}, {"role": "user", "content": ""}]
    return _rows_to_dataset(
        [{"prompt": prompt, "game": name, "environment": name, "seed": seed + i} for i in range(n)]
    )


def decision_dataset(run_dir: str | Path, *, tools: ToolStyle = "typed") -> Dataset:
    """One row per branching decision of a `prefs generate` run: `reset` rebuilds the exact state
    `prefs generate` branched (seed, then the recorded replies), with that decision's player on
    turn; every generation of a GRPO group starts there."""
    from ..prefs.candidates import read_sets

    run = Path(run_dir).resolve()
    sets = sorted(read_sets(run), key=lambda bs: bs.set_id)
    if not sets:
        raise ValueError(f"{run}: no branch sets")
    prompt = [{"role": "system", "content": GAME_SYSTEM[tools]}, {"role": "user", "content": ""}]
    return _rows_to_dataset(
        [
            {
                "prompt": prompt,
                "game": bs.game,
                "environment": bs.game,
                "seed": bs.seed,
                "seat": bs.player,
                "run_dir": str(run),
                "episode_id": bs.base_episode,
                "start_tick": bs.tick,
                "set_id": bs.set_id,
            }
            for bs in sets
        ]
    )
