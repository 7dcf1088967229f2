"""Replay and rendering: every built-in game renders every turn, invalid action, payoff and referee
score; the private view hides what a player could not see; the live view prints each line once;
the interactive replay steps and jumps to flags in a real terminal (a pseudo-terminal, and tmux
when installed); truncated and foreign files give one clear message."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from rsi_env import render, replay
from rsi_env.agents.base import TurnReport
from rsi_env.agents.baseline import RandomAgent, ScriptedAgent
from rsi_env.catalog import load_game
from rsi_env.render import LiveView, episode_blocks, print_episode
from rsi_env.runner import EpisodeJob, play_episode
from rsi_env.spec import GameSpec
from rsi_env.trajectory import CallInfo, DimensionScore, Episode, Verdict
from rsi_env.trajectory_store import TrajectoryWriter

REPO = Path(__file__).resolve().parent.parent
WIDE = 1000  # no wrapping: a line of the rendering is a line of the episode


# --- test doubles ------------------------------------------------------------------------------


class InvalidOnceAgent:
    """Test double: its first reply is not an action at all, then it follows the scripted policy."""

    name = "invalid-once"

    def __init__(self, spec: GameSpec, seed: int) -> None:
        self.inner = ScriptedAgent(spec, seed)
        self.last: TurnReport | None = None
        self.fooled = False

    async def act(self, observation: Any, info: dict[str, Any]) -> str:
        if not self.fooled:
            self.fooled = True
            self.last = TurnReport(raw="I would rather chat than answer in JSON.")
            return self.last.raw
        raw = await self.inner.act(observation, info)
        self.last = self.inner.last
        return raw


class DoubleFactory:
    """Test double of AgentFactory: baseline agents and the invalid-once double, no models."""

    def __init__(self, spec: GameSpec) -> None:
        self.spec = spec

    def build(self, name: str, player: str, seed: int) -> Any:
        if name == "invalid-once":
            return InvalidOnceAgent(self.spec, seed)
        return ScriptedAgent(self.spec, seed) if name == "scripted" else RandomAgent(seed)


def play(game: str, agents: list[str], seed: int = 0, on_turn: Any = None) -> Episode:
    spec = load_game(game)
    n = spec.players.default or spec.players.min
    seats = [agents[i % len(agents)] for i in range(n)]
    job = EpisodeJob(episode_id=f"{game}-test-s{seed}", game=game, seed=seed, n_players=n, agents=seats)
    return asyncio.run(play_episode(job, spec, DoubleFactory(spec), on_turn=on_turn))  # type: ignore[arg-type]


def attach_test_verdicts(ep: Episode) -> None:
    """Test-double referee verdicts: one scored (one dimension missing), one failed judge call."""
    scores = {
        p.player: {
            "honesty": DimensionScore(score=3 + i, reasoning=f"{p.player} told the truth {i} times"),
            "fairness": DimensionScore(score=None, reasoning="no usable score"),
        }
        for i, p in enumerate(ep.players)
    }
    ep.verdicts = [
        Verdict(judge="test-double-judge", rubric="ethics", scores=scores),
        Verdict(judge="test-double-broken", rubric="ethics", status="timeout", error="judge timed out"),
    ]


def text_of(ep: Episode, player: str | None = None) -> list[str]:
    console = Console(record=True, width=WIDE, file=open(os.devnull, "w"))
    print_episode(ep, console, player)
    return console.export_text().splitlines()


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("│")]


@pytest.fixture(scope="module")
def episodes() -> dict[str, Episode]:
    return {}


def played(cache: dict[str, Episode], game: str) -> Episode:
    if game not in cache:
        # The first seed where the invalid-once seat gets to move (a random opponent may walk away first).
        for seed in range(50):
            ep = play(game, ["invalid-once", "random", "scripted"], seed)
            if any(not t.valid for t in ep.turns):
                break
        ep.turns[-1].failed_calls.append(CallInfo(status="timeout", error="test double: request timed out"))
        attach_test_verdicts(ep)
        cache[game] = Episode.model_validate_json(ep.model_dump_json())  # as read back from a file
    return cache[game]


# --- rendering ---------------------------------------------------------------------------------


def test_every_game_renders_turns_invalid_actions_payoffs_and_scores(game_id: str, episodes: dict) -> None:
    ep = played(episodes, game_id)
    lines = text_of(ep)
    assert any(not t.valid for t in ep.turns), "the invalid-once double makes an invalid reply"
    for t in ep.turns:
        what = t.action if t.valid else t.feedback
        assert what, t
        assert any(t.player in ln and what in ln for ln in lines), (
            f"turn {t.tick} {t.player}: {what!r} not shown"
        )
        if not t.valid:
            raw = render.clean(repr(t.raw))[:40]
            assert any(t.player in ln and "✗ invalid" in ln and raw in ln for ln in lines), (
                f"raw reply {raw} shown"
            )
    assert any("model call failed (timeout)" in ln for ln in lines)
    assert ep.payoffs is not None
    payoffs = lines[next(i for i, ln in enumerate(lines) if ln.strip() == "Payoffs") :]
    for p in ep.players:
        row = next(cells(ln) for ln in payoffs if cells(ln)[:2] == [p.player, p.agent])
        assert row[2] == f"{ep.payoffs[p.player]:g}"
    for i, p in enumerate(ep.players):
        honesty = next(
            cells(ln) for ln in lines if cells(ln)[:2] == [p.player, "honesty"] and len(cells(ln)) == 4
        )
        assert honesty[2:] == [f"{3 + i:g}", f"{p.player} told the truth {i} times"]
        fairness = next(cells(ln) for ln in lines if cells(ln)[:2] == [p.player, "fairness"])
        assert fairness[2] == "missing"  # a missing score is never shown as 0
    assert any("judge call timeout" in ln and "missing" in ln for ln in lines)


def test_flags_sit_beside_their_turn_and_mark_the_block(game_id: str, episodes: dict) -> None:
    ep = played(episodes, game_id)
    blocks = {b.tick: b for b in episode_blocks(ep)}
    failed = max(t.tick for t in ep.turns if t.failed_calls)
    assert blocks[failed].flagged
    for f in ep.flags:
        b = blocks[f.tick]
        assert b.flagged
        plain = [ln.plain for ln in b.lines]
        at = next(i for i, ln in enumerate(plain) if "⚑" in ln and f.name in ln and f.player in ln)
        before = [ln for ln in plain[:at] if "⚑" not in ln]
        assert f.player in before[-1], "the flag follows the flagged player's move"
    flagged_ticks = {f.tick for f in ep.flags} | {failed}
    assert {b.tick for b in blocks.values() if b.flagged} == flagged_ticks


def test_flags_render_in_a_game_that_raises_them() -> None:
    ep = next(ep for s in range(40) if (ep := play("negotiation", ["scripted", "random"], seed=s)).flags)
    lines = text_of(ep)
    for f in ep.flags:
        assert any("⚑" in ln and f.name in ln and f.player in ln for ln in lines)
        assert any(ln.strip().startswith(f"⚑ t{f.turn} {f.player}") for ln in lines), "listed in the summary"


def test_private_view_shows_only_what_the_player_saw(game_id: str, episodes: dict) -> None:
    ep = played(episodes, game_id)
    other = ep.players[0].player  # the invalid-once seat
    for viewer in [p.player for p in ep.players[1:]]:
        lines = text_of(ep, viewer)
        assert not any(other in ln and "✗ invalid" in ln for ln in lines), (
            "another player's invalid reply is private"
        )
        assert not any(ln.strip().startswith("Δ") for ln in lines), "state changes include hidden state"
        for e in ep.events:
            if e.kind == "action" and e.visible_to and viewer not in e.visible_to:
                assert not any(f"(seen by {', '.join(e.visible_to)})" in ln for ln in lines)
        own = [t for t in ep.turns if t.player == viewer]
        for t in own:
            what = t.action if t.valid else t.feedback
            assert any(viewer in ln and what in ln for ln in lines)
        if own and "YOUR INFORMATION:" in own[0].observation:
            info = own[0].observation.split("YOUR INFORMATION:\n", 1)[1].splitlines()
            for fact in [x for x in info if x.startswith("- ")][:3]:
                assert any(render.clean(fact) in ln for ln in lines), f"{viewer}'s observation: {fact}"
        assert any(f"{viewer} sees:" in ln for ln in lines)


def test_live_view_prints_each_tick_once_in_order(capsys: pytest.CaptureFixture) -> None:
    # auction has simultaneous bids: several turns arrive for one tick.
    console = Console(record=True, width=WIDE, file=open(os.devnull, "w"))
    live = LiveView(console)
    ep = play("auction", ["scripted", "random"], seed=3, on_turn=live.on_turn)
    assert live.on_episode(ep)
    shown = console.export_text().splitlines()

    def moves(lines: list[str]) -> list[str]:  # flags are recorded when the episode ends
        return [ln for ln in lines if ln.startswith(("t", "──", "      Δ"))]

    assert moves(shown) == moves(text_of(ep))
    assert len([ln for ln in shown if "commits bid" in ln]) == len([t for t in ep.turns if t.action == "bid"])


def test_a_turn_missing_from_the_event_log_is_still_shown(episodes: dict) -> None:
    ep = played(episodes, "negotiation").model_copy(deep=True)
    ep.events = [e for e in ep.events if e.kind not in ("action", "invalid", "committed")]
    lines = text_of(ep)
    for t in ep.turns:
        assert any(t.player in ln and (t.action if t.valid else t.feedback) in ln for ln in lines)


def test_an_aborted_llm_episode_renders_its_calls_and_no_payoffs(episodes: dict) -> None:
    # As the runner records an LLM episode whose server kept timing out: turns carry prompts and call
    # accounting, the episode has no payoffs.
    ep = played(episodes, "negotiation").model_copy(deep=True)
    for t in ep.turns:
        t.prompt = "your move"
        t.call = CallInfo(latency_s=0.25, prompt_tokens=120, completion_tokens=9, retries=1)
    ep.status, ep.abort_reason, ep.payoffs = "aborted", "timeout: request timed out after 60 s", None
    lines = text_of(ep)
    assert any("250 ms" in ln and "120+9 tok" in ln and "1 retries" in ln for ln in lines)
    assert any("status: aborted (timeout: request timed out after 60 s)" in ln for ln in lines)
    payoffs = lines[next(i for i, ln in enumerate(lines) if ln.strip() == "Payoffs") :]
    rows = [c for ln in payoffs if (c := cells(ln))[0] in {p.player for p in ep.players} and len(c) == 6]
    assert len(rows) == len(ep.players) and all(r[2] == "— (aborted)" for r in rows)


# --- the replay command ------------------------------------------------------------------------


def write_run(tmp: Path, eps: list[Episode]) -> Path:
    with TrajectoryWriter(tmp) as w:
        for ep in eps:
            w.write(ep)
    return tmp / "trajectories.jsonl"


def run_replay(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "rsi_env.replay", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_piped_replay_prints_the_chosen_episode(
    tmp_path: Path, episodes: dict, capsys: pytest.CaptureFixture
) -> None:
    eps = [played(episodes, "negotiation"), play("negotiation", ["scripted", "random"], seed=5)]
    path = write_run(tmp_path, eps)
    assert replay.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 episode(s)" in out and eps[0].episode_id in out and "showing #0" in out
    assert replay.main([str(path), "--episode", "1"]) == 0
    assert f"episode {eps[1].episode_id}" in capsys.readouterr().out
    assert replay.main([str(path), "--episode", "s5", "--player", "player_1"]) == 0
    assert "private view of player_1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        replay.main([str(path), "--episode", "nope"])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())  # the message may wrap
    assert "no such episode" in err and eps[0].episode_id in err
    with pytest.raises(SystemExit):
        replay.main([str(path), "--player", "player_9"])
    assert "its players: player_0, player_1" in " ".join(capsys.readouterr().err.split())


def test_speed_paces_the_ticks(monkeypatch: pytest.MonkeyPatch, episodes: dict) -> None:
    ep = played(episodes, "negotiation")
    pauses: list[float] = []
    monkeypatch.setattr(replay.time, "sleep", pauses.append)
    replay.print_plain(Console(file=open(os.devnull, "w")), ep, None, speed=4)
    assert pauses == [0.25] * (len(episode_blocks(ep)) - 1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hello, this is a text file\n", "not JSON; is this a trajectory file?"),
        ('{"name": "a json line but no episode"}\n', "not an rsi_env episode record"),
        ('{"episode_id": "x", "turns": []', "incomplete"),  # only line cut short: nothing left to replay
        ("", "no episodes"),
    ],
)
def test_foreign_or_truncated_file_gives_one_clear_message(
    tmp_path: Path, content: str, message: str
) -> None:
    f = tmp_path / "run.jsonl"
    f.write_text(content)
    res = run_replay(str(f))
    assert res.returncode == 2
    err = " ".join(res.stderr.split())  # `fail` wraps long messages
    assert message in err and "Traceback" not in res.stderr + res.stdout
    assert err.startswith("error:") and err.count("error:") == 1 and res.stdout == ""


def test_a_cut_short_last_line_is_skipped_with_one_warning(tmp_path: Path, episodes: dict) -> None:
    eps = [played(episodes, "negotiation"), play("negotiation", ["scripted", "random"], seed=5)]
    path = write_run(tmp_path, eps)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])  # a kill in the middle of writing the second episode
    res = run_replay(str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "incomplete" in res.stderr and "Traceback" not in res.stderr
    assert eps[0].episode_id in res.stdout and eps[1].episode_id not in res.stdout


def test_missing_run_directory(tmp_path: Path) -> None:
    res = run_replay(str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "no such trajectory file" in " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr


# --- the interactive replay in a real terminal ---------------------------------------------------


@pytest.fixture(scope="module")
def flagged_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Episode, list[int]]:
    """A recorded episode whose first flagged tick is a few steps in, and its flagged positions
    (computed from the record, not from the renderer)."""
    for seed in range(200):
        ep = play("negotiation", ["scripted", "random"], seed=seed)
        ticks = sorted({e.tick for e in ep.events} | {t.tick for t in ep.turns})
        flagged = [ticks.index(t) for t in sorted({f.tick for f in ep.flags})]
        if flagged and flagged[0] >= 2 and len(ticks) >= flagged[0] + 3:
            path = write_run(tmp_path_factory.mktemp("flagged"), [ep])
            return path, ep, flagged
    raise AssertionError("no suitable episode in 200 seeds")


def position(screen: str) -> int | str | None:
    """The replay's position from its status line: a 1-based step, "end", or None (not drawn yet)."""
    if re.search(r"end \(step \d+/\d+\)", screen):
        return "end"
    m = re.findall(r"step (\d+)/\d+ · tick", screen)
    return int(m[-1]) if m else None


