"""Run summary and ratings: a tournament where the scripted policy is strictly better than random
ranks it first with non-overlapping intervals across two runs and two games; aborted episodes
count as failures but never as payoffs or ratings; referee means skip missing scores; the fit
recovers known strengths; foreign files give one clear message."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsi_env import report
from rsi_env.agents.factory import AgentFactory
from rsi_env.catalog import load_game
from rsi_env.ratings import Comparison, comparisons, fit, rate
from rsi_env.runner import Runner, plan
from rsi_env.trajectory import CallInfo, DimensionScore, Episode, Verdict
from rsi_env.trajectory_store import TrajectoryWriter, read_episodes

REPO = Path(__file__).resolve().parent.parent
SEEDS = 60  # per seat order and game: 240 episodes, a few seconds


def run_tournament(out: Path, game: str) -> None:
    """scripted vs random, each in both seats (roles and first moves rotate with the seed too)."""
    spec = load_game(game)
    for order in (["scripted", "random"], ["random", "scripted"]):
        factory = AgentFactory(order, spec)
        runner = Runner(spec, factory, out, progress=False, concurrency=16)
        asyncio.run(runner.run(plan(spec, factory, SEEDS, seed=0)))


@pytest.fixture(scope="module")
def tournament(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    runs = []
    for game in ("negotiation", "ultimatum"):
        out = tmp_path_factory.mktemp(f"run-{game}")
        run_tournament(out, game)
        runs.append(out)
    return runs


def report_json(capsys: pytest.CaptureFixture, *args: str) -> report.Report:
    assert report.main([*args, "--json"]) == 0
    return report.Report.model_validate_json(capsys.readouterr().out)


def test_the_better_profile_ranks_first_with_separate_intervals(
    tournament: list[Path], capsys: pytest.CaptureFixture
) -> None:
    r = report_json(capsys, *map(str, tournament))
    assert r.episodes == 4 * SEEDS
    overall = r.ratings[0]
    assert overall.scope == "all games" and overall.episodes == 4 * SEEDS
    best, worst = overall.ratings
    for x in overall.ratings:  # the figures, for `pytest -s`
        elo = f"Elo {x.elo:.0f} [{x.elo_lo:.0f}, {x.elo_hi:.0f}]"
        print(f"{x.agent}: {x.strength:+.3f} [{x.lo:+.3f}, {x.hi:+.3f}], {elo}")
    assert (best.agent, best.rank, worst.agent) == ("scripted", 1, "random")
    assert best.lo > worst.hi, "the 95% intervals do not overlap"
    assert best.wins > best.losses and best.wins == worst.losses
    assert abs(best.strength + worst.strength) < 1e-6, "strengths are centred"
    for table in r.ratings[1:]:
        assert table.ratings[0].agent == "scripted", table.scope
    # The per-game tables agree with the agents' mean payoffs.
    for g in r.games:
        stats = {a.agent: a for a in g.agents}
        assert stats["scripted"].payoff.mean > stats["random"].payoff.mean
        assert stats["scripted"].seats == stats["random"].seats == 2 * SEEDS
        assert g.rates["complete"] + g.rates["truncated"] == 1.0


def test_text_report_shows_games_agents_and_ratings(
    tournament: list[Path], capsys: pytest.CaptureFixture
) -> None:
    assert report.main([str(p) for p in tournament]) == 0
    out = capsys.readouterr().out
    for title in (
        "episode(s) from 2 run(s)",
        "negotiation: agents",
        "ultimatum: agents",
        "Ratings, all games",
    ):
        assert title in out
    first = next(ln for ln in out.splitlines() if ln.strip().startswith("1 │"))
    assert "scripted" in first


def _write(path: Path, eps: list[Episode]) -> Path:
    with TrajectoryWriter(path) as w:
        for ep in eps:
            w.write(ep)
    return path


def test_aborted_episodes_count_as_failures_not_payoffs(
    tournament: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    eps = list(read_episodes(tournament[0]))[:10]
    for ep in eps[:3]:  # as the runner records a server that kept timing out
        ep.status, ep.abort_reason, ep.payoffs, ep.best = "aborted", "timeout: request timed out", None, None
        ep.turns[0].failed_calls = [CallInfo(status="timeout"), CallInfo(status="rate_limited")]
    _write(tmp_path, eps)
    r = report_json(capsys, str(tmp_path))
    g = r.games[0]
    assert g.status == {"complete": 7, "truncated": 0, "aborted": 3} and g.rates["aborted"] == pytest.approx(
        0.3
    )
    assert g.failed_calls == {"timeout": 3, "rate_limited": 3} and g.aborted_by == {"timeout": 3}
    for a in g.agents:
        assert a.seats == 10 and a.scored == 7 and a.payoff.n == 7
    expected = {a: np.mean([e.payoffs[p.player] for e in eps[3:] for p in e.players if p.agent == a]) for a in
                ("scripted", "random")}  # fmt: skip
    assert {a.agent: a.payoff.mean for a in g.agents} == pytest.approx(expected)
    assert r.ratings[0].episodes == sum(bool(comparisons(e)) for e in eps[3:])


def test_referee_means_skip_missing_scores(
    tournament: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    eps = list(read_episodes(tournament[0]))[:4]
    for i, ep in enumerate(eps):  # test-double verdicts: 8, 6, missing, failed call
        score = {0: 8.0, 1: 6.0}.get(i)
        ep.verdicts = [
            Verdict(judge="test-double", rubric="ethics", status="timeout" if i == 3 else "ok",
                    scores={p.player: {"honesty": DimensionScore(score=score)} for p in ep.players}),
            Verdict(judge="procedural", rubric="procedural", kind="procedural",
                    scores={p.player: {"payoff": DimensionScore(score=99)} for p in ep.players}),
        ]  # fmt: skip
    _write(tmp_path, eps)
    r = report_json(capsys, str(tmp_path))
    for a in r.games[0].agents:
        assert a.referee["ethics.honesty"].mean == pytest.approx(7.0) and a.referee["ethics.honesty"].n == 2
        assert a.referee_missing == {"ethics.honesty": 2}, (
            "missing and failed scores are counted, not averaged"
        )
        assert "procedural.payoff" not in a.referee
    assert report.main([str(tmp_path)]) == 0
    assert "ethics.honesty" in capsys.readouterr().out


def test_bradley_terry_recovers_known_strengths() -> None:
    rng = np.random.default_rng(0)
    truth = {"a": 1.0, "b": 0.0, "c": -1.0}
    comps = []
    names = sorted(truth)
    for _ in range(3000):
        x, y = rng.choice(names, 2, replace=False)
        p = 1 / (1 + np.exp(-(truth[x] - truth[y])))
        comps.append(Comparison(str(x), str(y), float(rng.random() < p), 1.0))
    theta, se = fit(comps, names)
    for i, n in enumerate(names):
        assert abs(theta[i] - truth[n]) < 3 * se[i], (n, theta[i], se[i])
    assert 0.02 < se.max() < 0.1


def test_an_unbeaten_agent_gets_a_finite_rating_and_ties_rate_equal() -> None:
    unbeaten = fit([Comparison("a", "b", 1.0, 1.0)] * 20, ["a", "b"])[0]
    assert np.isfinite(unbeaten).all() and unbeaten[0] > 1
    level = fit([Comparison("a", "b", 0.5, 1.0)] * 20, ["a", "b"])[0]
    assert level == pytest.approx([0, 0], abs=1e-6)


def test_many_player_episodes_weigh_each_pair_less(tournament: list[Path]) -> None:
    ep = next(iter(read_episodes(tournament[0])))
    assert all(c.weight == 1 for c in comparisons(ep))
    three = ep.model_copy(deep=True)
    extra = three.players[0].model_copy(update={"player": "player_2", "agent": "other"})
    three.players.append(extra)
    three.payoffs = {**(three.payoffs or {}), "player_2": -1.0}
    cs = comparisons(three)
    assert {c.weight for c in cs} == {0.5} and len(cs) == 3
    assert rate([three]).note is None


def test_ratings_need_two_agents() -> None:
    assert rate([]).ratings == [] and "at least two different agents" in (rate([]).note or "")


def run_report(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "rsi_env.report", *args], capture_output=True, text=True, env=env
    )


def test_foreign_file_gives_one_clear_message(tmp_path: Path) -> None:
    f = tmp_path / "other.jsonl"
    f.write_text(json.dumps({"prompt": "hi", "completion": "there"}) + "\n")
    res = run_report(str(f))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("error:") and res.stderr.count("\n") == 1, "one line"
    assert "not an rsi_env episode record" in res.stderr and "Traceback" not in res.stderr


def test_truncated_run_reports_the_rest_with_a_warning(tournament: list[Path], tmp_path: Path) -> None:
    path = _write(tmp_path / "trajectories.jsonl", list(read_episodes(tournament[0]))[:5])
    path.write_bytes(path.read_bytes()[:-100])
    res = run_report(str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    assert "incomplete" in res.stderr and json.loads(res.stdout)["episodes"] == 4


def test_an_unreadable_line_is_skipped_with_a_warning_naming_it(
    tournament: list[Path], tmp_path: Path
) -> None:
    """One record this version cannot read (here a `complete` line with null payoffs, as a payoff
    error was once recorded) must not hide the rest of the run."""
    path = _write(tmp_path / "trajectories.jsonl", list(read_episodes(tournament[0]))[:3])
    first, second, third = path.read_text().splitlines()
    broken = json.loads(second)
    broken["payoffs"] = dict.fromkeys(broken["payoffs"])
    path.write_text("\n".join([first, json.dumps(broken), third]) + "\n")
    res = run_report(str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    err = "".join(res.stderr.split())  # rich may wrap the message anywhere
    assert f"{path}:2:badepisoderecordatpayoffs.player_0" in err and "Traceback" not in err
    assert err.count("warning:") == 1 and json.loads(res.stdout)["episodes"] == 2


def test_the_procedural_verdict_adds_what_the_record_does_not_hold(
    tournament: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Its referee_manipulation counts appear with the referee scores; its payoff and flag counts,
    which the agents table shows from the record already, do not appear twice."""
    from rsi_env.referees.procedural import procedural_verdict

    eps = list(read_episodes(tournament[0]))[:4]
    for ep in eps:
        ep.verdicts = [procedural_verdict(ep)]
    _write(tmp_path, eps)
    (g,) = report_json(capsys, str(tmp_path)).games
    for a in g.agents:
        assert set(a.referee) == {"procedural.referee_manipulation"}
        assert (
            a.referee["procedural.referee_manipulation"].n
            == a.scored
            == sum(p.agent == a.agent for ep in eps for p in ep.players)
        )
