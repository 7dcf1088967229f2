"""Mode-collapse checks for a pool of games: distinct-n, compression ratio, Vendi score, near-duplicates.

- distinct-n (Li et al. 2016): unique n-grams / all n-grams over the rules texts of a set. Lower is
  more repetitive.
- compression ratio (Shaib et al. 2024): bytes of the concatenated rules texts / bytes after zlib.
  Higher is more repetitive (a set of copies compresses to almost one copy).
- Vendi score (Friedman & Dieng 2023): exp of the entropy of the eigenvalues of K/n, K the cosine
  similarity matrix of the specs' TF-IDF vectors. It reads as "the effective number of distinct
  games": n for n unrelated games, 1 for n copies.
- near-duplicates: a candidate whose TF-IDF cosine to an existing game is at or above a threshold.

TF-IDF is a few lines of numpy (sklearn is not a dependency): sublinear term frequency, smoothed
idf as sklearn's default (`log((1 + N) / (1 + df)) + 1`), rows L2-normalised. A spec is tokenised
as a whole (rules, names, actions, expressions), with snake_case names split into words, so two
games that differ only in their id and wording still look alike, while vocabulary every spec shares
(`state`, `players`, `effects`) gets a low idf.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import yaml
from pydantic import BaseModel

from ..spec import GameSpec

# Calibrated on the built-in games: their highest pairwise cosine is ~0.3 (see tests/test_generate.py),
# a built-in reworded and renamed scores ~0.9.
NEAR_DUPLICATE = 0.7

_WORD = re.compile(r"[a-z]+|[0-9]+")


def spec_text(spec: GameSpec) -> str:
    """Everything a spec says, provenance excluded (who wrote it is not what it is)."""
    body = spec.model_dump(mode="json", by_alias=True, exclude={"provenance"}, exclude_defaults=True)
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def tfidf(docs: Sequence[str]) -> np.ndarray:
    """Rows = documents, L2-normalised TF-IDF over the documents' own vocabulary."""
    toks = [Counter(tokens(d)) for d in docs]
    vocab = sorted({t for c in toks for t in c})
    if not vocab:
        return np.zeros((len(docs), 0))
    index = {t: i for i, t in enumerate(vocab)}
    tf = np.zeros((len(docs), len(vocab)))
    for r, c in enumerate(toks):
        for t, k in c.items():
            tf[r, index[t]] = 1.0 + math.log(k)
    df = (tf > 0).sum(axis=0)
    idf = np.log((1 + len(docs)) / (1 + df)) + 1.0
    x = tf * idf
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def similarity_matrix(docs: Sequence[str]) -> np.ndarray:
    x = tfidf(docs)
    return np.clip(x @ x.T, 0.0, 1.0)


def vendi_score(sim: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/n); K a similarity matrix with unit diagonal."""
    n = sim.shape[0]
    if n == 0:
        return 0.0
    eig = np.linalg.eigvalsh(sim / n)
    eig = eig[eig > 1e-12]
    return float(np.exp(-np.sum(eig * np.log(eig))))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams of the word sequences (0 when there are none)."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        w = tokens(t)
        grams += [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def compression_ratio(texts: Sequence[str]) -> float:
    """Raw bytes / zlib-compressed bytes of the texts joined; higher means more repetition."""
    data = "\n".join(texts).encode()
    return len(data) / len(zlib.compress(data, 9)) if data else 0.0


class NearDuplicate(BaseModel):
    game: str
    cosine: float


class DiversityReport(BaseModel):
    """Diversity figures of one set of games."""

    label: str
    games: int
    distinct_1: float
    distinct_2: float
    distinct_3: float
    compression_ratio: float
    vendi: float  # effective number of distinct games, in [1, games]
    most_similar: tuple[str, str] | None = None
    max_cosine: float | None = None

    def line(self) -> str:
        pair = (
            f"; most similar pair {self.most_similar[0]} ~ {self.most_similar[1]} "
            f"(cosine {self.max_cosine:.2f})"
            if self.most_similar and self.max_cosine is not None
            else ""
        )
        return (
            f"{self.label}: {self.games} game(s); distinct-1/2/3 {self.distinct_1:.2f}/{self.distinct_2:.2f}/"
            f"{self.distinct_3:.2f}; compression ratio {self.compression_ratio:.2f}; "
            f"Vendi {self.vendi:.2f} of {self.games}{pair}"
        )


def diversity(label: str, specs: Mapping[str, GameSpec]) -> DiversityReport:
    ids = list(specs)
    rules = [specs[i].rules for i in ids]
    sim = similarity_matrix([spec_text(specs[i]) for i in ids])
    pair, best = None, None
    for a in range(len(ids)):
        for b in range(a + 1, len(ids)):
            if best is None or sim[a, b] > best:
                pair, best = (ids[a], ids[b]), float(sim[a, b])
    return DiversityReport(
        label=label,
        games=len(ids),
        distinct_1=distinct_n(rules, 1),
        distinct_2=distinct_n(rules, 2),
        distinct_3=distinct_n(rules, 3),
        compression_ratio=compression_ratio(rules),
        vendi=vendi_score(sim),
        most_similar=pair,
        max_cosine=best,
    )


def near_duplicates(
    candidate: GameSpec, existing: Mapping[str, GameSpec], threshold: float = NEAR_DUPLICATE
) -> tuple[list[NearDuplicate], NearDuplicate | None]:
    """Existing games at or above `threshold` cosine to `candidate` (most similar first), and the
    nearest existing game whatever its similarity (None if there are none)."""
    ids = list(existing)
    if not ids:
        return [], None
    sim = similarity_matrix([spec_text(candidate), *(spec_text(existing[i]) for i in ids)])[0, 1:]
    ranked = sorted(
        (NearDuplicate(game=i, cosine=round(float(s), 4)) for i, s in zip(ids, sim, strict=True)),
        key=lambda d: -d.cosine,
    )
    return [d for d in ranked if d.cosine >= threshold], ranked[0]