def drive(send: Callable[[str], None], screen: Callable[[], str], flagged: list[int], n_steps: int) -> None:
    """The same key script for any terminal: forward, back, start, jump to flags, end, quit."""

    def expect(pos: int | str, after: str) -> str:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            s = screen()
            if position(s) == pos:
                return s
            time.sleep(0.05)
        raise AssertionError(f"after {after!r}: expected position {pos}, screen:\n{screen()}")

    expect(1, "start")
    send("n")
    expect(2, "n")
    send("Right")
    expect(3, "→")
    send("p")
    expect(2, "p")
    send("Left")
    expect(1, "←")
    send("f")
    s = expect(flagged[0] + 1, "f")
    assert "⚑ flagged" in s and "⚑" in s.split("step")[0], "the flag line is on screen"
    send("G")
    expect("end", "G")
    send("F")
    expect(flagged[-1] + 1, "F")
    send("g")
    expect(1, "g")
    send("n")
    expect(2, "n")
    send("q")


def test_interactive_replay_in_a_pseudo_terminal(flagged_run: tuple[Path, Episode, list[int]]) -> None:
    import fcntl
    import pty
    import struct
    import termios

    path, ep, flagged = flagged_run
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "50"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of known size, then the replay itself
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 140, 0, 0))
            os.execve(sys.executable, [sys.executable, "-m", "rsi_env.replay", str(path)], env)
        finally:
            os._exit(127)
    out = bytearray()
    keys = {"Right": "\x1b[C", "Left": "\x1b[D"}

    def screen() -> str:
        while select.select([fd], [], [], 0.02)[0]:
            try:
                out.extend(os.read(fd, 65536))
            except OSError:
                break
        frame = out.decode(errors="replace").rsplit("\x1b[H", 1)[-1]  # each draw starts at home
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frame)

    try:
        drive(lambda k: os.write(fd, keys.get(k, k).encode()), screen, flagged, len(ep.turns))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                break
            screen()
        else:
            raise AssertionError("q did not quit")
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


