"""Shared estimation machinery for the count models (population and within-subject Poisson).

What both ``poisson.py`` and ``conditional.py`` use: input checks and ``EstimationError``, the
streamed-pass plumbing (row block size, how many buckets for the local threads, single-threaded
BLAS), the
Newton driver ``maximize`` with its convergence criterion, rank-deficiency and separation
detection, the cluster-robust sandwich with statsmodels' CRV1 small-sample factor, and Wald
inference on the rate-ratio scale.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg, special, stats
from threadpoolctl import threadpool_limits

from pipeline.errors import UserError

INTERCEPT_NAME = "Intercept"
CI_LEVEL = 0.95
Z_CRIT = float(stats.norm.ppf(0.5 + CI_LEVEL / 2))
# Rows per streamed block: large enough for BLAS to be efficient, small enough to stay in cache.
CHUNK_ROWS = 32_768
# Relative eigenvalue (of the correlation-scaled information matrix) below which the design is
# treated as rank deficient.
RANK_TOL = 1e-10
# A fitted rate ratio across a feature's observed range beyond exp(30) (~1e13) is not an
# estimate but a coefficient running off to infinity: (quasi-)separation.
SEPARATION_LOG_RANGE = 30.0
SEPARATION_SUSPECT_LOG_RANGE = 10.0
SEPARATION_TINY_RATE = 1e-10
SEPARATION_MIN_ITER = 15
# Once a Newton step moves every linear predictor by less than this, the Hessian is frozen until
# convergence (it changes by about this fraction) and recomputed exactly at the solution.
FREEZE_HESSIAN_ETA_STEP = 0.05
# Above this many rows, start Newton from a fit on every 16th row (see ``warm_start``).
WARM_START_MIN_ROWS = 500_000
WARM_START_STRIDE = 16
WARM_START_TOL = 1e-6
# Threads per streamed pass (each with single-threaded BLAS), and blocks each must have at least.
MAX_WORKERS = 4
MIN_BLOCKS_PER_WORKER = 8
# Environment variable overriding the number of cores used (e.g. 1 on a busy shared machine).
THREADS_ENV = "CRAMP_FIT_THREADS"
# A Newton decrement (log-likelihood units) below which the next step is expected to be the last.
FINAL_STEP_DECREMENT = 1e-4


class EstimationError(UserError):
    """A model cannot be estimated as specified (non-identifiable, separated, no information).

    ``reason`` is a short machine-readable code (``"no_variation"``, ``"collinear"``,
    ``"separation"``, ``"no_events"``, ``"too_few_clusters"``, ``"not_converged"``,
    ``"invalid_input"``) and ``features`` names the features concerned, so that a caller can drop
    them and say why.
    """

    def __init__(self, message: str, *, reason: str, features: Sequence[str] = ()):
        self.reason = reason
        self.features = tuple(features)
        super().__init__(message)


def as_design(X: np.ndarray, y: np.ndarray, feature_names: Sequence[str]) -> tuple[np.ndarray,
                                                                                   np.ndarray,
                                                                                   tuple[str, ...]]:
    """Validate and return (X, y, names) as float64 without copying X when it already is one."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise EstimationError(f"design must be 2-D, got shape {X.shape}", reason="invalid_input")
    if not (X.flags.c_contiguous or X.flags.f_contiguous):
        X = np.ascontiguousarray(X)
    y = np.asarray(y, dtype=np.float64).ravel()
    names = tuple(str(n) for n in feature_names)
    n, p = X.shape
    if len(names) != p:
        raise EstimationError(f"{len(names)} feature names for {p} design columns",
                              reason="invalid_input")
    if len(set(names)) != p:
        raise EstimationError("feature names must be unique", reason="invalid_input")
    if y.shape[0] != n:
        raise EstimationError(f"outcome has {y.shape[0]} rows, design has {n}",
                              reason="invalid_input")
    if not np.all(np.isfinite(y)) or np.any(y < 0):
        raise EstimationError("outcome must be finite and non-negative", reason="invalid_input")
    return X, y, names


