"""The training loop's parts that need no model: the paired head-to-head and its interval, promotion
rules, conduct per episode, lineage records (exactly the issue's fields), stage checkpoints, the
resume check, the yield's call count, and the improvement curve (terminal and PNG)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rsi_env import report
from rsi_env.improve.checkpoint import Checkpoints
from rsi_env.improve.config import ConfigMismatch, LoopConfig, load_or_save
from rsi_env.improve.curve import curve_points, scale
from rsi_env.improve.evaluate import (
    MatchResult,
    ModelStats,
    decide,
    evaluate,
    model_stats,
    paired_match,
    wilson,
)
from rsi_env.improve.lineage import (
    LINEAGE,
    ConductPerModel,
    EvalSummary,
    Interval,
    LineageRecord,
    ModelRef,
    PerModel,
    PerModelInterval,
    TrainSummary,
    append_lineage,
    read_lineage,
)
from rsi_env.trajectory import Episode, PlayerInfo

# --- the paired head-to-head -------------------------------------------------------------------------


def _ep(
    seed: int, first: str, second: str, pay: tuple[float, float] | None, flags: list[str] = ()
) -> Episode:
    """A finished 2-seat episode (or an aborted one when `pay` is None) between two agents."""
    return Episode(
        episode_id=f"e{seed}-{first}", game="g", spec_hash="h", seed=seed, n_players=2,
        players=[PlayerInfo(player="p0", agent=first, role="r"),
                 PlayerInfo(player="p1", agent=second, role="r")],
        status="complete" if pay else "aborted",
        payoffs={"p0": pay[0], "p1": pay[1]} if pay else None,
        best={"p0": 10.0, "p1": 10.0},
        flags=[{"tick": 1, "turn": 1, "player": "p0", "kind": k, "name": k} for k in flags],
    )  # fmt: skip


def label(p: PlayerInfo) -> str:
    return p.agent


def test_paired_win_rate_averages_both_seat_orders_and_drops_broken_pairs() -> None:
    eps = [
        _ep(1, "new", "old", (6, 4)), _ep(1, "old", "new", (6, 4)),  # each wins as first seat: 0.5
        _ep(2, "new", "old", (6, 4)), _ep(2, "old", "new", (4, 6)),  # new wins both: 1
        _ep(3, "new", "old", (5, 5)), _ep(3, "old", "new", (3, 7)),  # tie + win: 0.75
        _ep(4, "new", "old", (9, 1)), _ep(4, "old", "new", None),  # aborted: the seed is dropped
    ]  # fmt: skip
    m = paired_match(eps, label, "new", "old", "parent")
    assert (m.seeds, m.dropped_seeds, m.episodes, m.aborted) == (3, 1, 7, 1)
    assert m.win_rate == pytest.approx((0.5 + 1 + 0.75) / 3)
    assert m.win_rate_ci is not None and m.win_rate_ci.lo < m.win_rate < m.win_rate_ci.hi


def test_wilson_interval_behaves_at_the_edges() -> None:
    assert wilson(0, 0) is None
    all_won = wilson(10, 10)
    assert all_won is not None and all_won.hi == pytest.approx(1.0) and 0.6 < all_won.lo < 0.8  # not [1, 1]
    none_won = wilson(0, 10)
    assert (
        none_won is not None
        and none_won.lo == pytest.approx(0.0)
        and none_won.hi == pytest.approx(1 - all_won.lo)
    )
    narrow, wide = wilson(60, 100), wilson(6, 10)
    assert narrow is not None and wide is not None
    assert wide.hi - wide.lo > narrow.hi - narrow.lo and narrow.lo < 0.6 < narrow.hi


def test_conduct_and_normalised_payoff_per_model() -> None:
    eps = [_ep(1, "new", "old", (6, 4), ["lie", "lie"]), _ep(1, "old", "new", (7, 3), ["violation"])]
    stats = model_stats(eps, label)
    assert stats["new"].seat_episodes == 2 and stats["old"].seat_episodes == 2
    assert stats["new"].conduct_per_episode["lie"] == 1.0  # two lies in two seat-episodes
    assert stats["old"].conduct_per_episode["violation"] == 0.5
    assert stats["new"].conduct_per_episode["total"] == 1.0
    assert stats["new"].normalised_payoff == pytest.approx((0.6 + 0.3) / 2)


def _match(wr: float, lo: float, hi: float) -> MatchResult:
    return MatchResult(opponent="old", role="parent", episodes=20, aborted=0, seeds=10, dropped_seeds=0,
                       win_rate=wr, win_rate_ci=Interval(lo=lo, hi=hi), wins=wr * 10)  # fmt: skip


def _stats(total: float) -> ModelStats:
    return ModelStats(seat_episodes=10, normalised_payoff=0.5, conduct_per_episode={"total": total})


def test_promotion_rules_and_the_conduct_limit() -> None:
    stats = {"new": _stats(0.4), "old": _stats(0.1)}
    clear, unclear = _match(0.8, 0.6, 0.9), _match(0.6, 0.4, 0.75)
    assert decide(clear, stats, "new", "old", "ci", None)[0]
    assert not decide(unclear, stats, "new", "old", "ci", None)[0]
    assert decide(unclear, stats, "new", "old", "point", None)[0]
    assert not decide(_match(0.5, 0.3, 0.7), stats, "new", "old", "point", None)[0]
    assert decide(None, stats, "new", "old", "always", None)[0]
    refused, why = decide(clear, stats, "new", "old", "ci", max_conduct_rise=0.2)
    assert not refused and "conduct" in why  # a win that comes with more flags than allowed
    assert decide(clear, stats, "new", "old", "ci", max_conduct_rise=0.5)[0]


def test_evaluate_plays_both_seat_orders_on_held_out_seeds(tmp_path: Path) -> None:
    """Real episodes through the runner: the game's scripted policy (standing in for a better model)
    against random play, which it beats in 86% of 20 paired seeds of the iterated prisoner's dilemma."""
    res = evaluate(
        tmp_path, ["prisoners_dilemma"], {"new": "scripted", "old": "random"}, "new", "old", "old",
        eval_episodes=40, rule="ci", quiet=True,
    )  # fmt: skip
    m = res.match("parent")
    assert m is not None and m.seeds + m.dropped_seeds == 20 and m.episodes + m.aborted == 40
    assert m.win_rate is not None and m.win_rate > 0.7
    assert res.promoted and m.win_rate_ci is not None and m.win_rate_ci.lo > 0.5
    eps = [json.loads(line) for line in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    assert {e["seed"] for e in eps} == set(range(1_000_000, 1_000_020))
    assert {tuple(p["agent"] for p in e["players"]) for e in eps} == {
        ("scripted", "random"),
        ("random", "scripted"),
    }
    elo = {r.agent: r.elo for r in res.ratings.ratings}
    assert elo["new"] > elo["old"]


# --- records -------------------------------------------------------------------------------------------


def _record(i: int, promoted: bool = True) -> LineageRecord:
    ci = Interval(lo=0.4, hi=0.8)
    return LineageRecord(
        iteration=i, parent=ModelRef(path="/m/original.gguf", sha256="a" * 64),
        model=ModelRef(path=f"/m/iter-{i}/model.gguf", sha256="b" * 64), rows=12, yield_per_1k_calls=30.5,
        train=TrainSummary(steps=3, loss=0.69, reward_accuracy=0.5, seconds=100.0),
        eval=EvalSummary(
            episodes=20, win_rate=0.6, win_rate_ci=ci, elo=PerModel(new=1530, parent=1470),
            elo_ci=PerModelInterval(new=Interval(lo=1450, hi=1610), parent=Interval(lo=1390, hi=1550)),
            conduct_per_episode=ConductPerModel(new={"lie": 0.1, "total": 0.1},
                                                parent={"lie": 0.0, "total": 0.0}),
        ),
        promoted=promoted,
    )  # fmt: skip


def test_lineage_line_has_exactly_the_issues_fields(tmp_path: Path) -> None:
    append_lineage(tmp_path, _record(1))
    line = json.loads((tmp_path / LINEAGE).read_text())
    assert list(line) == [
        "iteration", "parent", "model", "rows", "yield_per_1k_calls", "train", "eval", "promoted",
    ]  # fmt: skip
    assert set(line["model"]) == {"path", "sha256"}
    assert set(line["train"]) == {"steps", "loss", "reward_accuracy", "seconds"}
    assert set(line["eval"]) == {
        "episodes",
        "win_rate",
        "win_rate_ci",
        "elo",
        "elo_ci",
        "conduct_per_episode",
    }
    for key in ("elo", "elo_ci", "conduct_per_episode"):
        assert set(line["eval"][key]) == {"new", "parent"}


def test_lineage_survives_a_cut_short_last_line(tmp_path: Path) -> None:
    append_lineage(tmp_path, _record(1))
    with (tmp_path / LINEAGE).open("a") as f:
        f.write('{"iteration": 2, "par')  # a writer killed mid-line
    assert [r.iteration for r in read_lineage(tmp_path)] == [1]
    append_lineage(tmp_path, _record(2))  # ends the partial line first
    assert [r.iteration for r in read_lineage(tmp_path)] == [1, 2]


def test_checkpoints_mark_finished_stages(tmp_path: Path) -> None:
    ck = Checkpoints(tmp_path, 3)
    assert ck.load("train", TrainSummary) is None
    ck.save("train", TrainSummary(steps=2, loss=0.5, reward_accuracy=1.0, seconds=1.0))
    assert ck.load("train", TrainSummary) == TrainSummary(steps=2, loss=0.5, reward_accuracy=1.0, seconds=1.0)
    assert (tmp_path / "iter-3" / "train.json").is_file()
    assert not list((tmp_path / "iter-3").glob(".*tmp"))
    with pytest.raises(ValueError, match="unknown stage"):
        ck.path("deploy")


def test_a_rerun_must_ask_for_the_same_loop(tmp_path: Path) -> None:
    cfg = LoopConfig(games=["ultimatum"], iterations=1, episodes=2, branch=3, decisions=1,
                     opponents=["scripted"], judges="", eval_episodes=4, model="/m/x.gguf")  # fmt: skip
    load_or_save(tmp_path, cfg)
    load_or_save(tmp_path, cfg.model_copy(update={"iterations": 3, "concurrency": 8}))  # may go further
    with pytest.raises(ConfigMismatch, match=r"opponents: \[\"scripted\"\] recorded, \[\"self\"\] now"):
        load_or_save(tmp_path, cfg.model_copy(update={"opponents": ["self"]}))


# --- the curve -------------------------------------------------------------------------------------------


def test_scale_marks_estimate_interval_and_half() -> None:
    line = scale(0.75, Interval(lo=0.6, hi=0.9)).plain
    bar = line[1:-1]
    assert bar[20] == "┊" and bar[30] == "●" and bar[24] == "[" and bar[36] == "]"
    assert scale(None, None).plain.strip("| ") == "┊"


def test_report_draws_the_improvement_curve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    append_lineage(tmp_path, _record(1))
    append_lineage(tmp_path, _record(2, promoted=False))
    points = curve_points(tmp_path)
    assert [p.iteration for p in points] == [1, 2] and points[0].win_rate == 0.6
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Improvement curve" in out and "(40%–80%)" in out and "1530" in out and "[=======●=======]" in out
    png = tmp_path / "improvement.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# --- the yield's denominator ----------------------------------------------------------------------------


def test_collect_counts_every_model_call_the_server_saw(tmp_path: Path) -> None:
    """Rows per 1,000 model calls: the calls counted from the run's records (episodes, candidates,
    rollouts, judge rankings) are exactly the requests the server answered."""
    from rsi_env.improve.collect import CollectPlan, collect
    from rsi_env.testing.fault_server import FaultConfig, FaultServer

    with FaultServer(FaultConfig(seed=5)) as srv:
        profile = tmp_path / "double.yaml"
        profile.write_text(
            f"backend: endpoint\nbase_url: {srv.base_url}\nmodel: double\ndialect: json_schema\n"
            "api_key_env: RSI_ENV_TEST_NO_KEY\n"
        )
        plan = CollectPlan(games=["negotiation"], opponents=["scripted", "self"], episodes=2, branch=3,
                           decisions=1, judges=f"{profile}@0.3", seed=7)  # fmt: skip
        res = collect(tmp_path / "iter", str(profile), plan, quiet=True)
        served = srv.stats()["requests"]
    assert res.model_calls == served > 0
    assert res.rows == len((tmp_path / "iter" / "prefs.jsonl").read_text().splitlines())
    assert res.yield_per_1k_calls == pytest.approx(1000 * res.rows / served)
    assert [(r.opponent, r.sets > 0) for r in res.runs] == [("scripted", True), ("self", True)]
    assert res.sets_with_preference <= res.sets and res.rows >= res.sets_with_preference


class StubbornDouble:
    """Test double for the model: asked the same conversation again and again, it talks the first four
    times (in words that change each time) and proposes the same split from the fifth on."""

    def __init__(self) -> None:
        self.calls = 0
        self.asked: Counter[str] = Counter()

    def __call__(self, body: dict[str, Any]) -> str:
        self.calls += 1
        key = json.dumps(body["messages"])
        self.asked[key] += 1
        if self.asked[key] > 4:
            return json.dumps({"action": "propose", "books": 1, "hats": 0, "balls": 0})
        return json.dumps({"action": "say", "message": f"let us talk ({self.asked[key]})"})


def test_branching_draws_again_until_the_candidates_moves_differ(tmp_path: Path) -> None:
    """The decision's prompt was asked once in the episode; three plain draws would all talk (three
    candidates that play out alike: no preference). Drawing again past repeated moves reaches the
    proposal; the third candidate repeats a move once the extra draws (K) run out: 2K calls per set."""
    from rsi_env.actions import parse_action
    from rsi_env.prefs.__main__ import main as prefs_main
    from rsi_env.prefs.candidates import read_sets
    from rsi_env.testing.fault_server import FaultConfig, FaultServer

    double = StubbornDouble()
    with FaultServer(FaultConfig(seed=1), responder=double) as srv:
        code = prefs_main([
            "generate", "--game", "negotiation", "--agents", "local,scripted", "--episodes", "2",
            "--branch", "3", "--decisions", "2", "--judges", "", "--meta-judge", "", "--rubric", "",
            "--out", str(tmp_path), "--base-url", srv.base_url, "--model", "double", "--quiet",
        ])  # fmt: skip
    assert code == 0
    sets = read_sets(tmp_path)
    assert sets
    for bs in sets:
        moves = [parse_action(c.raw, ["say", "propose"]).name for c in bs.candidates]
        assert len(moves) == 3 and set(moves) == {"say", "propose"}
    for bs in sets:  # the decision's prompt: once in the episode, then 2K draws, all recorded
        assert double.asked[json.dumps([m.model_dump() for m in bs.prompt])] == 1 + 6 == 1 + bs.draws


def test_a_serve_cmd_server_is_started_checked_and_stopped(tmp_path: Path) -> None:
    """`--serve-cmd` with the fault server (a real OpenAI-compatible server on loopback) as the
    command: the loop fills in {port}, waits for GET /v1/models, and stops the process group."""
    import sys
    import urllib.request

    from rsi_env.improve.serve import CommandServer, ModelNode, ServeError

    node = ModelNode(name="m", checkpoint=str(tmp_path))
    server = CommandServer(f"{sys.executable} -m rsi_env.testing.fault_server --port {{port}}", node,
                           tmp_path / "m.log", startup_timeout_s=60)  # fmt: skip
    base = server.start()
    try:
        assert base == f"http://127.0.0.1:{server.port}/v1"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{base}/models", timeout=5) as resp:
            assert resp.status == 200
        proc = server._proc
        assert proc is not None and proc.poll() is None
    finally:
        server.stop()
    assert proc.poll() is not None  # stopped, not left behind

    dies = CommandServer(f"{sys.executable} -c 'raise SystemExit(3)'", node, tmp_path / "d.log")
    with pytest.raises(ServeError, match="exited with code 3 while starting"):
        dies.start()
    with pytest.raises(ServeError, match=r"cannot fill in .*placeholders: \{checkpoint\}"):
        CommandServer("serve {nope}", node, tmp_path / "x.log").start()
