"""The code is ruff clean, as the style guide asks: lint and formatting, checked like any behaviour."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command: list[str]) -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra)")
    done = subprocess.run([ruff, *command, "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with the test extra)")
    return found


def test_mypy() -> None:
    """Type hints everywhere, checked: `mypy rsi_env` with the configuration in pyproject.toml."""
    done = subprocess.run(
        [_tool("mypy"), "rsi_env"], cwd=REPO, capture_output=True, text=True, timeout=900
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_import_layers() -> None:
    """The layer contracts in pyproject.toml: each layer imports only the ones below it, no cycles
    between layers, and only `rsi_env.llm` imports the OpenAI client."""
    done = subprocess.run([_tool("lint-imports")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_every_module_is_in_a_layer() -> None:
    """import-linter checks only the modules its layers name: a module left out could import anything and
    close a cycle unseen. Every module of the package (the package's own `__init__` aside) is in a layer."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    layers = config["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {m.strip() for layer in layers for m in layer.replace(":", "|").split("|")}
    assert "rsi_env.spec" in named and "rsi_env.prefs" in named  # the contract read is the layers one
    package = REPO / "rsi_env"
    modules = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in package.rglob("*.py")
    } - {"rsi_env"}
    outside = sorted(m for m in modules if not any(m == n or m.startswith(n + ".") for n in named))
    assert outside == [], f"modules in no layer of the import contract (pyproject.toml): {outside}"


def test_playing_loads_no_heavy_extra() -> None:
    """A run without --ray, training or an RL library loads none of them: importing the modules
    that play, judge and build preference data leaves ray, torch and the adapters' libraries unloaded
    (they are imported lazily, where used)."""
    heavy = ["ray", "torch", "transformers", "trl", "peft", "openenv", "verifiers", "textarena"]
    code = (
        "import sys, rsi_env, rsi_env.play, rsi_env.prefs.__main__, rsi_env.referees.__main__, "
        "rsi_env.tasks.__main__, rsi_env.report, rsi_env.replay, rsi_env.games\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"loaded at import: {done.stdout.strip()}"
