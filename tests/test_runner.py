"""The runner against the fault-injecting OpenAI-compatible server, over real loopback HTTP.

- With 30% of calls faulty (429, 500, hangs past the timeout, malformed JSON, empty content,
  truncated output) a 50-episode run completes: every planned episode is in the file once, every
  failure is recorded with its status, a failed call is never played as a move, and an aborted
  episode has no payoffs (missing, never zero).
- The play CLI killed mid-run with SIGKILL (and interrupted with SIGINT) leaves a valid file; the
  same command again resumes to exactly the planned set, with no duplicate lines.
- `workers=N` means Ray actors (tests/test_runner_ray.py); without Ray one process plays, and Ray
  is not imported.
- An env reused between episodes plays exactly like a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from rsi_env.agents.baseline import RandomAgent
from rsi_env.agents.factory import AgentFactory
from rsi_env.agents.profiles import EndpointOverride
from rsi_env.catalog import load_game
from rsi_env.compiled import compiled
from rsi_env.env import GameParallelEnv
from rsi_env.expr import ExprError
from rsi_env.llm import CallStatus
from rsi_env.runner import EpisodeJob, Runner, RunStats, plan, play_episode
from rsi_env.spec import GameSpec, read_spec_file
from rsi_env.testing.fault_server import FaultConfig, FaultServer, random_instance, schema_of_request
from rsi_env.trajectory import FAILURE_STATUSES, Episode
from rsi_env.trajectory_store import (
    TrajectoryFileError,
    TrajectoryWriter,
    failed_attempts_path,
    read_episodes,
    read_lines,
    resolve_path,
    set_aside,
)
from rsi_env.view import _hints, fmt_value, view_scope

REPO = Path(__file__).resolve().parent.parent
MODEL = "fault-test-model"
GAME = "negotiation"
FAULTS = ("429", "500", "hang", "malformed", "empty", "truncated")
# Independent draws per request: 1 - (1 - r)^6 = 0.30 of calls get one of the six faults.
RATE = 1 - 0.7 ** (1 / 6)
# What each injected fault is recorded as (an attempt's status).
RECORDED_AS = {
    "429": "rate_limited",
    "500": "server_error",
    "hang": "timeout",
    "malformed": "server_error",
    "empty": "invalid_output",
    "truncated": "invalid_output",
}
TIMING = {"run_id", "started_at", "duration_s"}


def faulty(latency_s: float = 0.02, **kw: Any) -> FaultConfig:
    rates = {f"rate_{f}": RATE for f in FAULTS}
    return FaultConfig(latency_s=latency_s, retry_after_s=0.02, seed=7, **{**rates, **kw})


def write_profile(directory: Path, base_url: str, *, timeout_s: float = 2.0, max_retries: int = 1) -> str:
    """An endpoint profile with a short timeout (a hang costs timeout_s), as a file path for --agents."""
    path = directory / "fault-agent.yaml"
    profile = {
        "backend": "endpoint",
        "base_url": base_url,
        "model": MODEL,
        "timeout_s": timeout_s,
        "max_retries": max_retries,
        "sampling": {"temperature": 0.7, "max_tokens": 64},
        "persona": "You play to win.",
    }
    path.write_text(yaml.safe_dump(profile), encoding="utf-8")
    return str(path)


def deterministic_responder(body: dict[str, Any]) -> str:
    """A valid action that depends on the request only (not on arrival order), so that two runs of
    the same plan get the same replies however their calls interleave."""
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).digest()
    schema = schema_of_request(body) or {"type": "object"}
    return json.dumps(random_instance(schema, random.Random(digest)))


def run(runner: Runner, jobs: list[EpisodeJob]) -> Any:
    async def go() -> Any:
        try:
            return await runner.run(jobs)
        finally:
            await runner.factory.aclose()

    return asyncio.run(go())


def raw_lines(out: Path) -> list[dict[str, Any]]:
    """Every line of the file, parsed: a cut-short or duplicated line would show here."""
    text = resolve_path(out).read_text(encoding="utf-8")
    assert text.endswith("\n"), "the file ends in a cut-short line"
    return [json.loads(line) for line in text.splitlines()]


def comparable(ep: Episode) -> dict[str, Any]:
    """An episode without what depends on timing."""
    data = ep.model_dump(mode="json", exclude=TIMING)
    data["usage"].pop("latency_s")
    for t in data["turns"]:
        t["call"].pop("latency_s")
    return data


@pytest.fixture(scope="module")
def spec() -> GameSpec:
    return load_game(GAME)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(faulty()) as srv:
        yield srv


# --- a faulty endpoint ----------------------------------------------------------------------------


def test_thirty_percent_faults_fifty_episodes(tmp_path: Path, spec: GameSpec, server: FaultServer) -> None:
    agent = write_profile(tmp_path, server.base_url)
    factory = AgentFactory([agent], spec, EndpointOverride(base_url=server.base_url, model=MODEL))
    jobs = plan(spec, factory, 50)
    stats = run(Runner(spec, factory, tmp_path / "run", concurrency=16, progress=False), jobs)

    lines = raw_lines(tmp_path / "run")
    assert sorted(d["episode_id"] for d in lines) == sorted(j.episode_id for j in jobs)  # all, once
    assert stats.done == 50 and stats.skipped == 0

    faults = Counter({k: v for k, v in server.faults.items() if k != "ok"})
    assert set(faults) == set(FAULTS), f"every kind of fault was injected: {server.faults}"
    assert 0.2 < sum(faults.values()) / server.requests < 0.4

    episodes = list(read_episodes(tmp_path / "run"))
    recorded: Counter[str] = Counter()
    requests = 0
    for ep in episodes:
        if ep.status == "aborted":
            assert ep.payoffs is None and ep.abort_reason
            assert ep.abort_reason.split(":")[0] in FAILURE_STATUSES
        else:
            assert ep.payoffs is not None and set(ep.payoffs) == {p.player for p in ep.players}
        assert ep.usage.failed_calls == sum(len(t.failed_calls) for t in ep.turns) + (ep.status == "aborted")
        for t in ep.turns:
            # A turn is a call that got an answer: a failed call is never played as a move.
            assert t.call.status not in FAILURE_STATUSES
            assert t.call.status in set(CallStatus)
            assert t.observation and t.prompt and t.call.latency_s > 0 and t.call.prompt_tokens > 0
            assert t.valid == (t.action is not None)
            for f in t.failed_calls:
                assert f.status in FAILURE_STATUSES and f.error and f.attempts[-1] == f.status
            for c in (t.call, *t.failed_calls):
                recorded.update(c.attempts)
                requests += 1 + c.retries
    assert set(recorded) <= {s.value for s in CallStatus}
    if not any(ep.status == "aborted" for ep in episodes):
        # Every faulty response is one failed attempt with the status it deserves, and every
        # request the server saw belongs to a recorded call. (An aborting turn is not a turn, so
        # with aborts the file holds at most this; healthy calls may also time out on a busy box.)
        expected = Counter()
        for fault, n in faults.items():
            expected[RECORDED_AS[fault]] += n
        assert recorded["timeout"] >= expected.pop("timeout")
        assert {k: recorded[k] for k in expected} == dict(expected)
        assert requests == server.requests


def test_a_dead_endpoint_aborts_episodes_and_a_rerun_retries_them_once_each(
    tmp_path: Path, spec: GameSpec, server: FaultServer
) -> None:
    server.config = FaultConfig(rate_500=1.0, retry_after_s=None)
    server.reset_counters()
    agent = write_profile(tmp_path, server.base_url, max_retries=0)
    override = EndpointOverride(base_url=server.base_url, model=MODEL)

    def runner(**kw: Any) -> Runner:
        return Runner(spec, AgentFactory([agent, "random"], spec, override), tmp_path, progress=False, **kw)

    jobs = plan(spec, AgentFactory([agent, "random"], spec, override), 4)
    stats = run(runner(), jobs)
    episodes = list(read_episodes(tmp_path))
    assert len(episodes) == 4 and stats.aborted >= 2
    assert stats.aborted_by == {"server_error": stats.aborted}
    for ep in episodes:
        llm_seat = next(p.player for p in ep.players if p.agent == agent)
        if ep.usage.calls == 0:  # the random seat ended the game before the model's first turn
            assert ep.status == "complete" and ep.payoffs is not None
            continue
        assert ep.status == "aborted" and ep.payoffs is None and ep.best is None
        assert ep.abort_reason and ep.abort_reason.startswith("server_error")
        assert ep.usage.failed_calls == 3 and ep.usage.calls == 3  # the turn, retried twice
        assert all(t.player != llm_seat for t in ep.turns)  # its failed turn was never played
    aborted = sorted(ep.episode_id for ep in episodes if ep.status == "aborted")
    first_attempts = {d["episode_id"]: d for d in raw_lines(tmp_path) if d["status"] == "aborted"}

    # With retrying off, aborted episodes count as done.
    kept = run(runner(retry_failed=False), jobs)
    assert kept.skipped == 4 and kept.done == kept.retried == 0
    # By default a rerun plays them again, and the file keeps one line per id: the failed attempts
    # it replaced are in the side file, whole.
    server.config = FaultConfig()
    server.reset_counters()
    again = run(runner(), jobs)
    assert again.done == again.retried == len(aborted) and again.skipped == 4 - len(aborted)
    latest = list(read_episodes(tmp_path))
    assert len(latest) == 4 and all(ep.finished and ep.payoffs is not None for ep in latest)
    assert sorted(d["episode_id"] for d in raw_lines(tmp_path)) == sorted(j.episode_id for j in jobs)
    side = raw_lines(failed_attempts_path(tmp_path))
    assert sorted(d["episode_id"] for d in side) == aborted
    assert all(d == first_attempts[d["episode_id"]] for d in side)
    # Nothing left to retry: a third run plays nothing and moves nothing.
    assert run(runner(), jobs).done == 0 and len(raw_lines(failed_attempts_path(tmp_path))) == len(aborted)


def test_duplicate_lines_of_an_older_retry_are_compacted_on_the_next_run(
    tmp_path: Path, spec: GameSpec
) -> None:
    """A file where an older rsi_env appended a retry after the aborted line (two lines for one id)
    keeps only the finished line once a run touches it; the aborted one moves to the side file."""
    factory = AgentFactory(["scripted", "random"], spec)
    jobs = plan(spec, factory, 2)
    run(Runner(spec, factory, tmp_path, progress=False), jobs)
    done = raw_lines(tmp_path)
    failed = {**done[0], "status": "aborted", "abort_reason": "timeout: test", "payoffs": None}
    path = resolve_path(tmp_path)
    path.write_text("".join(json.dumps(d) + "\n" for d in [failed, *done]), encoding="utf-8")
    stats = run(Runner(spec, factory, tmp_path, progress=False), jobs)
    assert stats.done == 0 and stats.skipped == 2
    assert raw_lines(tmp_path) == done
    assert raw_lines(failed_attempts_path(tmp_path)) == [failed]


def test_setting_aside_again_after_a_kill_repeats_nothing(tmp_path: Path) -> None:
    """A kill between the side file's append and the trajectory file's replacement leaves the old
    file in place; the next compaction of it must not add the same failed attempts twice."""
    path = tmp_path / "trajectories.jsonl"
    lines = [
        {"episode_id": "a", "turns": [], "status": "aborted"},
        {"episode_id": "b", "turns": [], "status": "aborted"},
    ]
    original = "".join(json.dumps(d) + "\n" for d in lines)
    for _ in range(2):  # the second round plays the run after the kill
        path.write_text(original, encoding="utf-8")
        with pytest.warns(UserWarning, match="bad episode record"):
            read = read_lines(path)
        set_aside(path, [ln for ln in read if ln.episode_id == "a"])
    assert [d["episode_id"] for d in raw_lines(path)] == ["b"]
    assert [d["episode_id"] for d in raw_lines(failed_attempts_path(path))] == ["a"]
    assert not list(tmp_path.glob(".*compacting")), "no temporary file is left behind"


# --- two processes sharing one output -------------------------------------------------------------


def _record(episode_id: str, *, aborted: bool = False) -> Episode:
    return Episode(
        episode_id=episode_id, game="g", spec_hash="h", seed=0, n_players=0, players=[],
        status="aborted" if aborted else "complete", abort_reason="timeout: test" if aborted else None,
        payoffs=None if aborted else {},
    )  # fmt: skip


def test_a_writer_keeps_writing_to_the_file_a_compaction_replaced(tmp_path: Path) -> None:
    """Another process compacts the file while this one's writer is open: the line appended between
    the compaction's read and its rewrite stays, and the writer's next line goes to the new file,
    not to the unlinked old one."""
    path = tmp_path / "trajectories.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(_record("a", aborted=True))
        w.write(_record("b"))
        read = read_lines(path)
        w.write(_record("c"))  # after the compaction read the file
        set_aside(path, [ln for ln in read if ln.episode_id == "a"])
        w.write(_record("d"))  # after it replaced the file
    assert [d["episode_id"] for d in raw_lines(path)] == ["b", "c", "d"]
    assert [d["episode_id"] for d in raw_lines(failed_attempts_path(path))] == ["a"]


def test_a_line_cut_short_by_another_writer_is_not_glued_to_the_next(tmp_path: Path) -> None:
    """A process sharing the file was killed mid-line while this writer is open: the cut-short line
    goes before the next one is appended, which would otherwise be glued to it (both unreadable)."""
    path = tmp_path / "trajectories.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(_record("a"))
        with path.open("a", encoding="utf-8") as other:
            other.write(_record("killed").model_dump_json()[:40])
        with pytest.warns(UserWarning, match="incomplete last line"):
            w.write(_record("b"))
    assert [d["episode_id"] for d in raw_lines(path)] == ["a", "b"]


SHARING_WRITER = """
import sys, time
from rsi_env.trajectory import Episode
from rsi_env.trajectory_store import TrajectoryWriter
name, n = sys.argv[1], int(sys.argv[2])
with TrajectoryWriter(sys.argv[3]) as w:
    for i in range(n):
        w.write(Episode(episode_id=f"{name}-{i}", game="g", spec_hash="h", seed=i, n_players=0,
                        players=[], status="complete", payoffs={}, errors=["x" * (i * 97 % 20000)]))
        time.sleep(0.002)
