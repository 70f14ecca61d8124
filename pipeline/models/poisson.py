"""Population Poisson regression (log link) with subject-clustered sandwich covariance.

The `population` model of ``effects.csv``: one row per subject-day, ``episodes`` on the features,
rate ratios (IRR) per documented unit with 95% intervals from a cluster-robust (sandwich)
covariance clustered by subject.

Fitting is Newton's method on the Poisson log-likelihood (identical to IRLS for the canonical log
link), streamed over row blocks of the design so that X is never copied in full and never scaled
in full: each pass reads a block, forms its linear predictor, rates, gradient and Hessian
contribution, and moves on. The intercept is handled
implicitly, without a column of ones. On large data (>= 500,000 rows) Newton starts from the
same model fitted on every 16th row (a 1/16 copy), which saves the long first steps; the final
pass always carries the exact Hessian. BLAS is held to one thread during the passes (blocks are
too thin for threading to pay, and it hurts on a shared 2-core machine).

Each pass is a sum over buckets of whole subjects (clusters): ``poisson_buckets.py`` holds the
pure per-bucket functions, an executor (``pipeline/execution.py``) runs them, and
``fit_poisson_buckets`` drives Newton on their sums; ``fit_poisson`` cuts an in-memory design into
buckets.

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
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline import execution
from pipeline.models import estimation
from pipeline.models import poisson_buckets as pb
from pipeline.models.estimation import (
    INTERCEPT_NAME,
    WARM_START_TOL,
    EstimationError,
    as_design,
    cluster_correction,
    encode_labels,
    inference,
    maximize,
    raise_if_not_finite,
    raise_if_rank_deficient,
    raise_if_separated_by,
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
    executor: execution.Executor | None = None,
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
    ``executor`` (default: ``execution.for_design``, the run's executor, or the driver's
    own pool for a small in-memory design when the run's is remote) runs the per-bucket passes on
    buckets of whole clusters (``fit_poisson_buckets``).

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
    ex = executor or execution.for_design(X.nbytes + y.nbytes)
    n_blocks = -(-n // estimation.CHUNK_ROWS)
    target = (min(estimation.worker_count(n_blocks), max(1, ex.workers))
              if isinstance(ex, execution.LocalExecutor) else max(1, 2 * ex.workers))
    order, bounds = _cluster_ranges(codes, n_clusters, target)
    if order is not None:
        X, y, codes = X[order], y[order], codes[order]
        offset = None if offset is None else offset[order]
    buckets = [pb.cluster_bucket(X[a:b], y[a:b], codes[a:b],
                                 None if offset is None else offset[a:b]) for a, b in bounds]
    fit = fit_poisson_buckets(ex.scatter(buckets), fnames, executor=ex,
                              add_intercept=add_intercept, tol=tol, max_iter=max_iter,
                              start=start)
    if order is not None:
        mu = np.empty(n)
        mu[order] = fit.fitted
        fit = replace(fit, fitted=mu)
    return fit


def _cluster_ranges(codes: np.ndarray, n_clusters: int, n_buckets: int):
    """About ``n_buckets`` row ranges of whole clusters, and ``order``: a cluster-sorted
    permutation of the rows, or None when each cluster's rows already sit together."""
    n = codes.size
    if n_buckets <= 1 or n_clusters <= 1:
        return None, [(0, n)]
    order = None
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    if starts.size != n_clusters:  # some cluster's rows are not together
        order = np.argsort(codes, kind="stable")
        sc = codes[order]
        starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
    cuts = np.unique(starts[np.clip(np.searchsorted(starts, np.linspace(0, n, n_buckets + 1)[
        1:-1]), 0, starts.size - 1)])
    edges = [0, *[int(c) for c in cuts if 0 < c < n], n]
    return order, [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def reduce_summaries(parts: list[dict]) -> dict:
    """Combine ``poisson_buckets.summarize`` results (bucket order)."""
    s = dict(parts[0])
    for q in parts[1:]:
        for key in ("lo", "plo"):
            s[key] = np.minimum(s[key], q[key])
        for key in ("hi", "phi"):
            s[key] = np.maximum(s[key], q[key])
        for key in ("n_rows", "n_clusters", "y_sum", "sum_ylogy", "sum_lgamma", "exposure"):
            s[key] = s[key] + q[key]
    return s


def fit_poisson_buckets(
    handles,
    feature_names: Sequence[str],
    *,
    executor: execution.Executor,
    add_intercept: bool = True,
    tol: float = 1e-10,
    max_iter: int = 100,
    start: np.ndarray | None = None,
) -> PoissonFit:
    """The population fit from buckets of whole clusters (``poisson_buckets.ClusterBucket``, as
    placed by ``executor.scatter``): each pass is one ``executor.map`` of a pure per-bucket
    function; the driver sends coefficients and sums k-vectors and k x k matrices. ``fitted`` is
    in bucket order."""
    fnames = tuple(str(n) for n in feature_names)
    s = reduce_summaries(executor.map(pb.summarize, handles))
    n, n_clusters = s["n_rows"], s["n_clusters"]
    names = ((INTERCEPT_NAME,) if add_intercept else ()) + fnames
    k = len(names)
    y_sum = s["y_sum"]
    if y_sum <= 0:
        raise EstimationError("no events: the outcome is zero on every row, so no rate ratio "
                              "can be estimated", reason="no_events")
    if n_clusters < 2:
        raise EstimationError(f"cluster-robust errors need at least 2 clusters, got {n_clusters}",
                              reason="too_few_clusters")
    if n <= k:
        raise EstimationError(f"{n} rows for {k} coefficients", reason="invalid_input")
    lo, hi = s["lo"], s["hi"]
    raise_if_not_finite(fnames, lo, hi)
    _check_identifiable(fnames, lo, hi, s["plo"], s["phi"], add_intercept)
    sum_ylogy = s["sum_ylogy"]
    ic = 1 if add_intercept else 0
    last_beta = [np.zeros(k)]

    def evaluate(beta: np.ndarray, hessian: bool):
        step = beta - last_beta[0]
        last_beta[0] = beta.copy()
        parts = executor.map(pb.newton_pass, handles, beta, step, add_intercept, hessian)
        ll = sum(q[0] for q in parts)
        grad = sum(q[1] for q in parts)
        H = sum(q[2] for q in parts) if hessian else None
        return ll, grad, H, max(q[3] for q in parts)

    beta = np.zeros(k)
    if add_intercept:
        with np.errstate(divide="ignore", over="ignore"):
            beta[0] = np.log(y_sum / s["exposure"])
    if not np.all(np.isfinite(beta)):
        raise EstimationError("offset makes the starting rate infinite", reason="invalid_input")
    warm = np.asarray(start, dtype=np.float64) if start is not None else warm_start(
        lambda _: fit_poisson_buckets(
            executor.apply(pb.subsample, handles, estimation.WARM_START_STRIDE),
            fnames, executor=executor, add_intercept=add_intercept, tol=WARM_START_TOL).coef, n)
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
    with single_threaded_blas():
        finals = executor.map(pb.final_pass, handles, beta, add_intercept)
    raise_if_separated_by(fnames, np.abs(beta[ic:]) * (hi - lo), y_sum,
                          sum(f["n_mu_pos"] for f in finals),
                          min((f["min_mu_zero_y"] for f in finals), default=np.inf), n_iter, "")
    factor = cluster_correction(n_clusters, n, k)
    cov, cov_model = sandwich(H, None, factor, meat=sum(f["meat"] for f in finals))
    deviance = 2 * (sum_ylogy - y_sum - ll)
    pearson = sum(f["pearson_pos"] for f in finals) - 2 * y_sum + sum(f["mu_sum"] for f in finals)
    return PoissonFit(
        names=names, coef=beta, cov_cluster=cov, cov_model=cov_model,
        **inference(beta, cov), fitted=estimation.gathered_fitted([f["fitted"] for f in finals]),
        n_obs=n,
        n_clusters=n_clusters, converged=converged, n_iter=n_iter, deviance=float(deviance),
        pearson_chi2=float(pearson), df_resid=n - k, loglik=float(ll - s["sum_lgamma"]),
        has_intercept=add_intercept, small_sample_factor=factor)
