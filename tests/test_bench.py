"""The judge benchmark: the labelled set, the figures it gives judges of known error rates, the panel
comparison, resuming, the CLI (through a real HTTP server) and the report.

Judges here are test doubles behind the `Chat` protocol (`JudgeDouble`): each knows the right answer
of every case and errs at a rate the test sets, so the benchmark's figures can be checked against
what is known about them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rsi_env.agents.baseline import RandomAgent, ScriptedAgent
from rsi_env.agents.profiles import AgentProfile
from rsi_env.catalog import load_game
from rsi_env.env import GameParallelEnv
from rsi_env.llm import CallRecord, CallStatus, ChatResult, Sampling
from rsi_env.referees.aggregate import consensus
from rsi_env.referees.bench import ANSWERS, REPORT, BenchReport, build_report, read_report, run_bench, vote
from rsi_env.referees.bench_cases import (
    KINDS,
    TAGS,
    BenchCase,
    BenchSetError,
    cases_from_episodes,
    default_set_dir,
    load_cases,
    select,
    units,
)
from rsi_env.referees.bench_metrics import BenchScores, wilson
from rsi_env.referees.judge import LLMJudge
from rsi_env.runner import continue_episode, new_episode
from rsi_env.testing.fault_server import FaultConfig, FaultServer
from rsi_env.trajectory import Episode

REPO = Path(__file__).resolve().parents[1]
CASES = load_cases()
_PAIR = re.compile(
    r"FIRST \(candidate (?P<a>[^)]+)\):\n(?P<ta>.*)\n\nSECOND \(candidate (?P<b>[^)]+)\):\n(?P<tb>.*)\Z", re.S
)


def _key(context: str, candidates: set[tuple[str, str]]) -> str:
    """What identifies a case in a prompt: its context and its two (id, text) candidates."""
    parts = [context.strip(), *(f"{i}\x01{t}" for i, t in sorted(candidates))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


SOME = select(CASES, n=110)  # every kind, for the tests that need no particular kind (assess is slow)
RECORDS = [c for c in CASES if c.about == "records"]  # the cases with a length ratio
PAYOFF = [c for c in CASES if c.kind == "payoff"]  # the cases in triads
TRUTH = {_key(c.context, {(x.id, x.text) for x in c.candidates}): c.truth for c in CASES}
assert len(TRUTH) == len(CASES)


class JudgeDouble:
    """Test double: a judge that knows every case's answer and errs at known rates.

    Per call (each order and seed is its own draw, seeded by the prompt): with probability
    `first_bias` it picks whichever candidate is shown first, else with `longer_bias` the longer one,
    else the right one with probability `accuracy` (the wrong one otherwise); `fail_rate` of calls
    fail with `invalid_output`. `seeded=False` ignores the sampling seed (a deterministic judge);
    `consistent=True` draws once per case, not per order (the same answer in both orders)."""

    def __init__(
        self,
        accuracy: float = 1.0,
        *,
        first_bias: float = 0.0,
        longer_bias: float = 0.0,
        fail_rate: float = 0.0,
        seed: int = 0,
        seeded: bool = True,
        consistent: bool = False,
    ) -> None:
        self.accuracy, self.first_bias, self.longer_bias = accuracy, first_bias, longer_bias
        self.fail_rate, self.seed, self.seeded, self.consistent = fail_rate, seed, seeded, consistent
        self.calls = 0

    def answer(self, user: str, sample_seed: int | None) -> dict[str, str] | None:
        self.calls += 1
        body = user.split(">>>\n", 1)[1].rsplit("\n<<<END RECORD", 1)[0]
        at = body.index("FIRST (candidate ")
        m = _PAIR.match(body[at:])
        assert m, body[at : at + 200]
        case = _key(body[:at], {(m["a"], m["ta"]), (m["b"], m["tb"])})
        truth = TRUTH[case]
        seed = f"{self.seed}|{sample_seed if self.seeded else ''}|{case if self.consistent else user}"
        rng = random.Random(hashlib.sha256(seed.encode()).digest())
        if rng.random() < self.fail_rate:
            return None
        r = rng.random()
        if r < self.first_bias:
            pick = m["a"]
        elif r < self.first_bias + self.longer_bias:
            pick = m["a"] if len(m["ta"]) >= len(m["tb"]) else m["b"]
        else:
            right = rng.random() < self.accuracy
            pick = truth if right else ({m["a"], m["b"]} - {truth}).pop()
        return {"reasoning": "test double", "better": "first" if pick == m["a"] else "second"}

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        schema_name: str = "response",
        sampling: Sampling | None = None,
    ) -> ChatResult:
        got = self.answer(messages[-1]["content"], sampling.seed if sampling else None)
        if got is None:
            return ChatResult(record=CallRecord(status=CallStatus.INVALID_OUTPUT, error="test double failed"))
        return ChatResult(text=json.dumps(got), parsed=got, record=CallRecord(status=CallStatus.OK))

    async def aclose(self) -> None:
        pass

    def responder(self, body: dict[str, Any]) -> str:
        """The same double as a fault-server responder (over real HTTP)."""
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        got = self.answer(user, body.get("seed"))
        return json.dumps(got) if got is not None else "not json"


def judge(name: str, double: JudgeDouble, temperature: float = 0.7, seed: int | None = 1) -> LLMJudge:
    return LLMJudge(AgentProfile(name=name), double, temperature, seed)  # type: ignore[arg-type]


def bench(
    tmp: Path, judges: list[LLMJudge], cases: list[BenchCase] = CASES, resamples: int = 1
) -> BenchReport:
    return asyncio.run(run_bench(judges, cases, tmp, resamples=resamples, concurrency=16))


def by_name(report: BenchReport) -> dict[str, BenchScores]:
    return {s.name: s for s in [*report.judges, *report.panels]}


# --- the labelled set ------------------------------------------------------------------------------------


def test_the_shipped_set_covers_every_kind_and_hard_negative() -> None:
    assert {c.kind for c in CASES} == set(KINDS)
    assert 150 <= len(CASES) <= 400  # a few hundred: small enough to run, big enough for intervals
    tags = {t for c in CASES for t in c.tags}
    assert tags == set(TAGS)
    triads = [u for u in units(CASES) if len(u) == 3]
    assert len(triads) >= 10 and all(len({c.group for c in u}) == 1 for u in triads)
    # the truth is not where the file puts it: either side holds the right candidate about equally
    first = sum(c.candidates[0].id == c.truth for c in CASES) / len(CASES)
    assert 0.35 < first < 0.65
    # length says nothing about the truth over the set: the right record is longer about half the time
    ratios = [r for c in CASES if (r := c.length_ratio()) is not None and abs(r) > 0.2]
    assert len(ratios) >= 40 and 0.3 < np.mean([r > 0 for r in ratios]) < 0.7
    # a payoff case's truth is its higher payoff; a message case's detector flag is recorded
    for c in CASES:
        if c.kind == "payoff":
            assert c.values is not None and c.values[c.truth] == max(c.values.values())
        if c.kind == "addressed":
            assert c.detected is not None
    # the judges addressed in other words: the manipulation check reads them too (issue 17)
    assert all(c.detected for c in CASES if "paraphrase" in c.tags)


def test_the_set_is_rebuilt_identically_from_its_seeds(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import build_judge_bench
    finally:
        sys.path.pop(0)
    # The whole set, manifest included, byte for byte (about 10 s of CPU): a change to the engine, the
    # transcript or the scripted players that alters a case fails here, not in a judge's figures.
    assert build_judge_bench.main(["--out", str(tmp_path)]) == 0
    shipped = sorted(p.name for p in default_set_dir().iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == shipped
    assert set(shipped) == {*(f"{k}.jsonl" for k in KINDS), "manifest.json"}
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (default_set_dir() / name).read_bytes(), name
    assert [c.model_dump() for c in load_cases([tmp_path])] == [c.model_dump() for c in CASES]


def test_select_takes_whole_triads_spread_over_kinds() -> None:
    got = select(CASES, n=40)
    assert len(got) <= 40 and {c.kind for c in got} == set(KINDS)
    groups = {c.group for c in got if c.group}
    assert all(sum(c.group == g for c in got) == 3 for g in groups)
    assert select(CASES, n=40) == got  # the same 40 for every judge
    assert {c.game for c in select(CASES, games=["trust"])} == {"trust"}


def test_a_bad_case_file_is_one_clear_error(tmp_path: Path) -> None:
    good = default_set_dir() / "lie.jsonl"
    bad = tmp_path / "bad.jsonl"
    line = json.loads(good.read_text().splitlines()[0])
    line["truth"] = "nobody"
    bad.write_text(good.read_text().splitlines()[1] + "\n" + json.dumps(line) + "\n")
    with pytest.raises(BenchSetError, match=r"bad\.jsonl:2: .*truth 'nobody' is not a candidate"):
        load_cases([bad])
    with pytest.raises(BenchSetError, match="no such file"):
        load_cases([tmp_path / "missing.jsonl"])


# --- figures from judges of known error rates -------------------------------------------------------------


def test_the_bench_recovers_each_doubles_accuracy_within_its_interval(tmp_path: Path) -> None:
    rates = {"good_double": 0.9, "fair_double": 0.7, "coin_double": 0.5}
    judges = [judge(n, JudgeDouble(a, seed=i)) for i, (n, a) in enumerate(rates.items())]
    report = bench(tmp_path, judges, SOME, resamples=0)
    for name, acc in rates.items():
        s = by_name(report)[f"{name}@t0.7#1"]
        assert s.answered == len(SOME) and s.failed == {}
        assert s.accuracy.low is not None and s.accuracy.high is not None
        assert s.accuracy.low <= acc <= s.accuracy.high, (name, s.accuracy)
        # errors independent per order: the orders agree with probability a² + (1 − a)²
        agree = acc**2 + (1 - acc) ** 2
        pc = s.position_consistency
        assert abs(pc.value - agree) < 3 * (agree * (1 - agree) / pc.n) ** 0.5, (name, pc)  # 3 sigma
    assert (
        by_name(report)["good_double@t0.7#1"].accuracy.low
        > by_name(report)["coin_double@t0.7#1"].accuracy.high
    )


def test_a_position_biased_double_shows_low_position_consistency(tmp_path: Path) -> None:
    judges = [
        judge("biased_double", JudgeDouble(0.9, first_bias=0.8)),
        judge("fair_double", JudgeDouble(0.9)),
    ]
    s = by_name(bench(tmp_path, judges, SOME, resamples=0))
    biased, fair = s["biased_double@t0.7#1"], s["fair_double@t0.7#1"]
    assert biased.position_consistency.value < 0.35 < 0.75 < fair.position_consistency.value
    assert biased.first_shown.value > 0.85 and abs(fair.first_shown.value - 0.5) < 0.1


def test_a_length_biased_double_shows_the_length_bias(tmp_path: Path) -> None:
    judges = [
        judge("long_double", JudgeDouble(0.9, longer_bias=0.6)),
        judge("plain_double", JudgeDouble(0.9)),
    ]
    s = by_name(bench(tmp_path, judges, RECORDS, resamples=0))
    long, plain = s["long_double@t0.7#1"].length_bias, s["plain_double@t0.7#1"].length_bias
    assert long.n >= 80 and long.low is not None and long.low > 0.2
    assert plain.value is not None and abs(plain.value) < 3 / plain.n**0.5  # no bias: r within 3 sigma of 0
    # the hard negative shows it too: the long but worse record fools the long double
    assert (
        s["long_double@t0.7#1"].by_tag["long_worse"].value
        < 0.5
        < s["plain_double@t0.7#1"].by_tag["long_worse"].value
    )


def test_self_consistency_and_cycles(tmp_path: Path) -> None:
    judges = [
        judge("noisy_double", JudgeDouble(0.7)),
        judge("steady_double", JudgeDouble(0.7, seeded=False)),  # the same answer at any seed
        judge("perfect_double", JudgeDouble(1.0)),
        judge("coin_double", JudgeDouble(0.5, consistent=True)),  # strict random decisions: cycles
    ]
    s = by_name(bench(tmp_path, judges, PAYOFF, resamples=2))
    assert s["steady_double@t0.7#1"].self_consistency.value == 1.0
    report = read_report(tmp_path / REPORT)
    # two judges right 70% and 100% of the time, independently, agree 70% of the time
    both = report.agreement["noisy_double@t0.7#1"]["perfect_double@t0.7#1"]
    assert both.low <= 0.7 <= both.high and both.n == 2 * len(PAYOFF)
    noisy = s["noisy_double@t0.7#1"].self_consistency
    assert noisy.low <= 0.7**2 + 0.3**2 <= noisy.high and noisy.n == 2 * 2 * len(PAYOFF)
    perfect = s["perfect_double@t0.7#1"]
    assert perfect.accuracy.value == 1.0 and perfect.cycles == 0 and perfect.triads == 16
    assert perfect.injection_resistance.value == 1.0 and perfect.injection_resistance.n >= 10
    coin = s["coin_double@t0.7#1"]
    assert coin.position_consistency.value == 1.0 and coin.triads == 16
    assert 0 < coin.cycles < 16  # a random tournament of three is a cycle one time in four


def test_the_weighted_panel_of_one_good_and_two_noisy_doubles_beats_the_unweighted_mean(
    tmp_path: Path,
) -> None:
    judges = [
        judge("good_double", JudgeDouble(0.9, seed=1)),
        judge("noisy_a_double", JudgeDouble(0.55, seed=2)),
        judge("noisy_b_double", JudgeDouble(0.55, seed=3)),
    ]
    report = bench(tmp_path, judges, SOME, resamples=0)
    s = by_name(report)
    weighted, mean = s["panel: meta-weighted"].accuracy, s["panel: unweighted mean"].accuracy
    best = s["best single judge"].accuracy
    assert weighted.value > mean.value + 0.08, (weighted, mean)
    assert set(report.best_judge.values()) == {"good_double@t0.7#1"}
    assert abs(best.value - s["good_double@t0.7#1"].accuracy.value) < 1e-9
    for w in report.fold_weights.values():
        assert w["good_double@t0.7#1"] > w["noisy_a_double@t0.7#1"] + w["noisy_b_double@t0.7#1"]


def test_a_vote_is_the_sign_of_the_weighted_bradley_terry_consensus() -> None:
    rng = np.random.default_rng(0)
    case = CASES[0]
    a, b = (x.id for x in case.candidates)
    for _ in range(30):
        picks = {f"j{i}": {case.id: {(0, 0): str(rng.choice([a, b, "tie"]))}} for i in range(3)}
        weights = {f"j{i}": float(rng.random()) for i in range(3)}
        got = vote(case, picks, weights)[(0, 0)]  # type: ignore[arg-type]
        said = [picks[j][case.id][(0, 0)] for j in weights]
        maps = [{a: 0.5, b: 0.5} if p == "tie" else {a: float(p == a), b: float(p == b)} for p in said]
        strength = consensus(maps, list(weights.values()))
        expected = a if strength[a] > strength[b] + 1e-6 else b if strength[b] > strength[a] + 1e-6 else "tie"
        assert got == expected


# --- failures, resuming, the files ---------------------------------------------------------------------


def test_failed_calls_are_counted_by_status_never_scored_wrong(tmp_path: Path) -> None:
    cases = select(CASES, n=24)
    judges = [
        judge("flaky_double", JudgeDouble(1.0, fail_rate=0.3)),
        judge("dead_double", JudgeDouble(fail_rate=1.0)),
    ]
    s = by_name(bench(tmp_path, judges, cases, resamples=0))
    flaky, dead = s["flaky_double@t0.7#1"], s["dead_double@t0.7#1"]
    assert flaky.accuracy.value == 1.0 and 0 < flaky.failed["invalid_output"] < 2 * len(cases)
    assert (
        dead.answered == 0
        and dead.accuracy.value is None
        and dead.failed == {"invalid_output": 2 * len(cases)}
    )
    # the dead judge is missing from the panel's vote, not a vote for the wrong side
    assert s["panel: unweighted mean"].accuracy.value == 1.0


def test_a_rerun_asks_only_what_is_missing_or_failed(tmp_path: Path) -> None:
    cases = select(CASES, n=12)
    first = JudgeDouble(1.0, fail_rate=0.3)
    report = bench(tmp_path, [judge("j_double", first)], cases)
    failed = report.judges[0].failed.get("invalid_output", 0)
    assert first.calls == 2 * 2 * len(cases) and failed > 0
    lines = (tmp_path / ANSWERS).read_text().splitlines()
    (tmp_path / ANSWERS).write_text("\n".join(lines) + '\n{"judge": "cut sh')  # an interrupted write
    again = JudgeDouble(1.0)
    report = bench(tmp_path, [judge("j_double", again)], cases)
    assert again.calls == failed
    assert report.judges[0].failed == {} and report.judges[0].accuracy.value == 1.0
    assert any("unreadable" in n for n in report.notes)
    assert read_report(tmp_path / REPORT) == report


def test_build_report_needs_no_model_and_one_judge_has_no_panel() -> None:
    report = build_report(["only"], CASES[:6], [])
    assert report.judges[0].answered == 0 and report.panels == []
    assert "one judge" in report.notes[0]


def test_wilson_interval() -> None:
    lo, hi = wilson(90, 100)
    assert 0.82 < lo < 0.83 and 0.94 < hi < 0.95
    assert wilson(0, 0) == (0.0, 1.0)


# --- the command line (a real HTTP server) and the report ----------------------------------------------


def _cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rsi_env.referees", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_the_cli_benches_judges_behind_a_real_http_server(tmp_path: Path) -> None:
    double = JudgeDouble(1.0)
    with FaultServer(FaultConfig(seed=1), responder=double.responder) as srv:
        done = _cli(
            "bench", "--judges", "llamacpp@0.2,llamacpp@1.0#3", "--n", "12", "--resamples", "0",
            "--base-url", srv.base_url, "--model", "double", "--out", str(tmp_path), "--quiet",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = read_report(tmp_path / REPORT)
    assert [s.name for s in report.judges] == ["llamacpp@t0.2", "llamacpp@t1#3"]
    assert all(s.accuracy.value == 1.0 and s.answered == 12 for s in report.judges)
    assert (
        len(report.panels) == 3 and "Judge benchmark" in done.stdout and "injection resisted" in done.stdout
    )
    shown = subprocess.run(
        [sys.executable, "-m", "rsi_env.report", str(tmp_path)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "Judge benchmark" in shown.stdout and "llamacpp@t0.2" in shown.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "rsi_env.report", str(tmp_path), "--json"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert json.loads(as_json.stdout)["judge_bench"][str(tmp_path)]["digest"] == report.digest


def test_the_key_named_by_api_key_env_is_the_one_sent(tmp_path: Path) -> None:
    """--api-key-env, like every model command's: the variable's value goes to the endpoint as the key;
    a variable that is not set is one clear error before any call."""
    double = JudgeDouble(1.0)
    with FaultServer(FaultConfig(seed=1), responder=double.responder) as srv:
        done = _cli(
            "bench", "--judges", "openai", "--n", "2", "--resamples", "0", "--base-url", srv.base_url,
            "--model", "double", "--api-key-env", "RSI_TEST_BENCH_KEY", "--out", str(tmp_path), "--quiet",
            env={"RSI_TEST_BENCH_KEY": "sk-bench-test", "OPENAI_API_KEY": "sk-not-this-one"},
        )  # fmt: skip
        sent = dict(srv.authorizations)
    assert done.returncode == 0, done.stderr
    assert sent == {"Bearer sk-bench-test": 4}  # 2 cases x 2 orders, all with the named key
    assert read_report(tmp_path / REPORT).judges[0].answered == 2
    env = {k: v for k, v in os.environ.items() if k != "RSI_TEST_BENCH_KEY"}
    missing = subprocess.run(
        [sys.executable, "-m", "rsi_env.referees", "bench", "--judges", "openai", "--base-url",
         "http://127.0.0.1:9/v1", "--api-key-env", "RSI_TEST_BENCH_KEY", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert missing.returncode == 2 and "RSI_TEST_BENCH_KEY" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "o").exists()


def _recorded_run(run: Path) -> list[Episode]:
    """Ultimatum and trust episodes of a few seeds by scripted and random seats, written as a run."""
    eps = []
    for game in ("ultimatum", "trust"):
        spec = load_game(game)
        for seed in range(4):
            for k, seats in enumerate(
                [("scripted", "scripted"), ("random", "scripted"), ("random", "random")]
            ):
                env = GameParallelEnv(spec)
                env.reset(seed=seed)
                agents: dict[str, Any] = {
                    p: ScriptedAgent(spec, seed) if kind == "scripted" else RandomAgent(seed * 10 + i)
                    for i, (p, kind) in enumerate(zip(env.possible_agents, seats, strict=True))
                }
                ep = new_episode(f"{game}-{seed}-{k}", "rec", spec, env, list(seats), agents, seed)
                eps.append(asyncio.run(continue_episode(ep, env, agents)))
    run.mkdir()
    (run / "trajectories.jsonl").write_text("".join(ep.model_dump_json() + "\n" for ep in eps))
    return eps


def test_cases_from_a_recorded_run_through_the_cli(tmp_path: Path) -> None:
    eps = _recorded_run(tmp_path / "run")
    cases = cases_from_episodes(eps)
    assert {c.kind for c in cases} == {"payoff", "promise"}
    by_id = {ep.episode_id: ep for ep in eps}
    for c in cases:
        if c.kind == "payoff":
            assert c.values is not None and c.values[c.truth] == max(c.values.values())
        else:  # the right record is the one without a broken promise
            right, wrong = (by_id[x.split(" ")[0]] for x in c.source.split("; ")[::-1])
            assert not any(f.kind == "broken_promise" for f in right.flags)
            assert any(f.kind == "broken_promise" for f in wrong.flags)
    with FaultServer(FaultConfig(seed=2)) as srv:  # random valid answers: a coin-flipping judge
        done = _cli(
            "bench", "--episodes", str(tmp_path / "run"), "--judges", "llamacpp", "--resamples", "0",
            "--base-url", srv.base_url, "--out", str(tmp_path / "out"), "--quiet",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = read_report(tmp_path / "out" / REPORT)
    assert report.cases == len(cases) and report.sources == [str(tmp_path / "run")]
    assert report.judges[0].answered == len(cases)


def test_report_shows_the_bench_beside_a_runs_ratings(tmp_path: Path) -> None:
    """`report RUN BENCH` and a bench written into the run's own folder: ratings and judge tables."""
    _recorded_run(tmp_path / "run")
    judges = [judge("good_double", JudgeDouble(0.9)), judge("coin_double", JudgeDouble(0.5))]
    report = bench(tmp_path / "bench", judges, select(CASES, n=12), resamples=0)

    def shown(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rsi_env.report", *args], capture_output=True, text=True, timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip

    for where in ([str(tmp_path / "run"), str(tmp_path / "bench")], [str(tmp_path / "run")]):
        if len(where) == 1:  # the same bench, now inside the run folder
            (tmp_path / "run" / REPORT).write_bytes((tmp_path / "bench" / REPORT).read_bytes())
        text = shown(*where)
        assert text.returncode == 0, text.stderr
        out = text.stdout
        assert "Ratings, " in out and "Judge benchmark: 12 labelled cases" in out, out[-2000:]
        assert out.index("Ratings, ") < out.index("Judge benchmark")  # the judges' figures follow
        assert "good_double@t0.7#1" in out and "panel: meta-weighted" in out
        data = json.loads(shown(*where, "--json").stdout)
        assert data["ratings"][0]["ratings"] and data["episodes"] == 24
        (bench_json,) = data["judge_bench"].values()
        assert bench_json["digest"] == report.digest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--games", "chess"], "--games: no cases of chess"),
        (["--kinds", "poetry"], "--kinds: unknown poetry"),
        (["--n", "0"], "--n: expected a whole number >= 1"),
        (["--cases", "/nonexistent.jsonl"], "no such file"),
        (["--judges", "random"], "built-in agent without a model"),
    ],
)
def test_bad_input_is_one_clear_message_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = _cli("bench", "--out", str(tmp_path / "o"), *args, "--base-url", "http://127.0.0.1:9/v1")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_the_embedded_model_benches_end_to_end(tmp_path: Path) -> None:
    """SmolLM2-135M as two judges on three cases (one record each, the shortest prompts), asked in both
    orders at two seeds: 24 calls. Any accuracy; every figure exists."""
    done = _cli(
        "bench", "--judges", "local@0.2,local@1.0#7", "--kinds", "addressed", "--n", "3", "--resamples", "1",
        "--out", str(tmp_path), "--quiet", timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = read_report(tmp_path / REPORT)
    for s in report.judges:
        assert s.answered > 0 and s.accuracy.value is not None and s.position_consistency.n > 0
        assert s.self_consistency.n > 0
    assert {p.name for p in report.panels} == {
        "panel: meta-weighted",
        "panel: unweighted mean",
        "best single judge",
    }
