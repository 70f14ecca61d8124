"""Population Poisson regression (log link) with subject-clustered sandwich covariance.

The `population` model of ``effects.csv``: one row per subject-day, ``episodes`` on the features,
rate ratios (IRR) per documented unit with 95% intervals from a cluster-robust (sandwich)
covariance clustered by subject.

Fitting is Newton's method on the Poisson log-likelihood (identical to IRLS for the canonical log
link), streamed over row blocks of the design so that X is never copied in full and never scaled
in full: each pass reads a block, forms its linear predictor, rates, gradient and Hessian
contribution, and moves on, with work buffers reused across blocks. The intercept is handled
implicitly, without a column of ones. On large data (>= 500,000 rows) Newton starts from the
same model fitted on every 16th row (a 1/16 copy), which saves the long first steps; the final
pass always carries the exact Hessian. BLAS is held to one thread during the passes (blocks are
too thin for threading to pay, and it hurts on a shared 2-core machine).

The machinery shared with the within-subject model (Newton driver, checks, sandwich) lives in
``estimation.py``.

Small-sample correction (identical to statsmodels' default for ``GLM(...).fit(cov_type="cluster")``,
``use_correction=True``, see ``statsmodels.stats.sandwich_covariance.cov_cluster``)::

    V = G/(G-1) * (N-1)/(N-K) * H^-1 (sum_g s_g s_g') H^-1

with G clusters, N rows, K estimated coefficients (intercept included), H = X' diag(mu) X and
s_g = sum over cluster g of x_i (y_i - mu_i). Inference uses the normal reference distribution,
as statsmodels GLM does by default (``use_t=False``): z = coef/se, two-sided p from N(0, 1),
95% CI = exp(coef -/+ 1.959964 se).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.models import estimation
from pipeline.models.estimation import (
    INTERCEPT_NAME,
    WARM_START_TOL,
    EstimationError,
    as_design,
    cluster_correction,
    cluster_score_sums,
    count_constants,
    encode_labels,
    inference,
    map_blocks,
    maximize,
    pearson_chi2,
    raise_if_not_finite,
    raise_if_rank_deficient,
    raise_if_separated,
    row_chunks,
    sandwich,
    single_threaded_blas,
    warm_start,
)

__all__ = ["EstimationError", "PoissonFit", "fit_poisson"]


@dataclass(frozen=True)
class PoissonFit:
    """A fitted population Poisson model. Arrays are aligned with ``names`` (intercept first when
    fitted); ``irr``, ``ci_low`` and ``ci_high`` are on the rate-ratio scale (for the intercept: the
    baseline rate)."""

    names: tuple[str, ...]
    coef: np.ndarray
    cov_cluster: np.ndarray
    cov_model: np.ndarray  # model-based: inverse information, for dispersion/robustness checks
    se: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    irr: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    fitted: np.ndarray = field(repr=False)
    n_obs: int
    n_clusters: int
    converged: bool
    n_iter: int
    deviance: float
    pearson_chi2: float
    df_resid: int
    loglik: float
    has_intercept: bool
    small_sample_factor: float

    @property
    def feature_index(self) -> slice:
        """Slice selecting the features (everything but the intercept)."""
        return slice(1 if self.has_intercept else 0, len(self.names))

    @property
    def dispersion(self) -> float:
        """Pearson dispersion: chi2 / residual df (1 under the Poisson model)."""
        return self.pearson_chi2 / self.df_resid if self.df_resid > 0 else float("nan")


# --------------------------------------------------------------------------------------------
# Population model


def _column_ranges(X: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, ...]:
    """Column min/max over all rows and over rows with a positive outcome (block-wise; each block
    is transposed into a buffer first, as reductions along contiguous rows are ~10x faster)."""
    p = X.shape[1]
    lo, hi = np.full(p, np.inf), np.full(p, -np.inf)
    plo, phi = np.full(p, np.inf), np.full(p, -np.inf)
    buf = np.empty((p, min(X.shape[0], estimation.CHUNK_ROWS)))
    for sl in row_chunks(X.shape[0]):
        Xc = X[sl]
        XT = buf[:, :sl.stop - sl.start]
        np.copyto(XT, Xc.T)
        np.minimum(lo, XT.min(axis=1), out=lo)
        np.maximum(hi, XT.max(axis=1), out=hi)
        pos = positive[sl]
        if pos.any():
            XpT = XT[:, pos]
            np.minimum(plo, XpT.min(axis=1), out=plo)
            np.maximum(phi, XpT.max(axis=1), out=phi)
    return lo, hi, plo, phi


def _check_identifiable(names, lo, hi, plo, phi, add_intercept: bool) -> None:
    if add_intercept:
        const = [names[j] for j in range(len(names)) if lo[j] == hi[j]]
        if const:
            raise EstimationError(
                f"features without variation (constant, so not identifiable beside the "
                f"intercept): {', '.join(const)}", reason="no_variation", features=const)
        # Single-feature separation: if every row with episodes sits at the feature's minimum
        # (or maximum), the likelihood keeps rising as its coefficient goes to -inf (+inf).
        # Covers a binary feature one of whose levels has no episodes at all.
        sep = [names[j] for j in range(len(names)) if phi[j] <= lo[j] or plo[j] >= hi[j]]
        if sep:
            raise EstimationError(
                "separation: every subject-day with episodes has the same (extreme) value of "
                f"{', '.join(sep)} (e.g. one level of a yes/no feature has no episodes), so its "
                "rate ratio is 0 or infinite and cannot be estimated", reason="separation",
                features=sep)
    else:
        zero = [names[j] for j in range(len(names)) if lo[j] == 0 and hi[j] == 0]
        if zero:
            raise EstimationError(f"features that are zero everywhere: {', '.join(zero)}",
                                  reason="no_variation", features=zero)


def fit_poisson(
    X: np.ndarray,
    y: np.ndarray,
    *,
    clusters: np.ndarray,
    offset: np.ndarray | None = None,
    feature_names: Sequence[str],
    add_intercept: bool = True,
    tol: float = 1e-10,
    max_iter: int = 100,
    start: np.ndarray | None = None,
) -> PoissonFit:
    """Poisson regression of ``y`` on ``X`` (log link) with a cluster-robust covariance.

    ``cov_cluster`` is the CRV1 sandwich with statsmodels' default small-sample factor for GLM
    ``cov_type="cluster"``: G/(G-1) * (N-1)/(N-K), K counting the intercept; z, p-values and
    95% CIs use the normal reference (statsmodels GLM's default, ``use_t=False``).

    Convergence requires both a relative deviance change ``|D_old - D|/(|D| + 0.1) < tol`` and a
    Newton decrement ``g' H^-1 g < tol``: the log-likelihood is then within ~tol/2 of its maximum
    and each coefficient within ~sqrt(tol) (1e-5 at the default) model-based standard errors of
    the MLE. The deviance criterion alone can stop early on a flat likelihood. ``converged`` is
    always True on a returned fit (a fit that does not converge raises).

    ``start`` (optional) gives starting coefficients, aligned with the result's ``names``, e.g. a
    related model's estimates; by default a null model, or a subsample fit on large data.

    Raises ``EstimationError`` for constant or all-zero features, single-feature separation (e.g.
    a yes/no level without episodes), a rank-deficient design (naming the collinear features),
    divergence, no episodes at all, or fewer than two clusters.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 1)); subj = np.repeat(np.arange(50), 10)
    >>> y = rng.poisson(np.exp(0.2 + 0.5 * x[:, 0]))
    >>> fit = fit_poisson(x, y, clusters=subj, feature_names=["x"])
    >>> fit.names, bool(abs(fit.coef[1] - 0.5) < 0.15), bool(np.isclose(fit.fitted.sum(), y.sum()))
    (('Intercept', 'x'), True, True)
    """
    X, y, fnames = as_design(X, y, feature_names)
    n, p = X.shape
    codes, n_clusters = encode_labels(clusters, n, "clusters")
    if offset is not None:
        offset = np.asarray(offset, dtype=np.float64).ravel()
        if offset.shape[0] != n or not np.all(np.isfinite(offset)):
            raise EstimationError("offset must be finite with one value per row",
                                  reason="invalid_input")
    names = ((INTERCEPT_NAME,) if add_intercept else ()) + fnames
    k = len(names)
    y_sum = float(y.sum())
    if y_sum <= 0:
        raise EstimationError("no events: the outcome is zero on every row, so no rate ratio "
                              "can be estimated", reason="no_events")
    if n_clusters < 2:
        raise EstimationError(f"cluster-robust errors need at least 2 clusters, got {n_clusters}",
                              reason="too_few_clusters")
    if n <= k:
        raise EstimationError(f"{n} rows for {k} coefficients", reason="invalid_input")
    lo, hi, plo, phi = _column_ranges(X, y > 0)
    raise_if_not_finite(fnames, lo, hi)
    _check_identifiable(fnames, lo, hi, plo, phi, add_intercept)

    fitted = np.empty(n)
    eta_prev = np.zeros(n)
    sum_ylogy, sum_lgamma = count_constants(y)
    ic = 1 if add_intercept else 0

    m = min(n, estimation.CHUNK_ROWS)
    slices = list(row_chunks(n))
    # Work buffers per worker, reused by every block: fresh multi-megabyte temporaries per block
    # cost page faults that dominate the arithmetic.
    buffers = [(np.empty(m), np.empty(m), np.empty(m), np.empty((m, p)))
               for _ in range(estimation.worker_count(len(slices)))]

    def work(part: list[slice], worker: int, beta: np.ndarray, hessian: bool):
        """Log-likelihood kernel pieces, gradient, optionally Hessian, and the largest change of
        the linear predictor since the last pass, over some blocks; fills ``fitted``."""
        eta_buf, r_buf, tmp_buf, w_buf = buffers[worker]
        b = beta[ic:]
        b0 = beta[0] if add_intercept else 0.0
        grad = np.zeros(k)
        H = np.zeros((k, k)) if hessian else None
        sum_yeta = 0.0
        sum_mu = 0.0
        drift = 0.0
        for sl in part:
            Xc = X[sl]
            rows = sl.stop - sl.start
            eta, r, tmp = eta_buf[:rows], r_buf[:rows], tmp_buf[:rows]
            np.matmul(Xc, b, out=eta)
            if b0:
                eta += b0
            if offset is not None:
                eta += offset[sl]
            old = eta_prev[sl]
            np.subtract(old, eta, out=tmp)
            drift = max(drift, float(np.abs(tmp, out=tmp).max()))
            old[:] = eta
            mu = np.exp(eta, out=fitted[sl])
            yc = y[sl]
            np.subtract(yc, mu, out=r)
            sum_yeta += float(yc @ eta)
            sum_mu += float(mu.sum())
            grad[ic:] += Xc.T @ r
            if add_intercept:
                grad[0] += r.sum()
            if hessian:
                w = np.multiply(Xc, mu[:, None], out=w_buf[:rows])
                H[ic:, ic:] += Xc.T @ w
                if add_intercept:
                    xmu = Xc.T @ mu
                    H[0, 0] += mu.sum()
                    H[0, 1:] += xmu
                    H[1:, 0] += xmu
        return sum_yeta - sum_mu, grad, H, drift

    def evaluate(beta: np.ndarray, hessian: bool):
        """One streamed pass over all blocks (split between workers)."""
        parts = map_blocks(lambda part, w: work(part, w, beta, hessian), slices, len(buffers))
        ll = sum(q[0] for q in parts)
        grad = sum(q[1] for q in parts)
        H = sum(q[2] for q in parts) if hessian else None
        return ll, grad, H, max(q[3] for q in parts)

    beta = np.zeros(k)
    if add_intercept:
        beta[0] = np.log(y_sum / (np.exp(offset).sum() if offset is not None else n))
    if not np.all(np.isfinite(beta)):
        raise EstimationError("offset makes the starting rate infinite", reason="invalid_input")
    warm = np.asarray(start, dtype=np.float64) if start is not None else warm_start(
        lambda sl: fit_poisson(
        X[sl], y[sl], clusters=codes[sl], offset=None if offset is None else offset[sl],
            feature_names=fnames, add_intercept=add_intercept, tol=WARM_START_TOL).coef, n)
    if warm is not None:
        if warm.shape != (k,) or not np.all(np.isfinite(warm)):
            raise EstimationError(f"start must hold {k} finite values (intercept first when "
                                  "added)", reason="invalid_input")
        beta = warm

    def first_hessian_check(H):
        raise_if_rank_deficient(H, names)

    with single_threaded_blas():
        res = maximize(evaluate, beta, deviance_of=lambda ll: 2 * (sum_ylogy - y_sum - ll),
                       tol=tol, max_iter=max_iter, check_hessian=first_hessian_check)
    beta, ll, H, n_iter, converged = res.beta, res.loglik_kernel, res.hessian, res.n_iter, \
        res.converged
    if not converged:
        raise EstimationError(
            f"Poisson fit did not converge in {max_iter} iterations (the likelihood may have no "
            "finite maximum: check for separation)", reason="not_converged",
            features=list(fnames))
    raise_if_separated(fnames, np.abs(beta[ic:]) * (hi - lo), fitted, y, n_iter, "")

    mu = fitted
    r = y - mu

    score_buf = np.empty((m, k))

    def scores(sl):
        block = score_buf[:sl.stop - sl.start]
        if add_intercept:
            block[:, 0] = r[sl]
        np.multiply(X[sl], r[sl, None], out=block[:, ic:])
        return block

    S = cluster_score_sums(scores, row_chunks(n), codes, n_clusters, k)
    factor = cluster_correction(n_clusters, n, k)
    cov, cov_model = sandwich(H, S, factor)
    deviance = 2 * (sum_ylogy - y_sum - ll)
    pearson = pearson_chi2(y, mu)
    return PoissonFit(
        names=names, coef=beta, cov_cluster=cov, cov_model=cov_model,
        **inference(beta, cov), fitted=mu, n_obs=n,
        n_clusters=n_clusters, converged=converged, n_iter=n_iter, deviance=float(deviance),
        pearson_chi2=pearson, df_resid=n - k, loglik=float(ll - sum_lgamma),
        has_intercept=add_intercept, small_sample_factor=factor)
