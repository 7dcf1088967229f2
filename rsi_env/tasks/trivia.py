"""Trivia: questions grounded in a random encyclopedia page, answered without the page.

1. N random pages from the offline corpus (`corpus.py`); per page, Q questions with reference answers
   from one prompt that shows the page.
2. A question is kept when its answer is grounded in the page (its words occur there) and the question
   does not give the answer away; that is the procedural truth for ranking questions.
3. K answers per kept question from a prompt *without* the page; the truth is token F1 against the
   reference (SQuAD normalisation: case, punctuation, articles and accents ignored).
4. The panel, shown the page, ranks the questions (grounded, unambiguous, interesting) and scores the
   answers' correctness; the meta-referee weights the judges against the truths.
Rows: better vs worse questions and answers, and judges' rankings.
"""

from __future__ import annotations

import asyncio
import re
import string
import unicodedata
from collections import Counter
from typing import Any

from pydantic import BaseModel

from ..prefs.candidates import CandidateRecord, CandidateSet, set_id
from ..referees.rubric import load_rubric
from .common import TaskContext, as_messages, judge_set, sample_k
from .corpus import CorpusMissing, Page, corpus_path, sample_pages
from .registry import Option, TaskFamily, register

SOURCE = "trivia"
LEVELS = ("question", "answer")  # the kinds of candidate set it makes
QUESTION_TOKENS = 200
ANSWER_TOKENS = 60
MIN_GROUNDING = 0.5

QUESTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "maxLength": 300},
        "answer": {"type": "string", "maxLength": 100},
    },
    "required": ["question", "answer"],
    "additionalProperties": False,
}
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 100}},
    "required": ["answer"],
    "additionalProperties": False,
}
QUESTION_SYSTEM = "You write quiz questions from encyclopedia articles."
QUESTION_USER = (
    "ARTICLE: {title}\n{extract}\n\n"
    "Write one quiz question whose answer this article states, answerable in a few words by someone who "
    "knows the subject without seeing the article. It must have exactly one correct answer and must not give "
    "the answer away. Answer with JSON: question, answer (a few words, as the article states it)."
)
ANSWER_SYSTEM = "You answer quiz questions with a few words."
ANSWER_USER = "{question}\nAnswer with JSON: answer (a few words)."


class TriviaQuestion(BaseModel):
    id: str
    title: str
    question: str
    answer: str
    raw: str
    grounding: float = 0.0


class TriviaAnswer(BaseModel):
    id: str
    question_id: str
    raw: str
    answer: str
    f1: float


class TriviaTask(BaseModel):
    """A grounded question with its page and reference answer: one task of `TriviaEnv`."""

    id: str
    title: str
    extract: str
    question: str
    answer: str


# ---------------------------------------------------------------------------------------------------
# Procedural scores
# ---------------------------------------------------------------------------------------------------
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}‘’“”–—…]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_answer(text: str) -> str:
    """SQuAD's normalisation, plus accents: 'The Beatles!' and 'beatles' are the same answer."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _PUNCT.sub(" ", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 after normalisation: 1.0 for a normalised exact match, partial credit otherwise."""
    p, r = normalise_answer(prediction).split(), normalise_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def grounding(question: str, answer: str, page_text: str) -> float:
    """Fraction of the answer's words found in the page; 0 if the question contains the answer."""
    ans = normalise_answer(answer)
    if not ans:
        return 0.0
    if f" {ans} " in f" {normalise_answer(question)} ":
        return 0.0
    page = set(normalise_answer(page_text).split())
    words = ans.split()
    return sum(w in page for w in words) / len(words)


# ---------------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------------
def question_messages(page: Page) -> list[dict[str, str]]:
    user = QUESTION_USER.format(title=page.title, extract=page.extract)
    return [{"role": "system", "content": QUESTION_SYSTEM}, {"role": "user", "content": user}]


def answer_messages(question: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": ANSWER_SYSTEM},
        {"role": "user", "content": ANSWER_USER.format(question=question.strip())},
    ]


def answer_text(raw: str, parsed: Any) -> str:
    """The answer in a reply: the JSON `answer` field, or the reply itself."""
    if isinstance(parsed, dict) and isinstance(parsed.get("answer"), str):
        return parsed["answer"]
    return raw


def answers_question() -> str:
    """What a judge is asked about answers (the built-in trivia rubric's), e.g. by `TriviaEnv`."""
    return load_rubric(SOURCE).criteria("answer").question()


def page_context(title: str, extract: str) -> str:
    return f"ARTICLE: {title}\n{extract}"


async def run(
    ctx: TaskContext, *, n: int, k: int, questions: int, pages: list[Page] | None = None
) -> tuple[list[CandidateSet], list[TriviaTask]]:
    pages = pages if pages is not None else sample_pages(n, ctx.seed)
    ctx.log.write("pages", titles=[p.title for p in pages], license="Wikipedia text, CC BY-SA 4.0")
    sets: list[CandidateSet] = []
    bank: list[TriviaTask] = []
    for i, page in enumerate(pages):
        p_sets, p_bank = await _page(ctx, f"pg{i}", page, k, questions, stage_seed=1000 * (i + 1))
        sets += p_sets
        bank += p_bank
    await asyncio.gather(*(judge_set(ctx, cs) for cs in sets))
    return sets, bank


