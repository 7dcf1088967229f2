"""Agent backends: the README's "Adding an agent backend" followed to the letter from a temporary
folder, and the registry's checks (each a clear error before anything runs)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rsi_env.agents import backends
from rsi_env.agents.backends import BackendError, find_backend, make_chat, register_backend
from rsi_env.agents.factory import ClientPool
from rsi_env.agents.profiles import EndpointOverride, ProfileError, load_profile, resolve_profile
from rsi_env.llm import Chat, ChatClient, Endpoint

REPO = Path(__file__).resolve().parents[1]


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"### {title}\n")
    end = re.compile(r"\n##+ ").search(text, start + 4)  # the next heading (code has `# ` comments)
    return text[start : end.start() if end else len(text)]


def code_blocks(section: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL)


def write_readme_files(folder: Path) -> list[str]:
    """Writes each file block (its first line names it) into `folder`; returns the bash commands."""
    commands = []
    for lang, body in code_blocks(readme_section("Adding an agent backend")):
        if lang == "bash":
            commands += [ln for ln in body.splitlines() if ln.strip()]
            continue
        name = body.splitlines()[0].lstrip("# ").strip()
        (folder / name).write_text(body, encoding="utf-8")
    return commands


def test_the_readme_backend_plays_an_episode(tmp_path: Path) -> None:
    commands = write_readme_files(tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["my_agent.yaml", "my_backend.py"]
    [command] = commands
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "rsi_env.play"]
    done = subprocess.run(
        [sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    episodes = [json.loads(ln) for ln in (tmp_path / "runs/mine/trajectories.jsonl").read_text().splitlines()]
    assert len(episodes) == 2 and all(ep["status"] == "complete" for ep in episodes)
    mine = []
    for ep in episodes:
        [seat] = [p for p in ep["players"] if p["agent"] == "my_agent.yaml"]
        assert seat["model"] == "first-choice"
        mine += [t for t in ep["turns"] if t["player"] == seat["player"]]
    assert mine and all(t["call"]["status"] == "ok" and t["valid"] for t in mine)
    # Its first legal action every turn, with the profile's option as the message.
    first = {"action": "propose", "books": 0, "hats": 0, "balls": 0, "message": "Let us split it fairly."}
    assert all(json.loads(t["raw"]) == first for t in mine)


def test_the_module_is_found_beside_its_profile(tmp_path: Path) -> None:
    """Not on sys.path (no `python -m` from that folder): the profile's folder is looked in."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    write_readme_files(folder)
    sys.modules.pop("my_backend", None)
    try:
        profile = load_profile(str(folder / "my_agent.yaml"))
        chat = ClientPool().client(profile)
        assert isinstance(chat, Chat) and type(chat).__name__ == "FirstChoiceChat"
        result = asyncio.run(chat.chat([{"role": "user", "content": "hi"}]))
        assert result.ok and result.text == "Let us split it fairly."
        assert str(folder.resolve()) not in sys.path  # only while importing
    finally:
        sys.modules.pop("my_backend", None)


@pytest.mark.parametrize(
    ("profile", "problem"),
    [
        ("backend: no_such_module_rsi:Chat\n", "cannot import `no_such_module_rsi`"),
        ("backend: my_backend:NoSuchClass\n", "module `my_backend` has no `NoSuchClass`"),
        ("backend: nonsense\n", "unknown backend 'nonsense'; registered: local, endpoint"),
        (
            "backend: my_backend:FirstChoiceChat\noptions: {colour: red}\n",
            "does not take these options (colour)",
        ),
        ("backend: endpoint\nbase_url: http://127.0.0.1:9/v1\noptions: {colour: red}\n", "(colour)"),
    ],
)
def test_a_bad_backend_is_one_error_at_load(tmp_path: Path, profile: str, problem: str) -> None:
    write_readme_files(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(profile)
    sys.modules.pop("my_backend", None)
    try:
        with pytest.raises(ProfileError) as info:
            load_profile(str(bad))
    finally:
        sys.modules.pop("my_backend", None)
    assert str(info.value).startswith(f"{bad}: backend: ") and problem in str(info.value)


def test_play_reports_a_bad_backend_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("backend: no_such_module_rsi:Chat\n")
    done = subprocess.run(
        [sys.executable, "-m", "rsi_env.play", "--agents", "bad.yaml", "--out", "run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "cannot import `no_such_module_rsi`" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


class NotAChat:
    """Lacks `aclose`: not a Chat."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def chat(self, messages: list[dict[str, str]]) -> None:
        return None


def test_registered_backends_and_what_they_must_make(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_registry", dict(backends.BUILTIN_BACKENDS))
    register_backend("not-a-chat", NotAChat)
    with pytest.raises(BackendError, match=r"made a NotAChat, which lacks .*aclose"):
        make_chat("not-a-chat", Endpoint(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(BackendError, match="is built in"):
        register_backend("local", NotAChat)
    with pytest.raises(BackendError, match="use letters"):
        register_backend("a:b", NotAChat)
    assert backends.backend_names()[:2] == ["local", "endpoint"]
    assert find_backend("tests.test_backends:NotAChat") is NotAChat  # an import path, no registering


def test_built_in_backends_make_chat_clients() -> None:
    remote = make_chat("endpoint", Endpoint(base_url="http://127.0.0.1:9/v1"))
    embedded = make_chat("local", Endpoint())
    assert isinstance(remote, ChatClient) and isinstance(embedded, ChatClient)
    with pytest.raises(ValueError, match="needs a resolver"):
        ChatClient(Endpoint())  # without the `local` backend nothing says where the embedded model is


def test_the_base_url_override_keeps_a_backend_of_your_own(tmp_path: Path) -> None:
    write_readme_files(tmp_path)
    sys.modules.pop("my_backend", None)
    try:
        override = EndpointOverride(base_url="http://127.0.0.1:9/v1", model="other")
        profile = resolve_profile(str(tmp_path / "my_agent.yaml"), override)
    finally:
        sys.modules.pop("my_backend", None)
    assert profile.backend == "my_backend:FirstChoiceChat"
    assert profile.endpoint().base_url == "http://127.0.0.1:9/v1" and profile.endpoint().model == "other"
    assert resolve_profile("local", override).backend == "endpoint"  # the embedded model's move over


def test_a_backends_options_are_part_of_episode_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Options change how a backend plays, so a rerun with other options plays its own episodes; the
    built-in backends take none, and their ids do not change."""
    from rsi_env.agents.factory import AgentFactory
    from rsi_env.catalog import load_game
    from rsi_env.runner import plan
    from rsi_env.runner.plan import profile_identity

    spec = load_game("negotiation")
    ids = []
    for folder, message in (("a", "fairly"), ("b", "evenly"), ("c", "fairly")):
        (tmp_path / folder).mkdir()
        write_readme_files(tmp_path / folder)
        profile = tmp_path / folder / "my_agent.yaml"
        profile.write_text(profile.read_text().replace("fairly", message))
        monkeypatch.chdir(tmp_path / folder)  # the same seat name, `my_agent.yaml`, in each run
        sys.modules.pop("my_backend", None)
        try:
            ids.append(plan(spec, AgentFactory(["my_agent.yaml", "random"], spec), 1)[0].episode_id)
        finally:
            sys.modules.pop("my_backend", None)
    assert ids[0] != ids[1] and ids[0] == ids[2]
    assert "options" not in profile_identity(load_profile("local"))
