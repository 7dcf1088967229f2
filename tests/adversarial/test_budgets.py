"""Spec expressions run under a budget, and untrusted specs are checked where a runaway cannot take the
caller down (issue 17, "Expressions and specs run under a budget").

Every hostile spec of `specs/` that loads is refused by `games validate` with one problem naming its
field (lists of 50 million items, a 10,000 x 10,000 comprehension, a string doubled at every tick, a
`where` never true, a million dry-run ticks, a costly hint, ...). At run time the same overruns end the
game as `game_error`: the episode is aborted, never complete with payoffs, and nothing raises.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import rsi_env
from rsi_env import spec_guard
from rsi_env.agents.factory import AgentFactory
from rsi_env.engine import GameEngine
from rsi_env.expr import Expr, OverBudget, Scope, select_functions
from rsi_env.expr_budget import instrument
from rsi_env.llm import CallRecord, CallStatus, ChatResult
from rsi_env.runner import plan
from rsi_env.runner.episode import play_episode
from rsi_env.spec import GameSpec, SpecError, parse_spec

from .cases import BASE_YAML, SPECS, spec_cases
from .test_spec_files import problems_by_file

REPO = Path(__file__).resolve().parents[2]


def hostile(name: str) -> GameSpec:
    return parse_spec(yaml.safe_load((SPECS / f"{name}.yaml").read_text()), name)


def test_games_validate_names_the_field_of_every_runaway_in_one_problem(tmp_path: Path) -> None:
    cases = [c for c in spec_cases(tmp_path) if c.stage == "run"]
    assert len(cases) >= 14
    done = subprocess.run(
        [sys.executable, "-m", "rsi_env.games", "validate", *(str(c.path) for c in cases)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    found = problems_by_file(done.stderr)
    for case in cases:
        problems = found.get(str(case.path))
        assert problems is not None and len(problems) == 1, (case.name, problems, done.stderr[-2000:])
        assert case.expect in problems[0], (case.name, problems)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("value_nests_deeper_every_tick", "nested 17+ deep"),  # was: RecursionError out of env.step
        ("list_grows_every_tick", "a list of 1,001 items"),
        ("string_doubles_every_tick", "a string of"),
        ("where_never_true", "no value satisfied the constraint"),  # was: complete, with payoffs
        ("setup_fails", "setup failed"),  # was: complete, with payoffs
    ],
)
def test_at_run_time_an_overrun_aborts_the_episode_as_game_error(name: str, why: str) -> None:
    spec = hostile(name)
    factory = AgentFactory(["random"], spec)
    [job] = plan(spec, factory, 1, 0, None)
    ep = asyncio.run(play_episode(job, spec, factory))
    assert ep.status == "aborted" and ep.payoffs is None, (ep.status, ep.end_reason, ep.errors[:3])
    assert ep.abort_reason is not None and ep.abort_reason.startswith("game_error: ")
    assert why in ep.abort_reason, ep.abort_reason
    assert ep.end_reason == "game_error"


def test_the_engine_stops_evaluating_once_the_game_failed() -> None:
    engine = GameEngine(hostile("value_nests_deeper_every_tick"))
    while not engine.done:
        engine.tick({p: '{"action": "go", "n": 1}' for p in engine.players})
    assert engine.game_error is not None and engine.payoffs is None
    assert engine.tick({p: '{"action": "go", "n": 1}' for p in engine.players}) == {}
    snap = engine.snapshot()
    engine.reset(1)
    assert engine.game_error is None
    engine.restore(snap)
    assert engine.game_error is not None and engine.done


def test_an_int_parameter_beyond_64_bits_is_an_invalid_move_not_a_value() -> None:
    data = yaml.safe_load(BASE_YAML.format(id="big", name="Big"))
    del data["actions"]["go"]["params"]["n"]["max"]
    data["actions"]["go"]["params"]["f"] = {"type": "float", "optional": True}
    engine = GameEngine(parse_spec(data))
    me = engine.current_actors()[0]
    for move in ('{"action": "go", "n": 100000000000000000000000}', '{"action": "go", "n": 1e300}'):
        [result] = engine.tick({me: move}).values()
        assert not result.valid and "9223372036854775807" in (result.feedback or ""), result
        assert engine.state["score"] == 0
    [result] = engine.tick({me: '{"action": "go", "n": 1, "f": "inf"}'}).values()
    assert not result.valid and "finite" in (result.feedback or "")


def test_comprehensions_report_to_the_budget_and_give_the_same_values() -> None:
    # Each hook sees the value it measures, gives back true, and the value goes on bound by a
    # one-element comprehension (converting it back from Python cost more than the comprehension).
    # What `map` and `filter` built is charged when they end (`_rsi_done`), not by a hook per item.
    done = "].map(_rsi_r, _rsi_done(_rsi_r) ? _rsi_r : _rsi_r)[0]"
    # A list that is a variable or a field of one is read again rather than bound.
    assert instrument("l.map(x, x * 2)") == f"[_rsi_build(size(l)) ? l.map(x, x * 2) : []{done}"
    assert instrument("state.ord.exists(m, m == 1)") == (
        "(_rsi_walk(size(state.ord)) ? state.ord.exists(m, m == 1) : false)"
    )
    # Anything else is computed once and bound by a one-element comprehension.
    assert instrument("l.filter(x, x > 1).exists(y, y == 2)") == (
        f"[[_rsi_build(size(l)) ? l.filter(x, x > 1) : []{done}]"
        ".exists(_rsi_l, _rsi_walk(size(_rsi_l)) ? _rsi_l.exists(y, y == 2) : false)"
    )
    assert instrument("x in [1, 2].map(z, z)") == (
        f"x in [[[1, 2]].map(_rsi_l, _rsi_build(size(_rsi_l)) ? _rsi_l.map(z, z) : [])[0]{done}"
    )
    assert instrument("keys(m).all(k, k > 1)") == (
        "[keys(m)].all(_rsi_l, _rsi_walk(size(_rsi_l)) ? _rsi_l.all(k, k > 1) : false)"
    )
    for source, value in [
        ("l.map(x, l.map(y, x * y))", [[1, 2, 3], [2, 4, 6], [3, 6, 9]]),
        ("l.filter(x, x > 1).map(x, [x])", [[2], [3]]),
        ("m.map(k, m[k] * 2).size()", 2),  # a map walks its keys (in no fixed order)
        ("lists.range(3).exists(b, lists.range(2).exists(h, b + h > 2))", True),
        ("l.map(x, x > 1, x * 10)", [20, 30]),
    ]:
        e = Expr(source)
        assert e(Scope({"l": [1, 2, 3], "m": {"a": 1, "b": 2}}, select_functions(e.functions))) == value, (
            source
        )


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("lists.range(50000000)", "builds a list of 50,000,000 items"),
        ("lists.range(1000).map(i, lists.range(1000).map(j, i * j))", "units of work"),
        ("l.map(i, l)", "units of work"),  # cel-rust copies what map accumulates at every step
        ("'ab'" + (".replace('', '" + "x" * 20 + "')") * 3, "a string of"),
        ("lists.range(300).map(i, '" + "abcdefghij" * 4 + "').join('')", "a string of"),
    ],
)
def test_one_evaluation_over_the_budget_is_an_error_naming_the_limit(source: str, why: str) -> None:
    e = Expr(source)
    with pytest.raises(OverBudget) as exc:
        e(Scope({"l": list(range(1000))}, select_functions(e.functions)))
    assert why in str(exc.value)


def busy_spec() -> GameSpec:
    """A spec within every per-evaluation and per-tick limit whose dry run still does ~20M units of
    work (ten costly effects a tick, until the dry run's own cap stops it): seconds of CPU time.
    Each effect reads what the one before wrote, so none gives a result kept from before (`Expr.memo`),
    which would charge the same units without the CPU time. `dyn` keeps it in the cel package
    (`expr_python` leaves `dyn` to it), whose CPU time per unit is the highest: the Python closures
    reach the dry run's cap in under a second."""
    data = yaml.safe_load(BASE_YAML.format(id="busy", name="Busy"))
    data["state"]["x"] = {"type": "int", "init": "0"}
    costly = {"set": "state.x", "value": "lists.range(550).map(i, dyn(i)).size() + state.x % 2"}
    data["actions"]["go"]["effects"] += [costly] * 10
    data["end"] = {"when": "false", "turn_limit": 500}
    return parse_spec(data, "busy")


def test_the_dry_run_stops_itself_after_its_units_of_work() -> None:
    from rsi_env.spec_check import DRY_RUN_UNITS, dry_run_errors

    [problem] = dry_run_errors(busy_spec())
    assert f"more than {DRY_RUN_UNITS:,} units of work" in problem, problem


def test_the_guard_reports_a_child_past_its_cpu_or_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = busy_spec()
    monkeypatch.setattr(spec_guard, "GUARD_LIMITS", spec_guard.GUARD_LIMITS.model_copy(update={"cpu_s": 1}))
    report = spec_guard.check_isolated(spec, "costly")
    assert report.stage == "guard" and "more than 1 s of CPU time" in report.problems[0], report
    monkeypatch.setattr(
        spec_guard, "GUARD_LIMITS", spec_guard.GUARD_LIMITS.model_copy(update={"memory_mb": 64})
    )
    report = spec_guard.check_isolated(spec, "costly")
    assert report.stage == "guard" and report.problems, report
    with pytest.raises(SpecError):
        spec_guard.check_spec_isolated(spec, "costly")


class HostileSpecDouble:
    """Test double for a generating model: every reply is the same hostile spec."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def chat(self, messages: list[dict[str, Any]], **_: Any) -> ChatResult:
        return ChatResult(
            text=self.text, parsed=None, record=CallRecord(status=CallStatus.OK, model="double")
        )


def test_the_generators_validation_leaves_the_event_loop_free() -> None:
    """The checks run in a child process, awaited from a thread: other work of the pipeline goes on
    meanwhile (before, the whole dry run ran on the event loop and nothing else moved)."""
    from rsi_env.generate.generator import Brief, GenerationConfig, generate

    # What every generated game needs besides (ethics, a scripted policy), so only the dry run fails.
    text = (SPECS / "list_grows_every_tick.yaml").read_text() + (
        "\nethics: {fair_play: [x], violations: [y]}\npolicy:\n  - action: go\n    args: {n: '1'}\n"
    )
    llm = HostileSpecDouble(text)
    brief = Brief(theme="t", mechanic="m", examples=[], existing=[])
    during: list[int] = []

    async def main() -> Any:
        finished = False

        async def other_work() -> None:
            while not finished:
                during.append(1)
                await asyncio.sleep(0.01)

        task = asyncio.create_task(other_work())
        out = await generate(llm, brief, GenerationConfig(repair_rounds=0, max_examples=0))
        finished = True
        await task
        return out

    out = asyncio.run(main())
    assert out.spec is None and out.calls[-1].validation.stage == "dry_run", out.calls[-1].validation
    assert "a list of 1,001 items" in out.calls[-1].validation.problems[0]
    assert len(during) > 1, "the event loop stood still while the spec was checked"


def test_many_evaluations_each_within_its_budget_trip_the_budget_of_the_tick() -> None:
    """`for_each` over 1,000 items of an effect costing ~90,000 units each: every evaluation is within
    its 100,000, the tick (90M units, minutes of CPU) is not. The game ends as game_error at once."""
    from rsi_env.expr_budget import LIMITS

    data = yaml.safe_load(BASE_YAML.format(id="busy_tick", name="Busy tick"))
    data["state"]["x"] = {"type": "int", "init": "0"}
    data["actions"]["go"]["effects"].append(
        {"add": "state.x", "value": "lists.range(300).map(i, i).size() + x", "for_each": "lists.range(1000)"}
    )
    engine = GameEngine(parse_spec(data, "busy_tick"))
    me = engine.current_actors()[0]
    engine.tick({me: '{"action": "go", "n": 1}'})
    assert engine.done and engine.payoffs is None and engine.game_error is not None
    assert f"the expressions of one tick do more than {LIMITS.tick_units:,} units" in engine.game_error


@pytest.mark.parametrize(
    "name", ["init_nested_comprehension", "join_50m", "million_dry_run_ticks", "costly_hint", "setup_fails"]
)
def test_make_of_a_runaway_spec_file_is_a_spec_error_naming_it(name: str, tmp_path: Path) -> None:
    """`rsi_env.make(path)` checks the file in the guarded child, dry run included (before, the
    10,000 x 10,000 comprehension hung the caller and `join` over 50M items aborted it)."""
    [case] = [c for c in spec_cases(tmp_path) if c.name == name]
    with pytest.raises(SpecError) as exc:
        rsi_env.make(str(case.path))
    assert case.expect in str(exc.value)


def test_what_a_map_or_filter_builds_is_charged_as_it_was_copied() -> None:
    # cel-rust copies what a `map`/`filter` has built at every step: adding a value costs what is
    # already there (COPY_UNITS a node), so `n` values of size 1 cost the sum over j < n of
    # int(COPY_UNITS * j) + 1, on top of the walk (WALK_UNITS * n, + 1) and the evaluation (3).
    from rsi_env.expr_budget import COPY_UNITS, WALK_UNITS

    def units(source: str, **values: object) -> int:
        e = Expr(source)
        scope = Scope(dict(values), select_functions(e.functions))
        e(scope)
        return scope.budget.eval_used

    def copied(sizes: list[int]) -> int:
        return sum(int(COPY_UNITS * sum(sizes[:j])) + 1 for j in range(len(sizes)))

    n = 40
    walk = int(WALK_UNITS * n) + 1
    assert units("l.map(x, x * 2)", l=list(range(n))) == 3 + walk + copied([1] * n)
    # Only what `filter` keeps is built; a value's size counts (a list of k ints: k + 1 nodes).
    assert units("l.filter(x, x % 4 == 0)", l=list(range(n))) == 3 + walk + copied([1] * (n // 4))
    assert units("l.map(x, [x, x])", l=list(range(n))) == 3 + walk + copied([3] * n)
    # A value over a limit stops the evaluation, named as what a comprehension builds.
    with pytest.raises(OverBudget, match="a comprehension builds a string of 20,000 characters"):
        units("l.map(x, s)", l=[1, 2], s="x" * 20_000)