def raise_if_not_finite(names: Sequence[str], lo: np.ndarray, hi: np.ndarray) -> None:
    """Column minima/maxima (NaN-propagating) reveal missing or infinite values for free."""
    bad = [names[j] for j in np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))]
    if bad:
        raise EstimationError(f"features with missing or infinite values: {', '.join(bad)}",
                              reason="invalid_input", features=bad)


def encode_labels(labels: np.ndarray, n: int, what: str) -> tuple[np.ndarray, int]:
    """Integer codes 0..G-1 (int32, half the memory of intp on 36M rows) for arbitrary labels,
    with a fast path for already sorted integer labels."""
    labels = np.asarray(labels).ravel()
    if labels.shape[0] != n:
        raise EstimationError(f"{what} has {labels.shape[0]} rows, design has {n}",
                              reason="invalid_input")
    if n == 0:
        return np.zeros(0, dtype=np.int32), 0
    if labels.dtype.kind in "iub" and np.all(labels[1:] >= labels[:-1]):
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
        counts = np.diff(np.r_[starts, n])
        return np.repeat(np.arange(starts.size, dtype=np.int32), counts), starts.size
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.astype(np.int32).ravel()
    return codes, int(codes.max()) + 1


def count_constants(y: np.ndarray) -> tuple[float, float]:
    """sum y log y and sum log y! (both 0 on the usual majority of zero-count rows)."""
    yp = y[y > 0]
    return float((yp * np.log(yp)).sum()), float(special.gammaln(yp + 1).sum())


def gathered_fitted(parts: list) -> np.ndarray | None:
    """The fitted rates of every bucket in bucket order, or None when the buckets kept theirs on
    disk (``design_buckets``: a fit whose buckets are files never gathers a value per row)."""
    if any(p is None for p in parts):
        return None
    return np.concatenate(parts) if parts else np.zeros(0)


def row_chunks(n: int, size: int | None = None) -> Iterator[slice]:
    """Row slices of CHUNK_ROWS (cache-sized blocks of a bucket)."""
    size = size or CHUNK_ROWS
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def collinear_sets(H: np.ndarray, names: Sequence[str]) -> list[list[str]]:
    """Groups of columns that are (numerically) linear combinations of each other, read from the
    null space of the correlation-scaled information matrix ``H``."""
    d = np.sqrt(np.diag(H))
    zero = d <= 0
    d[zero] = 1.0
    C = H / np.outer(d, d)
    w, V = np.linalg.eigh(C)
    null = w <= RANK_TOL * max(w.max(), 1.0)
    sets = []
    for j in np.flatnonzero(zero):
        sets.append([names[j]])
    for v in V[:, null].T:
        involved = [names[j] for j in np.flatnonzero(np.abs(v) > 1e-3) if not zero[j]]
        if involved:
            sets.append(involved)
    return sets


def raise_if_rank_deficient(H: np.ndarray, names: Sequence[str]) -> None:
    sets = collinear_sets(H, names)
    if sets:
        desc = "; ".join("{" + ", ".join(s) + "}" for s in sets)
        flat = sorted({f for s in sets for f in s if f != INTERCEPT_NAME})
        raise EstimationError(
            f"design is rank deficient: these features are collinear (one is a linear "
            f"combination of the others, or of the intercept): {desc}",
            reason="collinear", features=flat)


def sandwich(H: np.ndarray, score_sums: np.ndarray | None, factor: float, *,
             meat: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(factor * H^-1 M H^-1, H^-1) with M = sum_g s_g s_g' (from the cluster score sums, or
    given as ``meat``, e.g. summed over buckets): the cluster-robust and the model-based
    covariance (H symmetric positive definite)."""
    try:
        cho = linalg.cho_factor(H)
    except linalg.LinAlgError:
        raise EstimationError(
            "the information matrix is singular at the solution (features nearly collinear "
            "on the days that carry weight)", reason="collinear") from None
    bread = linalg.cho_solve(cho, np.eye(H.shape[0]))
    if meat is None:
        meat = score_sums.T @ score_sums
    V = factor * bread @ meat @ bread
    return (V + V.T) / 2, (bread + bread.T) / 2


def inference(coef: np.ndarray, cov: np.ndarray) -> dict[str, np.ndarray]:
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = coef / se
    p = 2 * stats.norm.sf(np.abs(z))
    return {"se": se, "z": z, "p_value": p, "irr": np.exp(coef),
            "ci_low": np.exp(coef - Z_CRIT * se), "ci_high": np.exp(coef + Z_CRIT * se)}


def cluster_correction(n_clusters: int, n_obs: int, k: int) -> float:
    """statsmodels' default CRV1 small-sample factor G/(G-1) * (N-1)/(N-K)."""
    return n_clusters / (n_clusters - 1.0) * (n_obs - 1.0) / (n_obs - k)


