"""Typed engine events and conduct flags (`rsi_env/events.py`): what the engine writes, what a
trajectory stores, and that records written before the types existed still load and read the same."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter
from rich.console import Console

from rsi_env.agents.baseline import RandomAgent, ScriptedAgent
from rsi_env.catalog import load_game
from rsi_env.env import GameParallelEnv
from rsi_env.events import (
    EVENT_TYPES,
    ActionEvent,
    CommittedEvent,
    ConductFlag,
    EndEvent,
    Event,
    InvalidEvent,
    TellEvent,
)
from rsi_env.referees.procedural import procedural_verdict
from rsi_env.render import print_episode
from rsi_env.trajectory import Episode
from rsi_env.view import event_line, player_view

# Five episodes as rsi_env wrote them when events and flags were plain dicts (negotiation with a
# lie, werewolf, auction, and negotiation with invalid replies ending in passes and in a forfeit),
# each with the procedural verdict that version computed.
OLD = Path(__file__).parent / "records" / "before_typed_events.jsonl"
EVENTS = TypeAdapter(list[Event])


def old_lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in OLD.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("raw", old_lines(), ids=lambda r: r["episode_id"])
def test_records_written_before_the_types_load_field_for_field(raw: dict[str, Any]) -> None:
    ep = Episode.model_validate(raw)
    assert [e.kind for e in ep.events] == [e["kind"] for e in raw["events"]]
    for event, old in zip(ep.events, raw["events"], strict=True):
        assert {k: getattr(event, k) for k in old if k != "kind"} == {
            k: v for k, v in old.items() if k != "kind"
        }
    for flag, old in zip(ep.flags, raw["flags"], strict=True):
        assert isinstance(flag, ConductFlag)
        assert flag.model_dump() == old
    # And what is written now reads back as the same records.
    again = Episode.model_validate_json(ep.model_dump_json())
    assert again.events == ep.events and again.flags == ep.flags


def test_the_old_records_cover_every_event_kind() -> None:
    kinds = {e["kind"] for raw in old_lines() for e in raw["events"]}
    assert kinds == {"phase", "announce", "tell", "action", "committed", "invalid", "pass", "forfeit", "end"}
    assert any(e.get("visible_to") for raw in old_lines() for e in raw["events"] if e["kind"] == "action")


@pytest.mark.parametrize("raw", old_lines(), ids=lambda r: r["episode_id"])
def test_old_records_score_as_they_did(raw: dict[str, Any]) -> None:
    """The procedural referee reads the typed records exactly as the old code read the dicts."""
    ep = Episode.model_validate(raw)
    then = next(v for v in ep.verdicts if v.judge == "procedural")
    assert procedural_verdict(ep) == then


def test_an_old_record_renders_with_its_flags() -> None:
    ep = Episode.model_validate(old_lines()[0])
    assert ep.flags, "the fixture's first episode has a lie"
    console = Console(record=True, width=300, file=open(os.devnull, "w"))
    print_episode(ep, console)
    text = console.export_text()
    for f in ep.flags:
        assert f"⚑ t{f.turn} {f.player} lie: {f.name}" in text


def test_a_failed_payoff_loads_from_an_end_event() -> None:
    """NaN payoffs are written as JSON null; the end event reads them back as missing."""
    (end,) = EVENTS.validate_python(
        [{"tick": 3, "turn": 2, "phase": "p", "kind": "end", "player": None, "visible_to": None,
          "text": "Game over (turn limit).", "payoffs": {"player_0": None, "player_1": 4.0}}]
    )  # fmt: skip
    assert isinstance(end, EndEvent) and end.payoffs == {"player_0": None, "player_1": 4.0}


def test_an_unknown_event_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        EVENTS.validate_python([{"tick": 0, "turn": 0, "phase": "p", "kind": "teleport", "text": "?"}])


def _play(game: str, seed: int, agents: tuple[str, ...] = ("scripted", "random")) -> GameParallelEnv:
    spec = load_game(game)
    env = GameParallelEnv(spec)
    bots = {
        p: (ScriptedAgent(spec, i) if agents[i % len(agents)] == "scripted" else RandomAgent(i))
        for i, p in enumerate(env.possible_agents)
    }
    _obs, infos = env.reset(seed=seed)
    while env.agents:
        moves = {p: bots[p].choose(infos[p]) for p in env.agents if infos[p]["is_turn"]}
        _obs, _r, _t, _tr, infos = env.step(moves)
    return env


def test_the_engine_writes_typed_records() -> None:
    env = _play("werewolf", 0)
    events = env.engine.events
    assert events and all(isinstance(e, EVENT_TYPES) for e in events)
    assert isinstance(events[-1], EndEvent) and events[-1].payoffs == env.engine.payoffs
    assert any(isinstance(e, CommittedEvent) and e.visible_to == [e.player] for e in events)
    assert any(isinstance(e, TellEvent) and e.visible_to and len(e.visible_to) == 1 for e in events)
    actions = [e for e in events if isinstance(e, ActionEvent)]
    assert actions and all(e.action in env.spec.actions and "message" not in e.args for e in actions)


def test_a_player_sees_its_restricted_events_naming_no_one_else() -> None:
    """A private message is seen by its sender and its recipient; in each one's view it names only
    the viewer, and a third player does not see it at all."""
    for seed in range(20):
        env = _play("coalition", seed)
        shared = [e for e in env.engine.events if e.visible_to and len(e.visible_to) > 1]
        if shared:
            break
    assert shared, "coalition's private messages are seen by sender and recipient"
    for e in shared:
        for mate in e.visible_to or []:
            view = player_view(env.engine, mate, history=10_000)
            shown = [v for v in view["events"] if (v.tick, v.kind, v.player) == (e.tick, e.kind, e.player)]
            assert shown and all(v.visible_to == [mate] for v in shown)
        outsider = next(p for p in env.engine.players if p not in (e.visible_to or []))
        assert e not in player_view(env.engine, outsider, history=10_000)["events"]


def test_invalid_replies_are_logged_with_what_was_sent() -> None:
    env = GameParallelEnv(load_game("negotiation"))
    _obs, infos = env.reset(seed=0)
    actor = next(p for p in env.agents if infos[p]["is_turn"])
    env.step({actor: "hello there, no JSON"})
    (invalid,) = [e for e in env.engine.events if isinstance(e, InvalidEvent)]
    assert invalid.player == actor and invalid.raw == "hello there, no JSON" and invalid.visible_to == [actor]
    assert "hello there" in event_line(invalid) and "hello there" not in event_line(invalid, actor)


def test_conduct_flags_are_typed_and_snapshots_share_the_records() -> None:
    env = next(e for s in range(40) if (e := _play("negotiation", s)).engine.flags)
    (flag, *_) = env.engine.flags
    assert flag.kind == "lie" and flag.name == "misreported_values" and flag.action == "reveal"
    snap = env.engine.snapshot()
    env.engine.reset(123)
    assert env.engine.flags == [] and env.engine.events != snap["events"]
    env.engine.restore(snap)
    assert env.engine.flags[0] is flag, "immutable records are shared, not copied"
    assert env.engine.events == snap["events"] and env.engine.events is not snap["events"]


def test_event_lines_are_kept_per_event_and_viewer_within_a_bound() -> None:
    from rsi_env import view

    whisper = ActionEvent(
        tick=1, turn=1, phase="talk", player="a", action="whisper", message="hi", visible_to=["b", "c"]
    )
    # The omniscient line names who saw it; a viewer's does not; asked again, each is the same text.
    assert event_line(whisper).endswith("(seen by b, c)")
    assert event_line(whisper, "b") == '[t1] a: whisper() — says: "hi"'
    assert event_line(whisper) == view._event_line(whisper, None)
    assert event_line(whisper, "a") == view._event_line(whisper, "a")
    # An equal event that is another object has its own entry (kept beside its event, by identity).
    twin = whisper.model_copy(update={"message": "bye"})
    assert event_line(twin, "b").endswith('"bye"')
    # A restricted event's copy in a viewer's view is the same object while it is kept.
    assert view._seen_by(whisper, "b") is view._seen_by(whisper, "b")
    assert view._seen_by(whisper, "b").visible_to == ["b"]
    for i in range(view.KEPT_LINES + 10):
        event_line(ActionEvent(tick=i, turn=i, phase="p", player="a", action="go"))
    assert len(view._LINES) <= view.KEPT_LINES