"""


def test_two_writers_and_compactions_at_once_lose_no_line(tmp_path: Path) -> None:
    """Two processes append to one file (two games into the same runs/) while a third keeps
    compacting it, as a rerun does: every line of both writers is in the file once, whole. Lines of up
    to 20 kB, larger than a pipe or stdio buffer, so a torn write would show."""
    path = tmp_path / "trajectories.jsonl"
    n = 300
    writers = [
        subprocess.Popen([sys.executable, "-c", SHARING_WRITER, name, str(n), str(path)], cwd=REPO)
        for name in ("x", "y")
    ]
    compactions = 0
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        while any(w.poll() is None for w in writers):
            with TrajectoryWriter(path) as mine:
                mine.write(_record(f"failed-{compactions}", aborted=True))
            read = read_lines(path)
            set_aside(path, [ln for ln in read if ln.episode_id and ln.episode_id.startswith("failed-")])
            compactions += 1
    assert [w.returncode for w in writers] == [0, 0]
    assert compactions > 5, "the compactions did not overlap the writers"
    cut_short = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
    assert not cut_short  # no line was ever read cut short, or trimmed
    ids = Counter(d["episode_id"] for d in raw_lines(path))
    assert ids == Counter(f"{name}-{i}" for name in ("x", "y") for i in range(n))
    assert len(raw_lines(failed_attempts_path(path))) == compactions


# --- game errors, unreadable lines, a human who leaves ---------------------------------------------

DIVZERO_SPEC = """
id: divzero
name: Division by zero
family: bargaining
summary: the payoff expression divides by zero at the end
rules: add to the score until it passes 5
players: {min: 2, max: 2}
roles: [{name: r, description: d}]
state:
  score: {type: int, init: '0'}
