"""Each episode once in `trajectories.jsonl`, whoever writes it, and resume that never mistakes one
model's episodes for another's; resume and report stream the file instead of holding it.

- Two identical `play` commands into one `--out` at the same time: every episode in the file once.
- A rerun into the same `--out` with another model, or other sampling, plays its own episodes.
- Resuming from, and reporting on, a file of tens of MB holds a small part of it in memory.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from rsi_env.agents.factory import AgentFactory
from rsi_env.catalog import load_game
from rsi_env.runner import EpisodeJob, Runner
from rsi_env.testing.fault_server import FaultConfig, FaultServer
from rsi_env.trajectory import Episode, Turn
from rsi_env.trajectory_store import TrajectoryWriter, resolve_path

from .test_runner import GAME, MODEL, REPO, raw_lines, write_profile


def play_cmd(agent: str, out: Path, base_url: str, episodes: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "rsi_env.play", "--game", GAME, "--agents", agent, "--episodes", str(episodes),
        "--out", str(out), "--concurrency", "8", "--quiet", "--base-url", base_url, *extra,
    ]  # fmt: skip


def test_two_identical_runs_at_once_write_each_episode_once(tmp_path: Path) -> None:
    with FaultServer(FaultConfig(latency_s=0.02)) as srv:
        agent = write_profile(tmp_path, srv.base_url)
        out = tmp_path / "run"
        cmd = play_cmd(agent, out, srv.base_url, 24, "--model", MODEL)
        procs = [
            subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in "ab"
        ]
        results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    ids = Counter(d["episode_id"] for d in raw_lines(out))
    assert len(ids) == 24 and set(ids.values()) == {1}, f"duplicated: {[i for i, n in ids.items() if n > 1]}"


def test_a_rerun_with_another_model_or_sampling_plays_its_own_episodes(tmp_path: Path) -> None:
    with FaultServer(FaultConfig(latency_s=0.005)) as srv:
        agent = write_profile(tmp_path, srv.base_url)
        out = tmp_path / "run"
        first = subprocess.run(play_cmd(agent, out, srv.base_url, 3, "--model", "model-a"), cwd=REPO,
                               capture_output=True, timeout=120)  # fmt: skip
        assert first.returncode == 0, first.stderr.decode()[-2000:]
        again = subprocess.run(play_cmd(agent, out, srv.base_url, 3, "--model", "model-a"), cwd=REPO,
                               capture_output=True, timeout=120)  # fmt: skip
        assert "0 episode(s) played" in again.stdout.decode(), "the same command resumes"
        other = subprocess.run(play_cmd(agent, out, srv.base_url, 3, "--model", "model-b"), cwd=REPO,
                               capture_output=True, timeout=120)  # fmt: skip
        assert other.returncode == 0 and "3 episode(s) played" in other.stdout.decode()
        # The same profile name with other sampling is another player too.
        profile = yaml.safe_load(Path(agent).read_text())
        profile["sampling"]["temperature"] = 0.1
        Path(agent).write_text(yaml.safe_dump(profile))
        cooler = subprocess.run(play_cmd(agent, out, srv.base_url, 3, "--model", "model-b"), cwd=REPO,
                                capture_output=True, timeout=120)  # fmt: skip
        assert cooler.returncode == 0 and "3 episode(s) played" in cooler.stdout.decode()
    lines = raw_lines(out)
    assert len(lines) == len({d["episode_id"] for d in lines}) == 9
    models = Counter(d["players"][0]["model"] for d in lines)
    assert models == {"model-a": 3, "model-b": 6}


def _big_file(path: Path, episodes: int, observation_kb: int) -> list[EpisodeJob]:
    """A trajectory file of `episodes` finished episodes with one huge observation each."""
    big = "x" * (observation_kb * 1024)
    jobs = []
    with TrajectoryWriter(path) as w:
        for i in range(episodes):
            turn = Turn(tick=0, turn=0, phase="p", player="player_0", observation=big, raw="{}", valid=False)
            w.write(
                Episode(
                    episode_id=f"{GAME}-big-s{i}",
                    game=GAME,
                    spec_hash="h",
                    seed=i,
                    n_players=0,
                    players=[],
                    turns=[turn],
                    status="complete",
                    payoffs={},
                )
            )
            jobs.append(EpisodeJob(episode_id=f"{GAME}-big-s{i}", game=GAME, seed=i, n_players=2, agents=[]))
    return jobs


def _peak_mb(fn: object) -> float:
    tracemalloc.start()
    try:
        fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_resume_and_report_stream_the_file(tmp_path: Path) -> None:
    """A 32 MB file (64 episodes of 512 kB): resuming from it (every episode done) and building the
    report from it each peak at a few MB, not the size of the file."""
    from rsi_env.report import build_report, load_runs

    path = resolve_path(tmp_path)
    jobs = _big_file(path, 64, 512)
    size_mb = path.stat().st_size / 2**20
    assert size_mb > 30
    spec = load_game(GAME)

    def rerun() -> None:
        stats = asyncio.run(Runner(spec, AgentFactory(["random"], spec), tmp_path, progress=False).run(jobs))
        assert stats.skipped == 64 and stats.done == 0

    def report() -> None:
        episodes, _ = load_runs([tmp_path])
        assert build_report([tmp_path], episodes).episodes == 64

    for name, fn in (("resume", rerun), ("report", report)):
        peak = _peak_mb(fn)
        assert peak < size_mb / 4, f"{name} held {peak:.1f} MB of a {size_mb:.0f} MB file"


def test_episode_ids_differ_by_base_url_model_and_persona_not_by_timeouts(tmp_path: Path) -> None:
    """`--base-url` is another player as much as `--model` is: another server may serve another model
    under the same name. How long a call waits or retries is not."""
    from rsi_env.agents.profiles import EndpointOverride
    from rsi_env.runner import plan

    spec = load_game(GAME)
    agent = write_profile(tmp_path, "http://127.0.0.1:1/v1")

    def ids(**override: Any) -> list[str]:
        factory = AgentFactory([agent, "random"], spec, EndpointOverride(**override))
        return [j.episode_id for j in plan(spec, factory, 2)]

    base = ids()
    assert ids() == base  # the same command finds its episodes again
    assert ids(timeout_s=30.0) == base
    for other in ({"base_url": "http://127.0.0.1:2/v1"}, {"model": "another-model"}):
        assert set(ids(**other)).isdisjoint(base), other
    profile = yaml.safe_load(Path(agent).read_text())
    Path(agent).write_text(yaml.safe_dump({**profile, "persona": "You cooperate."}))
    assert set(ids()).isdisjoint(base)
