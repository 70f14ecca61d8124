"""The lag basis of a distributed-lag term: free lags up to a week, a natural spline beyond.

A factor with lags 0..L enters the lag model as the columns ``x[d - l] @ C`` (the cross-basis of
dlnm with a linear exposure-response: Gasparrini, Stat Med 2010; R package ``dlnm``,
``crossbasis(x, lag = L, argvar = list(fun = "lin"), arglag = list(knots = logknots(L, 3)))``),
where ``C`` is the (L+1) x K basis evaluated at the integer lags. The lag-l coefficient is then
``beta_l = C[l] @ theta`` and its covariance ``C V C'`` (dlnm's ``crosspred``); the cumulative
effect over lags 0..L is ``sum_l beta_l``.

- L <= ``FREE_LAGS_UP_TO``: ``C`` is the identity, one free coefficient per lag (a week of
  free lags is what a diary of a few months can estimate; a smooth curve adds nothing).
- L above it: a natural cubic spline in the lag with an intercept (dlnm's default for the lag
  dimension), boundary knots at 0 and L and ``N_INTERIOR_KNOTS`` interior knots at equally spaced
  log-values of the lag (dlnm's ``logknots``: lag effects usually change fastest soon after the
  exposure). K = ``N_INTERIOR_KNOTS`` + 2 columns.

The spline is built from the truncated-power form of a natural cubic spline (Hastie, Tibshirani &
Friedman, Elements of Statistical Learning, eq. 5.4-5.5), on the lag scaled to [0, 1], and then
orthonormalised. R's ``ns(..., intercept = TRUE)`` spans the same space, and every lag estimate,
the cumulative and their covariances are invariant to the choice of basis of that space, so the
results equal dlnm's (tests/test_lag_basis.py checks the space against scipy's natural cubic
interpolating splines and the knots against dlnm's formula).
"""

from __future__ import annotations

import math

import numpy as np

#: Up to this many lags each lag gets its own coefficient.
FREE_LAGS_UP_TO = 7
#: Interior knots of the spline lag basis (dlnm's worked examples use logknots(L, 3)).
N_INTERIOR_KNOTS = 3


def log_knots(max_lag: int, n_knots: int = N_INTERIOR_KNOTS) -> np.ndarray:
    """dlnm's ``logknots(c(0, L), nk)``: ``exp((1 + log L) / (nk + 1) * k - 1)``, k = 1..nk."""
    if max_lag <= 0:
        raise ValueError("log_knots needs a lag range > 0")
    k = np.arange(1, n_knots + 1)
    return np.exp((1 + math.log(max_lag)) / (n_knots + 1) * k - 1)


def natural_spline_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Natural cubic spline basis with an intercept at ``x`` for sorted ``knots`` (boundary knots
    first and last): 1, x and the ESL truncated-power terms, ``len(knots)`` columns. Linear
    beyond the boundary knots."""
    x = np.asarray(x, dtype=float)
    xi = np.asarray(knots, dtype=float)
    if xi.size < 2 or np.any(np.diff(xi) <= 0):
        raise ValueError("knots must be strictly increasing, at least two")

    def d(k: int) -> np.ndarray:
        return (np.clip(x - xi[k], 0, None) ** 3 - np.clip(x - xi[-1], 0, None) ** 3) / (
            xi[-1] - xi[k])

    columns = [np.ones_like(x), x]
    last = d(xi.size - 2)
    columns += [d(k) - last for k in range(xi.size - 2)]
    return np.column_stack(columns)


def lag_basis(max_lag: int) -> tuple[np.ndarray, str]:
    """``C``, the (L+1) x K lag basis at lags 0..L, and a phrase describing it."""
    if max_lag <= FREE_LAGS_UP_TO:
        return np.eye(max_lag + 1), f"one coefficient per lag (0-{max_lag})"
    knots = np.r_[0.0, log_knots(max_lag), float(max_lag)]
    raw = natural_spline_basis(np.arange(max_lag + 1) / max_lag, knots / max_lag)
    q, _ = np.linalg.qr(raw)  # same column space, well conditioned
    interior = ", ".join(f"{k:.2f}" for k in knots[1:-1])
    return q, (f"natural cubic spline in the lag with {q.shape[1]} df (boundary knots 0 and "
               f"{max_lag}, interior knots at lags {interior}, dlnm's logknots)")


def lag_effects(C: np.ndarray, theta: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Per-lag log rate ratios ``C theta`` and their covariance ``C V C'``."""
    return C @ theta, C @ cov @ C.T