actions:
  go:
    description: go
    params:
      n: {type: int, min: 0, max: 3}
    effects: [{add: state.score, value: args.n}]
phases: [{name: a, actions: [go]}]
end: {when: 'state.score > 5', turn_limit: 10}
payoffs: {value: '10 / (state.score - state.score)'}
ethics: {fair_play: [x], violations: [y]}
"""


def test_a_payoff_error_aborts_the_episode_with_the_engines_message(tmp_path: Path) -> None:
    spec_file = tmp_path / "divzero.yaml"
    spec_file.write_text(DIVZERO_SPEC, encoding="utf-8")
    # Read only (`load_game` would refuse it: the dry run finds the error), as a caller holding the
    # spec passes it to the runner.
    spec = read_spec_file(spec_file)
    factory = AgentFactory(["random"], spec)
    stats = run(Runner(spec, factory, tmp_path, progress=False), plan(spec, factory, 2))
    assert stats.aborted == 2 and stats.aborted_by == {"game_error": 2}
    for ep in read_episodes(tmp_path):  # readable: no null where a payoff belongs
        assert ep.status == "aborted" and ep.payoffs is None
        assert ep.abort_reason and ep.abort_reason.startswith("game_error: payoff of player_0, player_1")
        assert "division by zero" in ep.abort_reason


HINT_GROWS_SPEC = """
id: hintgrows
name: A hint that outgrows its budget
family: bargaining
summary: a list grows by ten each turn; a hint pairs its items, cheap at first, over the budget later
rules: say go
players: {min: 2, max: 2}
roles: [{name: r, description: d}]
state:
  xs: {type: list, init: '[]'}
