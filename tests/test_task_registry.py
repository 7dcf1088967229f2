"""Task families as registered objects (`rsi_env/tasks/registry.py`), and the README's "Adding a task
family" followed literally: its module saved in a temporary folder, imported by the CLI, run end to end
against a real HTTP server, and its Gymnasium env made by id."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest

from rsi_env.tasks import Option, TaskError, TaskFamily, families, get_family, register
from rsi_env.tasks.__main__ import build_parser
from rsi_env.tasks.__main__ import main as tasks_main
from rsi_env.testing.fault_server import FaultConfig, FaultServer

REPO = Path(__file__).resolve().parents[1]


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"### {title}\n")
    end = text.index("\n## ", start)
    return text[start:end]


def code_blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, re.DOTALL)


def test_the_built_in_families_are_registered_objects() -> None:
    registered = families()
    assert list(registered)[:3] == ["programming", "predict", "trivia"]
    assert [f.sandbox for f in registered.values()][:3] == [True, True, False]
    assert get_family("trivia").check is not None
    for fam in list(registered.values())[:3]:
        assert fam.gym_id in gymnasium.registry
    assert {o.name for o in get_family("programming").options} == {"n", "k", "validators"}
    # The CLI offers exactly what the registry declares.
    help_text = build_parser().format_help()
    assert "{programming,predict,trivia" in help_text


def test_registration_rejects_names_the_cli_already_uses() -> None:
    async def run(ctx: object) -> tuple[list, list]:
        return [], []

    with pytest.raises(TaskError, match="profile"):
        register(TaskFamily(name="clash", summary="", run=run, options=(Option("profile", "x", ""),)))
    with pytest.raises(TaskError, match="identifier"):
        register(TaskFamily(name="not-a-name", summary="", run=run))
    assert "clash" not in families() and "not-a-name" not in families()


def test_an_import_that_fails_is_one_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        tasks_main(["--import", "no_such_module_here", "programming"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--import no_such_module_here" in err and "Traceback" not in err


def test_the_readme_task_family_runs_end_to_end(tmp_path: Path) -> None:
    section = readme_section("Adding a task family")
    (module,) = code_blocks(section, "python")
    (tmp_path / "my_family.py").write_text(module, encoding="utf-8")
    run_line, gym_line = [ln for ln in code_blocks(section, "bash")[0].splitlines() if ln.strip()]
    assert run_line.startswith("python -m rsi_env.tasks --import my_family number")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with FaultServer(FaultConfig(seed=5)) as srv:  # answers with seeded random instances of the schema
        args = [*shlex.split(run_line)[1:], "--base-url", srv.base_url, "--model", "double"]
        done = subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "runs" / "number"
    rows = [json.loads(ln) for ln in (out / "prefs.jsonl").read_text().splitlines()]
    assert rows, "two rounds of four random numbers give at least one preference"

    def number(side: dict) -> int:
        return int(json.loads(side[0]["content"])["number"])

    for r in rows:
        assert abs(7 - number(r["chosen"])) < abs(7 - number(r["rejected"])), r
        assert r["source"] == "number" and r["prompt"][-1]["content"].endswith("from 1 to 10.")
    bank = (out / "bank.jsonl").read_text().splitlines()
    assert [json.loads(b)["id"] for b in bank] == ["r0", "r1"]
    events = [json.loads(ln) for ln in (out / "run.jsonl").read_text().splitlines()]
    assert events[0]["kind"] == "start" and events[0]["family"] == "number"
    assert sum(e["kind"] == "call" and e["status"] == "ok" for e in events) == 8

    # The README's Gymnasium line, then the env over the run's own bank.
    made = subprocess.run(
        [sys.executable, *shlex.split(gym_line)[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert made.returncode == 0 and "Pick a whole number" in made.stdout, made.stderr[-2000:]
    check = (
        "import my_family\n"
        f"env = my_family.NumberEnv.from_run({str(out)!r})\n"
        "env.reset(seed=0)\n"
        "seven = env.step('{\"number\": 7}')[1]\n"
        "env.reset(seed=0)\n"
        "print(len(env.tasks), seven, env.step('no number')[1])\n"
    )
    scored = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert scored.stdout.split() == ["2", "1.0", "0.0"], scored.stderr[-2000:]
