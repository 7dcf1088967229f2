"""The referee extension point (`rsi_env/referees/base.py`), and the README's "Adding a referee"
followed literally: its module saved in a temporary folder, named to `play --referee`, its verdicts
checked against the recorded events and shown by `report`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rsi_env.agents.baseline import ScriptedAgent
from rsi_env.catalog import load_game
from rsi_env.referees.base import ProceduralReferee, Referee, RefereeError, Scores, load_referee
from rsi_env.referees.panel import PROCEDURAL, RubricJudge, missing_verdicts, score_episodes
from rsi_env.runner import EpisodeJob, play_episode
from rsi_env.spec import GameSpec
from rsi_env.trajectory import DimensionScore, Episode, Verdict

REPO = Path(__file__).resolve().parents[1]


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"### {title}\n")
    return text[start : text.index("\n## ", start)]


class ScriptedFactoryDouble:
    """Test double of AgentFactory: the game's scripted policy in every seat."""

    def __init__(self, spec: GameSpec) -> None:
        self.spec = spec

    def build(self, name: str, player: str, seed: int) -> ScriptedAgent:
        return ScriptedAgent(self.spec, seed)


def played(game: str, seed: int = 0) -> tuple[Episode, GameSpec]:
    spec = load_game(game)
    n = spec.players.default or spec.players.min
    job = EpisodeJob(episode_id=f"{game}-s{seed}", game=game, seed=seed, n_players=n, agents=["scripted"] * n)
    return asyncio.run(play_episode(job, spec, ScriptedFactoryDouble(spec))), spec  # type: ignore[arg-type]


class Turns(ProceduralReferee):
    id = "turns"
    rubric = "turns"

    def scores(self, ep: Episode, spec: GameSpec) -> Scores:
        return {
            p.player: {"turns": DimensionScore(score=sum(t.player == p.player for t in ep.turns))}
            for p in ep.players
        }


class FailingJudgeDouble(Referee):
    """Test double of an LLM evaluator whose model call failed."""

    id = "failing-double"
    rubric = "ethics"

    async def score(self, ep: Episode, spec: GameSpec) -> Verdict:
        return Verdict(judge=self.id, rubric=self.rubric, status="timeout", error="test double")


def test_every_referee_adds_its_verdict_once() -> None:
    ep, spec = played("negotiation")
    referees = [Turns(), FailingJudgeDouble()]
    asyncio.run(score_episodes([ep], spec, [], None, referees=referees))
    assert [(v.judge, v.rubric) for v in ep.verdicts] == [
        ("procedural", "procedural"), ("turns", "turns"), ("failing-double", "ethics")
    ]  # fmt: skip
    mine = {p: d["turns"].score for p, d in ep.verdicts[1].scores.items()}
    assert mine == {p.player: sum(t.player == p.player for t in ep.turns) for p in ep.players}
    assert ep.verdicts[2].status == "timeout" and ep.verdicts[2].scores == {}
    assert not missing_verdicts(ep, [], None, referees)
    asyncio.run(score_episodes([ep], spec, [], None, referees=referees))  # a rerun adds nothing
    assert len(ep.verdicts) == 3


def test_an_aborted_episode_gets_only_procedural_verdicts() -> None:
    ep, spec = played("negotiation")
    ep.status, ep.payoffs = "aborted", None
    asyncio.run(score_episodes([ep], spec, [], None, referees=[Turns(), FailingJudgeDouble()]))
    assert [v.judge for v in ep.verdicts] == ["procedural", "turns"]


def test_the_built_in_referees_share_the_base_class() -> None:
    assert isinstance(PROCEDURAL, ProceduralReferee) and PROCEDURAL.kind == "procedural"
    assert issubclass(RubricJudge, Referee) and RubricJudge.kind == "llm"


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("no_colon", "expected MODULE:CLASS"),
        ("no_such_module_xyz:Talk", "ModuleNotFoundError"),
        ("rsi_env.trajectory:Episode", "building it failed"),
        ("json:dumps", "not a Referee"),
    ],
)
def test_a_bad_referee_is_one_clear_message(target: str, why: str) -> None:
    with pytest.raises(RefereeError, match=why):
        load_referee(target)


def test_the_readme_referee_scores_a_play_run_and_shows_in_the_report(tmp_path: Path) -> None:
    section = readme_section("Adding a referee")
    (module,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    (tmp_path / "my_referee.py").write_text(module, encoding="utf-8")
    play_line, report_line = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)[0].strip().splitlines()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def run(line: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, *shlex.split(line)[1:]]
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    played_run = run(play_line + " --quiet")
    assert played_run.returncode == 0, played_run.stdout[-2000:] + played_run.stderr[-2000:]
    lines = (tmp_path / "runs" / "talk" / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()
    episodes = [Episode.model_validate_json(line) for line in lines]
    assert len(episodes) == 4
    said_any = False
    for ep in episodes:
        (talk,) = [v for v in ep.verdicts if v.judge == "talk"]
        assert talk.kind == "procedural" and talk.rubric == "talk"
        for p in ep.players:  # recomputed here from the events, not taken from the referee
            messages = [
                e.message for e in ep.events if e.kind == "action" and e.player == p.player and e.message
            ]
            said_any = said_any or bool(messages)
            assert talk.scores[p.player]["messages"].score == len(messages)
            assert talk.scores[p.player]["words"].score == sum(len(m.split()) for m in messages)
    assert said_any, "the scripted negotiators say something"

    reported = run(report_line + " --json")
    assert reported.returncode == 0, reported.stderr[-2000:]
    report = json.loads(reported.stdout)
    agents = {a["agent"]: a for g in report["games"] for a in g["agents"]}
    assert all({"talk.messages", "talk.words"} <= set(a["referee"]) for a in agents.values())
    shown = run(report_line)
    assert "talk.messages" in shown.stdout and "talk.words" in shown.stdout


def test_a_bad_referee_stops_play_before_anything_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "rsi_env.play", "--agents", "scripted", "--referee", "nowhere:Nothing",
         "--out", str(tmp_path / "out"), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "--referee nowhere:Nothing" in done.stderr
    assert not (tmp_path / "out" / "trajectories.jsonl").exists()