def newton_step(H: np.ndarray, grad: np.ndarray) -> np.ndarray:
    try:
        return linalg.cho_solve(linalg.cho_factor(H), grad)
    except linalg.LinAlgError:
        return np.linalg.lstsq(H, grad, rcond=None)[0]


def worker_count(n_blocks: int) -> int:
    """Threads for a streamed pass: one per available core (at most MAX_WORKERS; the environment
    variable CRAMP_FIT_THREADS overrides the core count), and one only for small data, where a
    thread costs more than it saves. numpy's ufuncs, reductions and
    BLAS release the GIL, so block work runs in parallel."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    wanted = os.environ.get(THREADS_ENV, "").strip()
    if wanted.isdigit() and int(wanted) > 0:
        cores = int(wanted)
    return max(1, min(MAX_WORKERS, cores, n_blocks // MIN_BLOCKS_PER_WORKER))


def single_threaded_blas():
    """Streamed blocks are small (CHUNK_ROWS x k): threaded BLAS only adds synchronisation, and
    on a shared 2-core machine it measurably slows the passes down."""
    return threadpool_limits(limits=1, user_api="blas")


@dataclass
class NewtonResult:
    beta: np.ndarray
    loglik_kernel: float
    grad: np.ndarray
    hessian: np.ndarray
    n_iter: int
    converged: bool


def maximize(evaluate, beta: np.ndarray, *, deviance_of, tol: float, max_iter: int,
             check_hessian=None) -> NewtonResult:
    """Newton's method with backtracking for a concave log-likelihood.

    ``evaluate(beta, hessian)`` makes one pass over the data and returns ``(ll, grad, H or None,
    drift)``, with ``H`` the negative Hessian and ``drift`` the largest change of any linear
    predictor since the previous call. The Hessian is recomputed only while the linear
    predictors have moved by more than ``FREEZE_HESSIAN_ETA_STEP`` since it was last formed
    (otherwise the weights it holds are still right to a few per cent and the steps still
    converge, a pass cheaper); at the solution it is always exact.

    Converged when the relative deviance change ``|D_old - D| / (|D| + 0.1) < tol`` and the
    Newton decrement ``g' H^-1 g < tol`` hold together (the decrement is twice the remaining
    log-likelihood gain, so each coefficient is within ~sqrt(tol) standard errors, model-based,
    of the maximum; the deviance test alone can stop early on a flat likelihood). The last call
    of ``evaluate`` is always at the returned ``beta`` with the Hessian. ``check_hessian(H)`` is
    called on the first Hessian (e.g. to reject a rank-deficient design before iterating).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        # A trial step may overflow exp(); its likelihood is then -inf or NaN and the step is
        # halved, so the warnings would only be noise.
        return _maximize(evaluate, beta, deviance_of, tol, max_iter, check_hessian)