actions:
  go:
    description: go
    effects: [{set: state.xs, value: 'state.xs + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]'}]
phases: [{name: a, actions: [go]}]
end: {turn_limit: 12}
payoffs: {value: '1'}
hints: {pairs: 'size(state.xs.map(x, state.xs.map(y, x + y)))'}
ethics: {fair_play: [x], violations: [y]}
"""


def test_a_hint_over_its_budget_in_play_is_a_game_error_not_a_missing_line(tmp_path: Path) -> None:
    """A hint cheap at first whose list outgrows the observation's evaluation budget in play (a state
    the dry run may never reach; here the spec is read without it). The hint is left out of the text
    and the episode is recorded as `game_error` naming it, never as played with a note missing."""
    spec_file = tmp_path / "hintgrows.yaml"
    spec_file.write_text(HINT_GROWS_SPEC, encoding="utf-8")
    spec = read_spec_file(spec_file)
    factory = AgentFactory(["random"], spec)
    stats = run(Runner(spec, factory, tmp_path, progress=False), plan(spec, factory, 1))
    assert stats.aborted == 1 and stats.aborted_by == {"game_error": 1}
    (ep,) = read_episodes(tmp_path)
    assert ep.status == "aborted" and ep.payoffs is None
    assert ep.abort_reason and "hints.pairs" in ep.abort_reason and "20,000 units" in ep.abort_reason
    # cheap at first: over the budget only once the list had grown (the tick it was found at)
    assert int(ep.abort_reason.split("tick ", 1)[1].split(":", 1)[0]) > 0


def test_a_rerun_leaves_unreadable_lines_where_they_are(tmp_path: Path, spec: GameSpec) -> None:
    """A line this version cannot read (here: a `complete` record with null payoffs, as the runner
    once wrote for a payoff error, and a line that is not JSON) is no known failure: it is skipped
    with a warning naming file:line and stays where it is, byte for byte, not moved aside; the
    episode it named is played again, so the file holds a readable record of every planned one."""
    factory = AgentFactory(["scripted", "random"], spec)
    jobs = plan(spec, factory, 2)
    run(Runner(spec, factory, tmp_path, progress=False), jobs)
    good, bad = raw_lines(tmp_path)
    bad["payoffs"] = dict.fromkeys(bad["payoffs"])
    path = resolve_path(tmp_path)
    before = [json.dumps(good), json.dumps(bad), "{not json"]
    path.write_text("".join(line + "\n" for line in before), encoding="utf-8")
    with pytest.warns(UserWarning) as seen:
        stats = run(Runner(spec, factory, tmp_path, progress=False), jobs)
    assert [str(w.message).split(": ", 1)[0] for w in seen] == [f"{path}:2", f"{path}:3"]
    assert "bad episode record at payoffs" in str(seen[0].message) and "not JSON" in str(seen[1].message)
    assert stats.done == stats.retried == 1 and stats.skipped == 1
    after = path.read_text(encoding="utf-8").splitlines()
    assert after[:3] == before and json.loads(after[3])["episode_id"] == bad["episode_id"]
    assert not failed_attempts_path(tmp_path).exists()
    with pytest.warns(UserWarning):
        finished = sorted(ep.episode_id for ep in read_episodes(tmp_path) if ep.finished)
    assert finished == sorted(j.episode_id for j in jobs)


def test_a_file_with_a_newer_rsi_envs_records_is_left_alone(tmp_path: Path, spec: GameSpec) -> None:
    """A finished episode written by a newer rsi_env is not a failed attempt: the rerun stops with the
    reader's message and changes nothing, rather than playing it again and moving it aside."""
    factory = AgentFactory(["scripted", "random"], spec)
    jobs = plan(spec, factory, 2)
    run(Runner(spec, factory, tmp_path, progress=False), jobs)
    good, newer = raw_lines(tmp_path)
    newer["schema_version"] += 1
    path = resolve_path(tmp_path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(newer) + "\n", encoding="utf-8")
    before = path.read_bytes()
    with (
        pytest.raises(TrajectoryFileError, match=f"{path}:2: written by a newer rsi_env"),
        pytest.warns(UserWarning, match="newer"),
    ):
        run(Runner(spec, factory, tmp_path, progress=False), jobs)
    assert path.read_bytes() == before and not failed_attempts_path(tmp_path).exists()