async def _page(
    ctx: TaskContext, pid: str, page: Page, k: int, n_questions: int, stage_seed: int
) -> tuple[list[CandidateSet], list[TriviaTask]]:
    log = ctx.log
    prompt = question_messages(page)
    samples = await sample_k(
        ctx,
        prompt,
        n_questions,
        stage="question",
        stage_seed=stage_seed,
        max_tokens=QUESTION_TOKENS,
        schema=QUESTION_SCHEMA,
    )
    qs: list[TriviaQuestion] = []
    for s in samples:
        qid = f"{pid}-q{s.index}"
        data = s.parsed if isinstance(s.parsed, dict) else {}
        question, answer = str(data.get("question", "")).strip(), str(data.get("answer", "")).strip()
        if not s.ok or not question or not answer:
            why = s.why() if not s.ok else "empty question or answer"
            log.item("question", qid, False, why, title=page.title, raw=s.text)
            continue
        q = TriviaQuestion(id=qid, title=page.title, question=question, answer=answer, raw=s.text or "")
        q.grounding = grounding(question, answer, page.extract)
        qs.append(q)
    context = page_context(page.title, page.extract)
    sets = [
        CandidateSet(
            set_id=set_id(pid, "questions"),
            task=SOURCE,
            level="question",
            item_id=pid,
            seed=ctx.seed,
            prompt=as_messages(prompt),
            context=context,
            candidates=[
                CandidateRecord(id=q.id, raw=q.raw, shown=f"Q: {q.question}\nA: {q.answer}") for q in qs
            ],
            truth={q.id: q.grounding for q in qs},
            invalid=[q.id for q in qs if _question_problem(q)],
        )
    ]
    bank = []
    for j, q in enumerate(qs):
        reason = _question_problem(q)
        log.item(
            "question",
            q.id,
            not reason,
            reason,
            title=page.title,
            question=q.question,
            answer=q.answer,
            grounding=q.grounding,
        )
        if reason:
            continue
        bank.append(
            TriviaTask(id=q.id, title=page.title, extract=page.extract, question=q.question, answer=q.answer)
        )
        sets.append(await _answers(ctx, q, context, k, stage_seed=stage_seed + 10 * (j + 1)))
    return [cs for cs in sets if cs.candidates], bank


def _question_problem(q: TriviaQuestion) -> str:
    if q.grounding == 0.0 and normalise_answer(q.answer) in normalise_answer(q.question):
        return "the question gives its answer away"
    if q.grounding < MIN_GROUNDING:
        return f"answer not grounded in the page ({q.grounding:.0%} of its words occur there)"
    return ""


async def _answers(
    ctx: TaskContext, q: TriviaQuestion, context: str, k: int, stage_seed: int
) -> CandidateSet:
    prompt = answer_messages(q.question)
    samples = await sample_k(
        ctx, prompt, k, stage="answer", stage_seed=stage_seed, max_tokens=ANSWER_TOKENS, schema=ANSWER_SCHEMA
    )
    answers: list[TriviaAnswer] = []
    for s in samples:
        aid = f"{q.id}-a{s.index}"
        if not s.ok:  # missing, never wrong
            ctx.log.item("answer", aid, False, s.why(), question_id=q.id)
            continue
        text = answer_text(s.text or "", s.parsed)
        a = TriviaAnswer(id=aid, question_id=q.id, raw=s.text or "", answer=text, f1=token_f1(text, q.answer))
        ctx.log.item("answer", aid, True, "", question_id=q.id, answer=text, f1=a.f1)
        answers.append(a)
    judged = f"{context}\n\nQUESTION: {q.question}\nREFERENCE ANSWER: {q.answer}"
    return CandidateSet(
        set_id=set_id(q.id, "answers"),
        task=SOURCE,
        level="answer",
        item_id=q.id,
        seed=ctx.seed,
        prompt=as_messages(prompt),
        context=judged,
        candidates=[CandidateRecord(id=a.id, raw=a.raw, shown=a.answer) for a in answers],
        truth={a.id: a.f1 for a in answers},
    )


def corpus_problem() -> str | None:
    """Why trivia cannot run here (the encyclopedia is not installed), else None."""
    try:
        corpus_path()
    except CorpusMissing as exc:
        return str(exc)
    return None


FAMILY = register(
    TaskFamily(
        name="trivia",
        summary="questions grounded in encyclopedia pages; answers without the page, scored with it",
        run=run,
        levels=LEVELS,
        rubric=SOURCE,
        options=(
            Option("n", 4, "pages", type=int, minimum=1),
            Option("k", 4, "answers per kept question", type=int, minimum=1),
            Option("questions", 3, "questions per page", type=int, minimum=1),
        ),
        check=corpus_problem,
        env="rsi_env.tasks.envs:TriviaEnv",
    )
)