def _maximize(evaluate, beta, deviance_of, tol, max_iter, check_hessian) -> NewtonResult:
    ll, grad, H, _ = evaluate(beta, True)
    if check_hessian is not None:
        check_hessian(H)
    hessian_drift = 0.0   # predictor movement since H was formed
    last_drift = np.inf
    dev_change = np.inf
    for n_iter in range(1, max_iter + 1):
        step = newton_step(H, grad)
        decrement = float(grad @ step)
        if decrement < tol and dev_change < tol:
            if hessian_drift == 0.0:
                return NewtonResult(beta, ll, grad, H, n_iter, True)
            ll, grad, H, _ = evaluate(beta, True)
            hessian_drift = 0.0
            continue
        # Form the Hessian in the coming pass if the weights have moved, or if this step will
        # probably be the last (quadratic convergence: the next decrement ~ this one squared),
        # so that the solution's pass already carries the exact Hessian for the covariance.
        refresh = (hessian_drift + min(last_drift, 1.0) > FREEZE_HESSIAN_ETA_STEP
                   or decrement < FINAL_STEP_DECREMENT)
        t = 1.0
        while True:
            cand = beta + t * step
            ll_new, grad_new, H_new, drift = evaluate(cand, refresh)
            # Accept any step that does not lower the likelihood beyond rounding noise.
            if ll_new >= ll - 1e-12 * abs(ll):
                break
            t /= 2
            if t < 1e-10:
                ll, grad, H, _ = evaluate(beta, True)
                return NewtonResult(beta, ll, grad, H, n_iter, False)
        dev_new = deviance_of(ll_new)
        dev_change = abs(deviance_of(ll) - dev_new) / (abs(dev_new) + 0.1)
        beta, ll, grad, last_drift = cand, ll_new, grad_new, drift
        if refresh:
            H, hessian_drift = H_new, 0.0
        else:
            hessian_drift += drift
    ll, grad, H, _ = evaluate(beta, True)
    return NewtonResult(beta, ll, grad, H, max_iter, False)


def raise_if_separated(names: Sequence[str], spread: np.ndarray, mu: np.ndarray, y: np.ndarray,
                       n_iter: int, what: str) -> None:
    """Detect (quasi-)separation after a fit: either a coefficient whose rate ratio across the
    feature's observed range exceeds e^SEPARATION_LOG_RANGE, or the hallmark of a likelihood
    without a maximum: slow convergence (> SEPARATION_MIN_ITER Newton steps; a Poisson fit with a
    finite maximum takes well under ten) while rows without events are fitted rates below
    SEPARATION_TINY_RATE times the mean rate, i.e. driven towards zero. ``spread`` is
    |coef| x observed range per feature."""
    zero = (mu > 0) & (y == 0)
    raise_if_separated_by(names, spread, float(y.sum()), int(np.count_nonzero(mu)),
                          float(mu[zero].min()) if zero.any() else np.inf, n_iter, what)


def raise_if_separated_by(names: Sequence[str], spread: np.ndarray, y_sum: float,
                          n_mu_pos: int, min_mu_zero_y: float, n_iter: int, what: str) -> None:
    """``raise_if_separated`` from sums a bucketed fit reduces: the outcome total, the number of
    positive fitted rates and the smallest positive fitted rate on a row without events."""
    diverging = spread > SEPARATION_LOG_RANGE
    if not diverging.any():
        mean_rate = y_sum / max(n_mu_pos, 1)
        if n_iter <= SEPARATION_MIN_ITER or not min_mu_zero_y < SEPARATION_TINY_RATE * mean_rate:
            return
        diverging = spread >= min(SEPARATION_SUSPECT_LOG_RANGE, spread.max())
    bad = [names[j] for j in np.flatnonzero(diverging)]
    raise EstimationError(
        f"separation: the{what} estimates for {', '.join(bad)} run towards a rate ratio of 0 or "
        "infinity (some combination of these features marks days that never have episodes); "
        "they cannot be estimated", reason="separation", features=bad)


def warm_start(fit_subsample, n: int) -> np.ndarray | None:
    """Starting values from the same model fitted on every WARM_START_STRIDE-th row.

    On large data the first Newton steps from a null start move a long way and each costs a full
    pass; on a systematic subsample they cost 1/16 of one. The subsample estimate is within a few
    standard errors of the answer, from where full-data Newton needs two or three passes. Any
    failure on the subsample (e.g. a rare level absent from it) just means a null start."""
    if n < WARM_START_MIN_ROWS:
        return None
    try:
        return fit_subsample(slice(None, None, WARM_START_STRIDE))
    except (EstimationError, np.linalg.LinAlgError, FloatingPointError, ValueError):
        return None