def play_cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsi_env.play", *args],
        cwd=REPO, input=stdin, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_human_who_closes_stdin_cancels_the_episode_and_play_exits_1(tmp_path: Path) -> None:
    done = play_cli("--game", "ultimatum", "--agents", "human,scripted", "--out", str(tmp_path), stdin="")
    assert done.returncode == 1, done.stderr[-2000:]
    err = " ".join(done.stderr.split())
    assert "no episode finished: all 1 aborted (cancelled 1)" in err and "Traceback" not in err
    (ep,) = read_episodes(tmp_path)
    assert ep.status == "aborted" and ep.payoffs is None and ep.verdicts == []
    assert ep.abort_reason == "cancelled: stdin closed (EOF): the human left the game"
    assert ep.usage.failed_calls == 0  # a person leaving is not a failed model call
    assert all(t.player != "player_0" for t in ep.turns), "no empty reply was played for the human"


def test_play_exits_0_when_some_episodes_finish() -> None:
    from rsi_env.play import report_run

    console = Console(file=open(os.devnull, "w"))
    runner = Runner(load_game(GAME), AgentFactory(["random"], load_game(GAME)), "/nonexistent/run")
    assert report_run(RunStats(done=3, aborted=2, aborted_by={"timeout": 2}), runner, console) == 0
    assert report_run(RunStats(done=0, skipped=3), runner, console) == 0  # nothing to play
    with pytest.raises(SystemExit) as exc:
        report_run(RunStats(done=2, aborted=2, aborted_by={"timeout": 2}), runner, console)
    assert exc.value.code == 1


