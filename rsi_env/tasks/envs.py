"""The three task families as single-agent Gymnasium environments: one task, one answer, one reward.

    env = ProgrammingEnv()                      # or ProgrammingEnv.from_run("runs/programming")
    prompt, info = env.reset(seed=0)            # the task prompt (info["messages"]: as chat messages)
    _, reward, terminated, truncated, info = env.step(model_reply)   # terminated is always True

Rewards: programming = mean fraction of validator checks the solution passes in the sandbox; predict =
normalised exact match with the sandbox's stdout (1.0 / 0.0; the prediction is never run); trivia = an LLM
judge's correctness score (0..1) given the page and the reference answer, or, without a judge or when its
call fails, token F1 against the reference (1.0 for a normalised exact match). Any text is a valid action:
nothing a model writes makes `step` raise. Tasks come from a run directory's `bank.jsonl` (what
`python -m rsi_env.tasks` kept) or a small built-in bank. Each family's registration
(`rsi_env.tasks.registry`) names its env here, so `gymnasium.make("rsi_env/Programming-v0")` works.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import gymnasium
from pydantic import BaseModel

from ..env import printable, text_space
from ..referees.judge import Candidate
from ..sandbox import SandboxLimits
from . import predict, programming, trivia
from .common import BANK, Judge, extract_code, run_blocking
from .corpus import page_by_title
from .validators import reward as validator_reward
from .validators import run_matrix

MAX_OBSERVATION_CHARS = 32_000
MAX_ACTION_CHARS = 32_000
_TaskT = TypeVar("_TaskT", bound=BaseModel)


def _clean(text: str) -> str:
    return printable(text)[:MAX_OBSERVATION_CHARS]


def _as_text(action: Any) -> str:
    """Whatever was passed as the action, as text (a non-string never raises either)."""
    if isinstance(action, bytes):
        return action.decode("utf-8", "replace")
    return action if isinstance(action, str) else str(action)


def _json_field(text: str, key: str) -> str | None:
    """`text` as a JSON object's `key` (replies in the pipeline's JSON format), else None."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # a reply of nested brackets is an answer, not our failure
        return None
    return data[key] if isinstance(data, dict) and isinstance(data.get(key), str) else None


class TaskEnv(gymnasium.Env[str, str], Generic[_TaskT]):
    """One task per episode, drawn with the reset seed; one step answers it."""

    metadata: dict[str, Any] = {"render_modes": ["ansi"]}  # noqa: RUF012 (an instance variable in gymnasium)
    task_type: ClassVar[type[BaseModel]]

    def __init__(self, tasks: list[_TaskT] | None = None, render_mode: str | None = None) -> None:
        self.tasks: list[_TaskT] = list(tasks) if tasks is not None else self.builtin_tasks()
        if not self.tasks:
            raise ValueError(f"{type(self).__name__}: no tasks (an empty bank)")
        self.render_mode = render_mode
        self.observation_space = text_space(MAX_OBSERVATION_CHARS)
        self.action_space = text_space(MAX_ACTION_CHARS)
        self.task: _TaskT | None = None
        self._obs = ""
        self._last: dict[str, Any] = {}
        self._done = True

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs: Any) -> TaskEnv[_TaskT]:
        """The tasks a pipeline run kept (`RUN_DIR/bank.jsonl`)."""
        path = Path(run_dir) / BANK
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no task bank here; run `python -m rsi_env.tasks ...` first")
        lines = path.read_text(encoding="utf-8").splitlines()
        tasks = [cls.task_type.model_validate_json(ln) for ln in lines if ln.strip()]
        return cls(tasks, **kwargs)  # type: ignore[arg-type]

    def builtin_tasks(self) -> list[_TaskT]:
        raise NotImplementedError

    def messages(self, task: _TaskT) -> list[dict[str, str]]:
        raise NotImplementedError

    def score(self, task: _TaskT, text: str) -> tuple[float, dict[str, Any]]:
        raise NotImplementedError

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        index = (options or {}).get("index")
        if not isinstance(index, int) or not 0 <= index < len(self.tasks):
            index = int(self.np_random.integers(len(self.tasks)))
        self.task = self.tasks[index]
        msgs = self.messages(self.task)
        self._obs = _clean(msgs[-1]["content"])
        self._done = False
        self._last = {}
        return self._obs, {
            "task_index": index,
            "task_id": getattr(self.task, "id", str(index)),
            "messages": msgs,
        }

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            return self._obs, 0.0, True, False, {"error": "the episode is over; call reset()"}
        text = _as_text(action)[:MAX_ACTION_CHARS]
        try:
            reward, info = self.score(self.task, text)
        except Exception as exc:  # the referee's own failure (e.g. no sandbox): say so, score nothing
            reward, info = 0.0, {"error": f"{type(exc).__name__}: {exc}"[:300], "scored": False}
        self._done = True
        self._last = {"action": text, "reward": reward, **info}
        return self._obs, float(reward), True, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        out = f"TASK:\n{self._obs}\n"
        if self._last:
            out += f"\nANSWER:\n{self._last['action']}\nREWARD: {self._last['reward']:.3f}\n"
        return out


