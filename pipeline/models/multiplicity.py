"""Benjamini-Hochberg false-discovery-rate q-values across the features of one model.

Benjamini Y, Hochberg Y (1995), J R Stat Soc B 57:289-300. The q-value of the i-th smallest of m
p-values is min over j >= i of p_(j) * m / j, capped at 1 (statsmodels ``multipletests(...,
method="fdr_bh")`` adjusted p-values). Features without an estimate (p = NaN) keep q = NaN and do
not count towards m.
"""

from __future__ import annotations

import numpy as np


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH q-values for ``p`` (any shape), NaN-aware.

    >>> benjamini_hochberg(np.array([0.01, np.nan, 0.04, 0.03])).round(3).tolist()
    [0.03, nan, 0.04, 0.04]
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    pv = p[ok]
    if pv.size == 0:
        return q
    if np.any((pv < 0) | (pv > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    m = pv.size
    order = np.argsort(pv, kind="stable")
    ranked = pv[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = q_sorted
    q[ok] = out
    return q
