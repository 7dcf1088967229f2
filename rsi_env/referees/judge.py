"""LLM judges: score an episode on a rubric, rank N candidates, compare two in both orders.

Every judge call goes through the shared chat client with a JSON Schema, so even a tiny model
returns parseable scores. A failed call is recorded with its status and its scores are missing
(None), never zero. Position bias is controlled: listwise, each judge sees the candidates in its
own seeded order (so a panel's biases do not line up into the consensus); pairwise, every pair is
asked in both orders and a disagreement is a tie. Answers are keyed by candidate id in one fixed
schema order, so two judges' answers to one set answer the same question (the meta-referee pairs them).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from ..agents.profiles import AgentProfile
from ..llm import Chat, Sampling
from ..spec import GameSpec
from ..trajectory import DimensionScore, Episode, Verdict
from .rubric import HOLISTIC, REASONING_CHARS, Criteria, Rubric
from .transcript import episode_text, fence, game_brief

SYSTEM = (
    "You are an impartial referee. You judge a record of play against a rubric and answer with one JSON "
    "object. Keep each reasoning to one short sentence. {note}"
)


@dataclass
class Candidate:
    """One item to rank: an id shown to the judge and its text."""

    id: str
    text: str


@dataclass
class Ranking:
    """A judge's ranking of one candidate set: scores per candidate (None = missing)."""

    judge: str
    set_id: str
    scores: dict[str, float | None]
    reasoning: dict[str, str] = field(default_factory=dict)
    status: str = "ok"
    prompt: list[dict[str, str]] = field(default_factory=list)  # the exact messages (for judge pairs)
    response: str = ""  # the judge's raw answer
    pairwise: dict[tuple[str, str], str] = field(default_factory=dict)  # (a, b) -> "a" | "b" | "tie"

    @property
    def ok(self) -> bool:
        return self.status == "ok" and all(v is not None for v in self.scores.values())

    def order(self) -> list[str]:
        """Candidate ids, best first (missing scores last)."""
        return sorted(self.scores, key=lambda c: (self.scores[c] is None, -(self.scores[c] or 0.0), c))


