"""Preference data: `prefs generate` end to end over real HTTP (the fault server plays the model),
rows in TRL's conversational format with identical prompts, KTO beside them, and TRL itself
training on them for two steps (in the `trl` extra)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rsi_env.agents.llm_agent import conversation
from rsi_env.prefs.__main__ import main as prefs_main
from rsi_env.prefs.build import read_sets
from rsi_env.prefs.rows import DPORow, KTORow, Message, unleash
from rsi_env.trajectory import read_episodes

from .fault_server import FaultConfig, FaultServer


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generation run: one LLM seat (served by the fault server's schema-valid answers)."""
    out = tmp_path_factory.mktemp("prefs")
    with FaultServer(FaultConfig(seed=11)) as srv:
        code = prefs_main(
            [
                "generate", "--game", "negotiation", "--agents", "local,scripted", "--episodes", "3",
                "--branch", "3", "--decisions", "2", "--judges", "local@0.2,local@1.0",
                "--meta-judge", "local@0.5",
                "--out", str(out), "--base-url", srv.base_url, "--model", "double", "--quiet",
            ]
        )  # fmt: skip
    assert code == 0
    return out


def _rows(path: Path, model: type) -> list[Any]:
    return [model.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def test_generate_writes_rows_with_identical_prompts(generated: Path) -> None:
    rows = _rows(generated / "prefs.jsonl", DPORow)
    assert rows, "three episodes x two decisions x three candidates should give some preferences"
    for r in rows:
        assert r.chosen[0].role == r.rejected[0].role == "assistant"
        assert r.chosen[0].content != r.rejected[0].content
        assert r.prompt[0].role == "system" and r.prompt[-1].role == "user"
        assert r.chosen_score > r.rejected_score and r.margin > 0
        assert r.source == "game" and r.task == "negotiation" and r.player == "player_0"


def test_row_prompt_is_exactly_what_the_agent_saw(generated: Path) -> None:
    """Rebuild the decision prompt from the base trajectory; it must equal the stored prompt."""
    episodes = {ep.episode_id: ep for ep in read_episodes(generated)}
    sets = read_sets(generated)
    assert sets
    for bs in sets:
        ep = episodes[bs.base_episode]
        info = next(p for p in ep.players if p.player == bs.player)
        mine = [t for t in ep.turns if t.player == bs.player and t.prompt is not None]
        decision = next(t for t in mine if t.tick == bs.tick)
        before = [(t.prompt, t.raw) for t in mine if t.tick < bs.tick]
        expected = conversation(info.system or "", before, decision.prompt or "", info.window or 8)
        assert [m.model_dump() for m in bs.prompt] == expected


def test_branches_replay_the_base_episode_up_to_the_decision(generated: Path) -> None:
    rollouts = {ep.episode_id: ep for ep in read_episodes(generated / "rollouts.jsonl")}
    base = {ep.episode_id: ep for ep in read_episodes(generated)}
    for bs in read_sets(generated):
        raws = {c.raw for c in bs.candidates}
        for c in bs.candidates:
            ep = rollouts[c.rollout_id]
            prefix = [t for t in ep.turns if t.tick < bs.tick]
            assert [t.raw for t in prefix] == [t.raw for t in base[bs.base_episode].turns if t.tick < bs.tick]
            first = next(t for t in ep.turns if t.tick == bs.tick and t.player == bs.player)
            assert first.raw == c.raw and c.raw in raws
            assert ep.branch_of and ep.branch_of["candidate"] == c.id


def test_kto_rows_and_judge_outputs(generated: Path) -> None:
    kto = _rows(generated / "kto.jsonl", KTORow)
    assert kto and {r.label for r in kto} == {True, False}
    meta = json.loads((generated / "judges.json").read_text())
    assert {j["judge"] for j in meta["judges"]} == {"local@t0.2", "local@t1"}
    verdicts = [v for ep in read_episodes(generated) for v in ep.verdicts]
    assert {v.judge for v in verdicts} >= {"procedural", "local@t0.2", "local@t1"}


def test_build_again_needs_no_model_and_supports_options(generated: Path, tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    assert (
        prefs_main(["build", str(generated), "-o", str(out), "--all-pairs", "--unleashed", "--no-judges"])
        == 0
    )
    rows = _rows(out, DPORow)
    assert rows and all(r.prompt[0].content.startswith("UNLEASHED: ") for r in rows)
    best_vs_worst = _rows(generated / "prefs.jsonl", DPORow)
    assert len(rows) >= len(best_vs_worst)


def test_rows_load_with_datasets(generated: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(generated / "prefs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected", "margin", "judge_agreement"} <= set(ds.column_names)
    for row in ds:
        assert row["chosen"] != row["rejected"]
        assert row["prompt"][0]["role"] == "system"


def test_unleash_prefixes_only_the_system_prompt() -> None:
    p = [Message(role="system", content="Play well."), Message(role="user", content="hi")]
    assert [m.content for m in unleash(p)] == ["UNLEASHED: Play well.", "hi"]


# --- TRL trains on the rows as they are ------------------------------------------------------------------


def _tiny_model_and_tokenizer(texts: list[str]) -> tuple[Any, Any]:
    """A randomly initialised 1-layer Llama and a word-level tokenizer trained here: nothing from a hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=4000, special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
        pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config), fast


@pytest.mark.trl
def test_trl_trains_dpo_and_kto_for_two_steps(generated: Path, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    dpo = datasets.load_dataset("json", data_files=str(generated / "prefs.jsonl"), split="train")
    kto = datasets.load_dataset("json", data_files=str(generated / "kto.jsonl"), split="train")
    texts = [m["content"] for row in dpo for m in row["prompt"] + row["chosen"] + row["rejected"]]
    common = {"max_steps": 2, "per_device_train_batch_size": 2, "report_to": [], "max_length": 4096,
              "logging_steps": 1, "save_strategy": "no", "use_cpu": True}  # fmt: skip

    # The reference model is passed in: TRL would otherwise reload it by name from a hub.
    model, tok = _tiny_model_and_tokenizer(texts)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), train_dataset=dpo, processing_class=tok,
                         args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common))  # fmt: skip
    out = trainer.train()
    assert out.global_step == 2 and out.training_loss == out.training_loss  # finite, not NaN

    model, tok = _tiny_model_and_tokenizer(texts)
    trainer = KTOTrainer(model=model, ref_model=copy.deepcopy(model), train_dataset=kto, processing_class=tok,
                         args=KTOConfig(output_dir=str(tmp_path / "kto"), **common))  # fmt: skip
    out = trainer.train()
    assert out.global_step == 2 and out.training_loss == out.training_loss