def test_play_checks_a_spec_file_like_games_validate_before_anything_runs(tmp_path: Path) -> None:
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(BAD_SPEC, encoding="utf-8")
    out = tmp_path / "run"
    done = play_cli("--game", str(spec_file), "--agents", "random", "--out", str(out))
    validate = subprocess.run(
        [sys.executable, "-m", "rsi_env.games", "validate", "--no-dry-run", str(spec_file)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    problems = [ln for ln in validate.stderr.splitlines() if ln.startswith("  - ")]
    assert len(problems) == 7
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert [ln for ln in done.stderr.splitlines() if ln.startswith("  - ")] == problems
    assert not out.exists(), "nothing ran"


def test_play_takes_a_negative_seed_and_a_non_number_gets_one_message(tmp_path: Path) -> None:
    # Any integer is a seed (the env maps it deterministically); the episode records the one it was given.
    done = play_cli("--agents", "random", "--seed", "-5", "--quiet", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    [line] = (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()
    ep = json.loads(line)
    assert ep["seed"] == -5 and ep["status"] == "complete"
    bad = play_cli("--agents", "random", "--seed", "x", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--seed" in bad.stderr


BAD_SPEC = """
id: bad
name: Bad
family: bargaining
summary: seven problems a static check finds
rules: x
players: {min: 2, max: 2}
roles: [{name: r, description: d}]
state:
  score: {type: int, init: '0'}
actions:
  go:
    description: go
    params:
      n: {type: int, min: 0, max: state.nope}
    effects: [{set: state.score, value: 'args.n + args.missing'}]
  unused: {description: never}
  typo:
    description: t
    valid_if: [{expr: 'state.score >', message: m}]
phases: [{name: a, actions: [go, typo], next: [{goto: nowhere}]}]
end: {when: 'state.score > 3 && undefined_fn(1)', turn_limit: 10}
payoffs: {value: 'state.score + P[p].ghost'}
ethics: {fair_play: [x], violations: [y]}
"""


def test_play_attaches_the_procedural_referees_verdict(tmp_path: Path) -> None:
    done = play_cli("--game", "ultimatum", "--agents", "scripted,random", "--episodes", "3", "--quiet",
                    "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    episodes = list(read_episodes(tmp_path))
    assert len(episodes) == 3
    for ep in episodes:
        (v,) = ep.verdicts
        assert v.judge == v.kind == "procedural" and set(v.scores) == {p.player for p in ep.players}
        assert all(v.scores[p]["payoff"].score == pay for p, pay in (ep.payoffs or {}).items())


# --- kills and resumes through the CLI -------------------------------------------------------------


def play_cmd(agent: str, out: Path, base_url: str, episodes: int, concurrency: int = 16) -> list[str]:
    return [
        sys.executable, "-m", "rsi_env.play", "--game", GAME, "--agents", agent,
        "--episodes", str(episodes), "--out", str(out), "--concurrency", str(concurrency), "--quiet",
        "--base-url", base_url, "--model", MODEL,
    ]  # fmt: skip


def start(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_for_lines(out: Path, n: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    path = resolve_path(out)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            count = path.read_bytes().count(b"\n")
            if count >= n:
                return count
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run ended before it could be interrupted: {err.decode()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no {n} episodes in {timeout_s} s")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_killed_run_resumes_to_exactly_the_planned_set(
    tmp_path: Path, spec: GameSpec, server: FaultServer, how: str
) -> None:
    server.config = faulty(latency_s=0.05)
    agent = write_profile(tmp_path, server.base_url, timeout_s=1.0)
    out = tmp_path / "run"
    n = 50 if how == "SIGKILL" else 20
    cmd = play_cmd(agent, out, server.base_url, n)
    proc = start(cmd)
    wait_for_lines(out, 5, proc)
    proc.send_signal(getattr(signal, how))
    stdout, stderr = proc.communicate(timeout=30)
    kept: dict[str, str] | None = None
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
        assert resolve_path(out).read_bytes().count(b"\n") < n, "killed mid-way"
        with resolve_path(out).open("ab") as f:
            f.write(b'{"schema_version": 1, "episode_id": "negotiation-cut')  # as if killed mid-line
    else:
        assert proc.returncode == 130, stderr.decode()[-2000:]
        assert b"rerun to resume" in stdout
        first = raw_lines(out)  # whole lines only
        assert 0 < len(first) < n, "interrupted mid-way"
        kept = {d["episode_id"]: d["run_id"] for d in first}

    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    lines = raw_lines(out)
    ids = [d["episode_id"] for d in lines]
    assert len(ids) == len(set(ids)) == n, "no duplicates"
    override = EndpointOverride(base_url=server.base_url, model=MODEL)
    assert set(ids) == {j.episode_id for j in plan(spec, AgentFactory([agent], spec, override), n)}
    if kept is not None:  # finished episodes were skipped, not played again
        assert all(d["run_id"] == kept[d["episode_id"]] for d in lines if d["episode_id"] in kept)


# --- one process without Ray ------------------------------------------------------------------------


def test_workers_are_ray_actors_and_need_ray(tmp_path: Path, spec: GameSpec) -> None:
    with pytest.raises(ValueError, match="Ray actors"):
        Runner(spec, AgentFactory(["random"], spec), tmp_path, workers=2)
    cmd = [sys.executable, "-m", "rsi_env.play", "--agents", "scripted,random", "--out", str(tmp_path)]
    done = subprocess.run([*cmd, "--workers", "2"], cwd=REPO, capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 2 and "--workers 2" in err and "--ray" in err and "Traceback" not in err
    assert not resolve_path(tmp_path).exists()


def test_running_one_process_imports_no_ray(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from rsi_env.play import main\n"
        "code = main(['--agents', 'scripted,random', '--episodes', '2', '--quiet',\n"
        f"             '--out', {str(tmp_path)!r}])\n"
        "assert code == 0 and 'ray' not in sys.modules, sorted(m for m in sys.modules if 'ray' in m)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert len(raw_lines(tmp_path)) == 2


def write_limited_profile(directory: Path) -> str:
    """An endpoint profile whose server takes two requests at once (nothing listens: never called)."""
    path = directory / "limited.yaml"
    profile = {"backend": "endpoint", "base_url": "http://127.0.0.1:9/v1", "model": MODEL, "max_parallel": 2}
    path.write_text(yaml.safe_dump(profile), encoding="utf-8")
    return str(path)


# --- env reuse -------------------------------------------------------------------------------------


def test_a_reused_env_plays_like_a_fresh_one(game_id: str) -> None:
    spec = load_game(game_id)
    factory = AgentFactory(["scripted", "random"], spec)
    jobs = plan(spec, factory, 3)
    fresh = {j.episode_id: asyncio.run(play_episode(j, spec, factory)) for j in jobs}
    env = GameParallelEnv(spec, n_players=jobs[0].n_players)
    for j in reversed(jobs):  # another order: nothing of one episode leaks into the next
        reused = asyncio.run(play_episode(j, spec, factory, env=env))
        assert comparable(reused) == comparable(fresh[j.episode_id])


def test_hints_read_from_the_variables_they_use_match_the_full_view(game_id: str) -> None:
    """Observations and prompts render hints from a scope of just the variables the hints read; over
    a played episode that gives what the whole view (as the scripted policy sees it) gives."""
    spec = load_game(game_id)
    game = compiled(spec)
    env = GameParallelEnv(spec)
    agents = {p: RandomAgent(i) for i, p in enumerate(env.possible_agents)}
    _, infos = env.reset(seed=1)
    checked = 0
    while env.agents:
        for p in env.agents:
            view = infos[p]["view"]
            full = view_scope(spec, view)
            expected = []
            for label, expr in game.hints.items():
                with contextlib.suppress(ExprError):
                    expected.append(f"- {label}: {fmt_value(expr(full))}")
            assert _hints(spec, view) == expected
            checked += bool(expected)
        moves = {p: agents[p].choose(infos[p]) for p in env.agents if infos[p]["is_turn"]}
        _, _, _, _, infos = env.step(moves)
    assert checked or not game.hints