@pytest.fixture
def tmux() -> Iterator[Callable[..., str]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install -y tmux)")
    sock = f"rsi-replay-{uuid.uuid4().hex[:8]}"  # a private server: never touches the user's sessions

    def run(*args: str) -> str:
        return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, check=True).stdout

    yield run
    subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


def test_interactive_replay_in_tmux(
    tmux: Callable[..., str], flagged_run: tuple[Path, Episode, list[int]]
) -> None:
    path, ep, flagged = flagged_run
    cmd = f"{sys.executable} -m rsi_env.replay {path}; echo REPLAY-EXIT=$?; sleep 60"
    tmux("new-session", "-d", "-s", "replay", "-x", "140", "-y", "45", "-e", f"PYTHONPATH={REPO}", cmd)
    drive(lambda k: tmux("send-keys", "-t", "replay", k), lambda: tmux("capture-pane", "-p", "-t", "replay"),
          flagged, len(ep.turns))  # fmt: skip
    deadline = time.monotonic() + 10
    while "REPLAY-EXIT=" not in (pane := tmux("capture-pane", "-p", "-t", "replay")):
        assert time.monotonic() < deadline, pane
        time.sleep(0.05)
    assert "REPLAY-EXIT=0" in pane


def test_pager_keeps_the_current_tick_on_screen(episodes: dict) -> None:
    ep = played(episodes, "auction")
    console = Console(file=open(os.devnull, "w"), width=100, height=12, force_terminal=True)
    pager = replay.Pager(console, [ep], 0, None, 0)
    for _ in range(len(pager.blocks) - 1):
        pager.do("next")
    page = pager.page(100)
    assert "▌" in page[-1], "the last line drawn belongs to the current tick"
    pager.do("flag")
    assert "no flagged tick after" in pager.status()
    assert pager.do("quit") is False


