"""The trajectory file as a stream: the latest readable line of an id wins, where it stands; a writer
appends an episode only once however many writers share the file (the runner's `append_new`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rsi_env.trajectory import Episode
from rsi_env.trajectory_store import TrajectoryWriter, failed_attempts_path, iter_episodes, scan


def record(episode_id: str, *, aborted: bool = False, note: str = "") -> Episode:
    return Episode(
        episode_id=episode_id, game="g", spec_hash="h", seed=0, n_players=0, players=[],
        status="aborted" if aborted else "complete", abort_reason="timeout: test" if aborted else None,
        payoffs=None if aborted else {}, errors=[note] if note else [],
    )  # fmt: skip


def test_the_latest_readable_line_of_an_id_wins_where_it_stands(tmp_path: Path) -> None:
    path = tmp_path / "trajectories.jsonl"
    with TrajectoryWriter(path) as w:
        for ep in (record("a", note="1"), record("b"), record("a", note="2"), record("c", note="1")):
            w.write(ep)
    broken = {**json.loads(record("c", note="2").model_dump_json()), "payoffs": {"p": None}}
    with path.open("a") as f:
        f.write(json.dumps(broken) + "\n")  # c's last line cannot be read: its earlier one stands
    with pytest.warns(UserWarning, match=":5: bad episode record"):
        got = [(ep.episode_id, ep.errors) for ep in iter_episodes(path)]
    assert got == [("b", []), ("a", ["2"]), ("c", ["1"])]
    with pytest.warns(UserWarning):
        assert [ln.no for ln in scan(path)] == [1, 2, 3, 4, 5]


def test_a_foreign_file_is_one_error_and_no_warning(tmp_path: Path) -> None:
    from rsi_env.trajectory_store import TrajectoryFileError

    path = tmp_path / "x.jsonl"
    path.write_text('{"hello": 1}\nnot json\n')
    with pytest.raises(TrajectoryFileError, match=r"x\.jsonl:1: not an rsi_env episode record"):
        list(iter_episodes(path))


def test_two_writers_append_each_episode_once(tmp_path: Path) -> None:
    """Two writers (two runs) on one file: the second's copy of an episode the first recorded finished
    is not appended; its aborted attempt of it goes to the side file; an aborted record does not stop
    a finished one from being appended."""
    path = tmp_path / "trajectories.jsonl"
    with TrajectoryWriter(path) as one, TrajectoryWriter(path) as two:
        assert one.append_new(record("a"))
        assert not two.append_new(record("a"))
        assert not two.append_new(record("a", aborted=True))
        assert one.append_new(record("b", aborted=True))
        assert two.append_new(record("b"))
        assert not one.append_new(record("b"))
        assert two.holds_finished("a") and one.holds_finished("b") and not one.holds_finished("c")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(d["episode_id"], d["status"]) for d in lines] == [
        ("a", "complete"),
        ("b", "aborted"),
        ("b", "complete"),
    ]
    side = [json.loads(line) for line in failed_attempts_path(path).read_text().splitlines()]
    assert [(d["episode_id"], d["status"]) for d in side] == [("a", "aborted")]