class ProgrammingEnv(TaskEnv[programming.ProgrammingTask]):
    """Write the challenge's function; reward = mean fraction of the validators' checks passed."""

    task_type = programming.ProgrammingTask

    def __init__(
        self,
        tasks: list[programming.ProgrammingTask] | None = None,
        render_mode: str | None = None,
        limits: SandboxLimits | None = None,
    ) -> None:
        super().__init__(tasks, render_mode)
        self.limits = limits or SandboxLimits(timeout_s=5.0, memory_mb=256)

    def builtin_tasks(self) -> list[programming.ProgrammingTask]:
        return builtin_programming()

    def messages(self, task: programming.ProgrammingTask) -> list[dict[str, str]]:
        return programming.solution_messages(task.challenge)

    def score(self, task: programming.ProgrammingTask, text: str) -> tuple[float, dict[str, Any]]:
        code = extract_code(text)
        runs = run_blocking(
            run_matrix(
                task.challenge.entry_point,
                {v.id: v.code for v in task.validators},
                {"answer": code},
                self.limits,
            )
        )
        return validator_reward(runs), {
            "runs": [r.model_dump() for r in runs],
            "isolation": next((r.isolation for r in runs if r.isolation), ""),
        }


class PredictEnv(TaskEnv[predict.PredictTask]):
    """Predict what the program prints; reward = normalised exact match (the prediction is never run)."""

    task_type = predict.PredictTask

    def builtin_tasks(self) -> list[predict.PredictTask]:
        return builtin_predict()

    def messages(self, task: predict.PredictTask) -> list[dict[str, str]]:
        return predict.predict_messages(task.source, task.question)

    def score(self, task: predict.PredictTask, text: str) -> tuple[float, dict[str, Any]]:
        out = _json_field(text, "output")
        prediction = out if out is not None else text
        ok = predict.exact_match(prediction, task.expected)
        return float(ok), {"prediction": predict.normalise_output(prediction), "expected": task.expected}


class TriviaEnv(TaskEnv[trivia.TriviaTask]):
    """Answer without the page; reward = a judge's correctness score, else token F1 vs the reference."""

    task_type = trivia.TriviaTask

    def __init__(
        self,
        tasks: list[trivia.TriviaTask] | None = None,
        render_mode: str | None = None,
        judge: Judge | None = None,
    ) -> None:
        super().__init__(tasks, render_mode)
        self.judge = judge

    def builtin_tasks(self) -> list[trivia.TriviaTask]:
        return builtin_trivia()

    def messages(self, task: trivia.TriviaTask) -> list[dict[str, str]]:
        return trivia.answer_messages(task.question)

    def score(self, task: trivia.TriviaTask, text: str) -> tuple[float, dict[str, Any]]:
        field = _json_field(text, "answer")
        answer = field if field is not None else text
        f1 = trivia.token_f1(answer, task.answer)
        info: dict[str, Any] = {"answer": answer, "reference": task.answer, "f1": f1}
        if self.judge is not None:
            context = (
                f"{trivia.page_context(task.title, task.extract)}\n\n"
                f"QUESTION: {task.question}\nREFERENCE ANSWER: {task.answer}"
            )
            question = trivia.answers_question()
            ranking = run_blocking(
                self.judge.rank(f"env:{task.id}", question, [Candidate(id="A", text=answer)], context)
            )
            score = ranking.scores.get("A")
            info["judge_status"] = ranking.status
            if ranking.ok and score is not None:
                info["reward_source"] = "judge"
                return max(0.0, min(1.0, score / 10)), info
        info["reward_source"] = "procedural"
        return f1, info