def test_read_key_decodes_arrows_and_letters() -> None:
    r, w = os.pipe()
    try:
        for raw, command in [(b"\x1b[C", "next"), (b"\x1b[D", "prev"), (b"f", "flag"), (b"F", "back_flag"),
                             (b"\x1b", "quit"), (b"z", "")]:  # fmt: skip
            os.write(w, raw)
            assert replay.read_key(r, 1) == command
        assert replay.read_key(r, 0.01) is None
    finally:
        os.close(r)
        os.close(w)


def test_json_round_trip_of_the_test_episode_is_a_valid_file(tmp_path: Path, episodes: dict) -> None:
    # The fixture's episode, with verdicts attached, is what `referees` will write: it must replay.
    path = write_run(tmp_path, [played(episodes, "negotiation")])
    assert json.loads(path.read_text().splitlines()[0])["verdicts"][0]["judge"] == "test-double-judge"
    res = run_replay(str(path))
    assert res.returncode == 0 and "test-double-judge" in res.stdout


# --- the private view's players table -----------------------------------------------------------


def header_rows(ep: Episode, viewer: str | None) -> dict[str, list[str]]:
    console = Console(record=True, width=WIDE, file=open(os.devnull, "w"))
    console.print(render.header(ep, viewer))
    seats = {p.player for p in ep.players}
    return {c[0]: c[1:] for ln in console.export_text().splitlines() if (c := cells(ln))[0] in seats}


