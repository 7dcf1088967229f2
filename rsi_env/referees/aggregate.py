"""Aggregating rankings: weighted Bradley–Terry fit, Kendall τ, and cycle detection.

Each judge's ranking of a candidate set becomes pairwise outcomes (ties count half to each side),
weighted by the judge's reliability; a Bradley–Terry model fitted by maximum likelihood (scipy,
with a small ridge so separable data still has finite strengths) gives the consensus. Kendall's
τ-b (ties allowed) measures agreement; networkx finds cycles in a judge's pairwise preferences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import networkx as nx
import numpy as np
from scipy.optimize import minimize
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
    comparisons: Sequence[tuple[str, str, float, float]], items: Sequence[str], ridge: float = 0.01
) -> tuple[dict[str, float], dict[str, float]]:
    """Fit strengths from weighted comparisons (i, j, s_ij, weight); returns (strength, std error).

    P(i beats j) = sigmoid(θ_i − θ_j). Strengths are centred to mean 0. Standard errors come from
    the inverse Hessian of the penalised negative log-likelihood.
    """
    idx = {c: k for k, c in enumerate(items)}
    n = len(items)
    if n == 0:
        return {}, {}
    ii = np.array([idx[c[0]] for c in comparisons], dtype=int)
    jj = np.array([idx[c[1]] for c in comparisons], dtype=int)
    s = np.array([c[2] for c in comparisons], dtype=float)
    w = np.array([c[3] for c in comparisons], dtype=float)

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        d = theta[ii] - theta[jj]
        p = 1.0 / (1.0 + np.exp(-d))
        eps = 1e-12
        loss = -np.sum(w * (s * np.log(p + eps) + (1 - s) * np.log(1 - p + eps))) + ridge * np.sum(theta**2)
        g_d = w * (p - s)
        grad = np.zeros(n)
        np.add.at(grad, ii, g_d)
        np.add.at(grad, jj, -g_d)
        return float(loss), grad + 2 * ridge * theta

    res = minimize(nll, np.zeros(n), jac=True, method="L-BFGS-B")
    theta = res.x - res.x.mean()
    d = theta[ii] - theta[jj]
    p = 1.0 / (1.0 + np.exp(-d))
    h = np.zeros((n, n))
    v = w * p * (1 - p)
    np.add.at(h, (ii, ii), v)
    np.add.at(h, (jj, jj), v)
    np.add.at(h, (ii, jj), -v)
    np.add.at(h, (jj, ii), -v)
    # Strengths are only defined up to a constant: invert within the sum-to-zero subspace (the ridge
    # is added there only), so the constant direction does not inflate the errors.
    centre = np.eye(n) - np.ones((n, n)) / n
    cov = centre @ np.linalg.pinv(h + 2 * ridge * centre) @ centre
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