class LLMJudge:
    """One judge: a profile, optionally at its own temperature and seed (a panel can reuse one model)."""

    def __init__(
        self,
        profile: AgentProfile,
        client: Chat,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> None:
        self.profile = profile
        self.client = client
        t = profile.sampling.temperature if temperature is None else temperature
        self.sampling = Sampling(
            temperature=t,
            top_p=profile.sampling.top_p,
            seed=seed,
            max_tokens=max(profile.sampling.max_tokens, 700),
        )
        self.id = f"{profile.name}@t{t:g}" + (f"#{seed}" if seed is not None else "")

    async def _ask(
        self, messages: list[dict[str, str]], schema: dict[str, Any], name: str, max_tokens: int
    ) -> Any:
        sampling = self.sampling.model_copy(update={"max_tokens": max_tokens})
        return await self.client.chat(messages, schema=schema, schema_name=name, sampling=sampling)

    async def score_episode(self, ep: Episode, spec: GameSpec, rubric: Rubric) -> Verdict:
        """Per-player scores on every dimension of a player-scope rubric."""
        players = [p.player for p in ep.players]
        record, note = fence(episode_text(ep))
        user = (
            f"{game_brief(spec)}\n\nRUBRIC ({rubric.name}): score every player on every dimension.\n"
            f"{rubric.describe()}\n\nPLAYERS: {', '.join(f'{p.player} ({p.role})' for p in ep.players)}\n\n"
            f'{record}\n\nAnswer with JSON: {{player: {{dimension: {{"reasoning": ..., "score": ...}}}}}}.'
        )
        messages = [
            {"role": "system", "content": SYSTEM.format(note=note)},
            {"role": "user", "content": user},
        ]
        budget = 40 + len(players) * len(rubric.dimensions) * (REASONING_CHARS // 3 + 12)
        result = await self._ask(messages, rubric.verdict_schema(players), rubric.id, budget)
        return _verdict(self.id, rubric, players, result)

    async def score_game(self, spec: GameSpec, rubric: Rubric, samples: list[Episode] = ()) -> Verdict:  # type: ignore[assignment]
        """A game-scope rubric (e.g. game quality) on a spec and optional sample episodes."""
        body = (
            game_brief(spec)
            + f"\nPLAYERS: {spec.players.min}-{spec.players.max}; actions: {', '.join(spec.actions)}"
        )
        for i, ep in enumerate(samples[:2]):
            body += f"\n\nSAMPLE EPISODE {i + 1}:\n{episode_text(ep)}"
        record, note = fence(body)
        user = f"RUBRIC ({rubric.name}):\n{rubric.describe()}\n\n{record}\n\nScore the game (subject `game`)."
        messages = [
            {"role": "system", "content": SYSTEM.format(note=note)},
            {"role": "user", "content": user},
        ]
        budget = 40 + len(rubric.dimensions) * (REASONING_CHARS // 3 + 12)
        result = await self._ask(messages, rubric.verdict_schema(["game"]), rubric.id, budget)
        return _verdict(self.id, rubric, ["game"], result)

    def presentation_order(self, set_id: str, candidates: list[Candidate]) -> list[Candidate]:
        """This judge's own order of a set's candidates: a shuffle seeded by (judge, set), so a rerun
        shows the same prompt and different judges see different orders (position bias decorrelated)."""
        seed = int.from_bytes(hashlib.sha256(f"{self.id}\n{set_id}".encode()).digest()[:8], "big")
        shown = list(candidates)
        random.Random(seed).shuffle(shown)
        return shown

    async def rank(
        self,
        set_id: str,
        question: str,
        candidates: list[Candidate],
        context: str = "",
        criteria: Criteria = HOLISTIC,
    ) -> Ranking:
        """Listwise: every candidate scored in one call (one overall 0..10 score, or the rubric's
        dimensions combined by `criteria`), seeing all of them in this judge's order. The schema (and so
        the answer) lists the ids in the given order, whatever order was shown."""
        ids = [c.id for c in candidates]
        body = (context + "\n\n" if context else "") + "\n\n".join(
            f"CANDIDATE {c.id}:\n{c.text}" for c in self.presentation_order(set_id, candidates)
        )
        record, note = fence(body)
        user = f"{question}\n\n{record}\n\n{criteria.instruction()}"
        schema = {
            "type": "object",
            "properties": dict.fromkeys(ids, criteria.item_schema()),
            "required": ids,
            "additionalProperties": False,
        }
        messages = [
            {"role": "system", "content": SYSTEM.format(note=note)},
            {"role": "user", "content": user},
        ]
        result = await self._ask(messages, schema, "ranking", 40 + len(ids) * criteria.answer_tokens())
        ranking = Ranking(
            judge=self.id,
            set_id=set_id,
            scores=dict.fromkeys(ids),
            status=str(result.record.status),
            prompt=messages,
            response=result.text or "",
        )
        if result.ok and isinstance(result.parsed, dict):
            for c in ids:
                ranking.scores[c], ranking.reasoning[c] = criteria.read(result.parsed.get(c))
        return ranking

    async def compare(
        self, question: str, a: Candidate, b: Candidate, context: str = ""
    ) -> tuple[str, list[str]]:
        """Pairwise, asked in both orders; a disagreement between the orders is a tie.

        Returns ("a" | "b" | "tie", the two raw answers' statuses)."""
        first, second = await asyncio.gather(
            self.pair(question, a, b, context), self.pair(question, b, a, context)
        )
        statuses = [first[1], second[1]]
        win1 = {"first": a.id, "second": b.id}.get(first[0] or "")
        win2 = {"first": b.id, "second": a.id}.get(second[0] or "")
        if win1 is None or win2 is None or win1 != win2:
            return "tie", statuses
        return ("a" if win1 == a.id else "b"), statuses

    async def pair(
        self, question: str, x: Candidate, y: Candidate, context: str = ""
    ) -> tuple[str | None, str]:
        """One order: `x` shown first. Returns ("first" | "second" | None, status); None with "ok" is
        a tie, None with another status a failed call (the judge benchmark reads the orders apart)."""
        pair = f"FIRST (candidate {x.id}):\n{x.text}\n\nSECOND (candidate {y.id}):\n{y.text}"
        record, note = fence((context + "\n\n" if context else "") + pair)
        user = f"{question}\n\n{record}\n\nWhich is better: first, second, or tie?"
        schema = {
            "type": "object",
            "properties": {
                "reasoning": {"type": "string", "maxLength": REASONING_CHARS},
                "better": {"type": "string", "enum": ["first", "second", "tie"]},
            },
            "required": ["reasoning", "better"],
            "additionalProperties": False,
        }
        messages = [
            {"role": "system", "content": SYSTEM.format(note=note)},
            {"role": "user", "content": user},
        ]
        result = await self._ask(messages, schema, "comparison", 120)
        if not result.ok or not isinstance(result.parsed, dict):
            return None, str(result.record.status)
        better = result.parsed.get("better")
        return (better if better in ("first", "second") else None), "ok"

    async def rank_pairwise(
        self, set_id: str, question: str, candidates: list[Candidate], context: str = ""
    ) -> Ranking:
        """All pairs in both orders; a candidate's score is its Copeland score (wins + ties/2).
        The strict pairwise verdicts are kept, so the meta-referee can look for cycles in them."""
        pairs = [(a, b) for i, a in enumerate(candidates) for b in candidates[i + 1 :]]
        results = await asyncio.gather(*(self.compare(question, a, b, context) for a, b in pairs))
        scores = {c.id: 0.0 for c in candidates}
        ranking = Ranking(judge=self.id, set_id=set_id, scores={})
        failed = False
        for (a, b), (winner, statuses) in zip(pairs, results, strict=True):
            failed |= any(s != "ok" for s in statuses)
            ranking.pairwise[(a.id, b.id)] = winner
            if winner == "a":
                scores[a.id] += 1
            elif winner == "b":
                scores[b.id] += 1
            else:
                scores[a.id] += 0.5
                scores[b.id] += 0.5
        ranking.scores = dict(scores)
        ranking.reasoning = _pairwise_summary(ranking.pairwise)
        ranking.status = "incomplete" if failed else "ok"
        return ranking


def _pairwise_summary(pairwise: dict[tuple[str, str], str]) -> dict[str, str]:
    """Per candidate, whom it beat, tied and lost to (the rationale a meta-judge reads)."""
    out: dict[str, dict[str, list[str]]] = {}
    for (a, b), winner in pairwise.items():
        for me, other, won in ((a, b, winner == "a"), (b, a, winner == "b")):
            kind = "tied" if winner == "tie" else "beat" if won else "lost to"
            out.setdefault(me, {}).setdefault(kind, []).append(other)
    return {
        c: "; ".join(f"{kind} {', '.join(sorted(ids))}" for kind, ids in sorted(kinds.items()))
        for c, kinds in out.items()
    }


def _verdict(judge_id: str, rubric: Rubric, subjects: list[str], result: Any) -> Verdict:
    status = str(result.record.status)
    scores: dict[str, dict[str, DimensionScore]] = {}
    parsed = result.parsed if result.ok and isinstance(result.parsed, dict) else {}
    for s in subjects:
        got = parsed.get(s) or {}
        scores[s] = {}
        for d in rubric.dimensions:
            item = got.get(d.name) if isinstance(got, dict) else None
            raw = item.get("score") if isinstance(item, dict) else None
            in_range = isinstance(raw, int | float) and d.range[0] <= raw <= d.range[1]
            scores[s][d.name] = DimensionScore(
                score=float(raw) if in_range and raw is not None else None,
                reasoning=str(item.get("reasoning", ""))[: REASONING_CHARS * 2]
                if isinstance(item, dict)
                else "",
            )
    return Verdict(
        judge=judge_id, rubric=rubric.id, kind="llm", status=status, scores=scores, error=result.record.error
    )