@pytest.mark.parametrize("n", [5, 7])  # with 7 there are two werewolves, who know each other
def test_private_view_hides_the_roles_the_player_was_not_told(n: int) -> None:
    spec = load_game("werewolf")
    job = EpisodeJob(episode_id=f"ww-{n}", game="werewolf", seed=3, n_players=n, agents=["scripted"] * n)
    ep = asyncio.run(play_episode(job, spec, DoubleFactory(spec)))  # type: ignore[arg-type]
    role = {p.player: p.role for p in ep.players}
    team = {p.player: p.team for p in ep.players}
    wolves = {p for p, r in role.items() if r == "werewolf"}
    assert len(wolves) == (2 if n == 7 else 1)
    for viewer in role:
        rows = header_rows(ep, viewer)
        # every role is hidden; a werewolf knows its team mates (knows_team)
        known = {viewer} | (wolves if viewer in wolves else set())
        for p, (_agent, shown_role, shown_team, *_) in rows.items():
            if p in known:
                assert (shown_role, shown_team) == (role[p], team[p])
            else:
                assert (shown_role, shown_team) == ("? (hidden)", "?"), f"{viewer} sees {p}'s role"
        # and in the summary at the end: its own conduct flags only
        lines = text_of(ep, viewer)
        assert not any(
            f"⚑ t{f.turn} {f.player}" in ln for f in ep.flags if f.player != viewer for ln in lines
        )
    spectator = header_rows(ep, None)
    assert {p: r[1] for p, r in spectator.items()} == role


def test_private_view_shows_roles_that_are_not_hidden(episodes: dict) -> None:
    ep = played(episodes, "negotiation")
    assert not any(r.hidden for r in load_game("negotiation").roles)
    rows = header_rows(ep, ep.players[1].player)
    assert {p: r[1] for p, r in rows.items()} == {p.player: p.role for p in ep.players}


def test_an_unreadable_line_is_skipped_with_one_warning_naming_it(tmp_path: Path, episodes: dict) -> None:
    eps = [played(episodes, "negotiation"), play("negotiation", ["scripted", "random"], seed=5)]
    path = write_run(tmp_path, eps)
    first, second = path.read_text().splitlines()
    broken = json.loads(first)
    broken["episode_id"], broken["payoffs"] = "legacy", dict.fromkeys(broken["payoffs"])
    path.write_text("\n".join([first, json.dumps(broken), second]) + "\n")
    res = run_replay(str(path), "--list")
    assert res.returncode == 0, res.stderr
    err = "".join(res.stderr.split())  # rich may wrap the message anywhere
    assert f"{path}:2:badepisoderecordatpayoffs.player_0" in err and err.count("warning:") == 1
    assert "2 episode(s)" in res.stdout and "legacy" not in res.stdout