# ---------------------------------------------------------------------------------------------------
# Built-in banks: a few hand-written tasks so the envs work without a pipeline run
# ---------------------------------------------------------------------------------------------------
_DURATION_VALIDATOR = """\
def validate(fn):
    checks = []
    for text, want in [("1h30m", 5400), ("45s", 45), ("2h 5m 10s", 7510), ("0s", 0), ("10m", 600)]:
        try:
            checks.append(fn(text) == want)
        except Exception:
            checks.append(False)
    for bad in ["", "abc", "5x"]:
        try:
            fn(bad)
            checks.append(False)
        except ValueError:
            checks.append(True)
        except Exception:
            checks.append(False)
    return checks
"""
_MASK_VALIDATOR = """\
def validate(fn):
    cases = [
        ("4111 1111 1111 1234", "**** **** **** 1234"),
        ("4111-1111-1111-1234", "****-****-****-1234"),
        ("1234", "1234"),
        ("12345", "*2345"),
        ("", ""),
    ]
    checks = []
    for text, want in cases:
        try:
            checks.append(fn(text) == want)
        except Exception:
            checks.append(False)
    return checks
"""


def builtin_programming() -> list[programming.ProgrammingTask]:
    specs = [
        (
            "duration",
            "configuration parsing",
            "parse_duration",
            "def parse_duration(text: str) -> int",
            "Parse a human-written duration such as '1h30m', '45s' or '2h 5m 10s' into a whole number of "
            "seconds. Units are h, m and s, each at most once, in that order; spaces between parts are "
            "allowed. Raise ValueError for an empty or malformed string.",
            _DURATION_VALIDATOR,
        ),
        (
            "mask",
            "payments",
            "mask_card",
            "def mask_card(number: str) -> str",
            "Mask a card number for display: replace every digit except the last four with '*', keeping "
            "separators (spaces or dashes) where they are. Strings of four digits or fewer come back "
            "unchanged.",
            _MASK_VALIDATOR,
        ),
    ]
    tasks = []
    for tid, domain, entry, sig, desc, validator in specs:
        c = programming.Challenge(
            id=tid, domain=domain, description=desc, entry_point=entry, signature=sig, raw=""
        )
        v = programming.Validator(id=f"{tid}-v0", challenge_id=tid, code=validator, raw="", separation=1.0)
        tasks.append(programming.ProgrammingTask(challenge=c, validators=[v]))
    return tasks


def builtin_predict() -> list[predict.PredictTask]:
    """Hand-written programs; their expected outputs are what the sandbox prints (a test checks that)."""
    return [
        predict.PredictTask(
            id="shortest",
            source=(
                'words = ["delta", "alpha", "charlie", "bravo"]\n'
                "print(sorted(words, key=len)[0], len(words[2]))"
            ),
            question="What does this program print?",
            expected="delta 7\n",
        ),
        predict.PredictTask(
            id="fib",
            source=(
                "def f(n):\n    return n if n < 2 else f(n - 1) + f(n - 2)\n\nprint([f(i) for i in range(8)])"
            ),
            question="What list does this program print?",
            expected="[0, 1, 1, 2, 3, 5, 8, 13]\n",
        ),
        predict.PredictTask(
            id="counts",
            source=(
                's = "mississippi"\ncounts = {}\nfor ch in s:\n    counts[ch] = counts.get(ch, 0) + 1\n'
                'print(max(counts, key=counts.get), counts["s"])'
            ),
            question="What does this program print?",
            expected="i 4\n",
        ),
    ]


_TRIVIA = [
    ("2001: A Space Odyssey", "Who directed the 1968 film 2001: A Space Odyssey?", "Stanley Kubrick"),
    (
        "Marie Curie",
        "With whom did Marie Curie share the 1903 Nobel Prize in Physics, besides Becquerel?",
        "Pierre Curie",
    ),
    (
        "Mount Everest",
        "Along which international border does the summit of Mount Everest lie?",
        "China–Nepal border",
    ),
]


def builtin_trivia() -> list[trivia.TriviaTask]:
    """Hand-written questions on corpus pages (needs the corpus package for the pages' text)."""
    tasks = []
    for i, (title, question, answer) in enumerate(_TRIVIA):
        page = page_by_title(title)
        if page is not None:
            tasks.append(
                trivia.TriviaTask(
                    id=f"builtin-{i}", title=title, extract=page.extract, question=question, answer=answer
                )
            )
    return tasks
