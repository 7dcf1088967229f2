"""Aggregating rankings: weighted Bradley–Terry fit, Kendall τ, and cycle detection.

Each judge's ranking of a candidate set becomes pairwise outcomes (ties count half to each side),
weighted by the judge's reliability; a Bradley–Terry model fitted by maximum a posteriori (scipy,
with a weak Gaussian prior so separable data still has finite strengths) gives the consensus. The
same fit rates agents across episodes (`rsi_env.ratings`). Kendall's
τ-b (ties allowed) measures agreement; networkx finds cycles in a judge's pairwise preferences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import networkx as nx
import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import kendalltau

Scores = dict[str, float | None]


def pairwise_outcomes(scores: Scores) -> list[tuple[str, str, float]]:
    """(i, j, s): s = 1 if i beat j, 0.5 for a tie; pairs with a missing score are skipped."""
    ids = [c for c, v in scores.items() if v is not None]
    out = []
    for a_i, a in enumerate(ids):
        for b in ids[a_i + 1 :]:
            sa, sb = scores[a], scores[b]
            assert sa is not None and sb is not None
            out.append((a, b, 1.0 if sa > sb else 0.0 if sa < sb else 0.5))
    return out


def bradley_terry(
    comparisons: Sequence[tuple[str, str, float, float]], items: Sequence[str], prior_sd: float = 7.0
) -> tuple[dict[str, float], dict[str, float]]:
    """MAP strengths from weighted comparisons (i, j, s_ij, weight); returns (strength, std error).

    P(i beats j) = sigmoid(θ_i − θ_j). A Gaussian prior N(0, prior_sd²) keeps an item that never
    lost finite. Strengths are centred (mean 0); the likelihood only sees differences, so the
    common shift is projected out of the covariance (the inverse Hessian) before taking errors.
    """
    n = len(items)
    if n == 0:
        return {}, {}
    idx = {c: k for k, c in enumerate(items)}
    ia = np.array([idx[c[0]] for c in comparisons], dtype=int)
    ib = np.array([idx[c[1]] for c in comparisons], dtype=int)
    s = np.array([c[2] for c in comparisons], dtype=float)
    w = np.array([c[3] for c in comparisons], dtype=float)
    prec = 1 / prior_sd**2

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        d = theta[ia] - theta[ib]
        # -log-likelihood of s under p = sigmoid(d), in a form that never overflows
        nll = np.sum(w * (np.logaddexp(0, -d) * s + np.logaddexp(0, d) * (1 - s)))
        g = w * (expit(d) - s)
        grad = np.bincount(ia, g, n) - np.bincount(ib, g, n) + prec * theta
        return float(nll + 0.5 * prec * theta @ theta), grad

    def hessian(theta: np.ndarray) -> np.ndarray:
        p = expit(theta[ia] - theta[ib])
        h = w * p * (1 - p)
        hess = np.eye(n) * prec
        np.add.at(hess, (ia, ia), h)
        np.add.at(hess, (ib, ib), h)
        np.add.at(hess, (ia, ib), -h)
        np.add.at(hess, (ib, ia), -h)
        return hess

    res = minimize(objective, np.zeros(n), jac=True, hess=hessian, method="trust-exact")
    theta = res.x - res.x.mean()
    centre = np.eye(n) - 1 / n
    cov = centre @ np.linalg.inv(hessian(theta)) @ centre
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    return {c: float(theta[k]) for c, k in idx.items()}, {c: float(se[k]) for c, k in idx.items()}


def consensus(rankings: Sequence[Scores], weights: Sequence[float] | None = None) -> dict[str, float]:
    """Weighted Bradley–Terry consensus of several judges' scores over the same candidates."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    items = sorted({c for r in rankings for c in r})
    comps = [
        (a, b, sc, w)
        for r, w in zip(rankings, weights, strict=True)
        if w > 0
        for a, b, sc in pairwise_outcomes(r)
    ]
    if not comps:
        return dict.fromkeys(items, 0.0)
    strength, _ = bradley_terry(comps, items)
    return strength


def tau(a: Scores | dict[str, float], b: Scores | dict[str, float]) -> float | None:
    """Kendall τ-b between two score maps over their shared, non-missing candidates (None if undefined)."""
    shared = [c for c in a if c in b and a[c] is not None and b[c] is not None]
    if len(shared) < 2:
        return None
    x = [a[c] for c in shared]
    y = [b[c] for c in shared]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None  # a constant ranking carries no order to agree or disagree with
    t = kendalltau(x, y).statistic
    return None if t is None or math.isnan(t) else float(t)


def mean_agreement(score_maps: Sequence[Scores | dict[str, float]]) -> float | None:
    """Mean Kendall τ over every pair of score maps that defines one; None when no pair does (a single
    ranker, or constant rankings): there is no agreement to measure, which is not disagreement (τ = -1)."""
    taus = [t for i, a in enumerate(score_maps) for b in score_maps[i + 1 :] if (t := tau(a, b)) is not None]
    return sum(taus) / len(taus) if taus else None


def preference_cycles(pairwise: dict[tuple[str, str], str]) -> list[list[str]]:
    """Cycles in strict pairwise preferences (a tie adds no edge): intransitive judgements."""
    g = nx.DiGraph()
    for (a, b), winner in pairwise.items():
        g.add_nodes_from((a, b))
        if winner == "a":
            g.add_edge(a, b)
        elif winner == "b":
            g.add_edge(b, a)
    return [c for c in nx.simple_cycles(g) if len(c) > 1]
