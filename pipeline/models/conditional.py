"""Within-subject Poisson regression: subject fixed effects concentrated out (conditional Poisson).

The `within_subject` model of ``effects.csv``. Each subject gets its own baseline rate, so a
feature's rate ratio compares a person's days with that same person's other days and cannot be
driven by people who, say, sit more also cramping more for other reasons.

For fixed beta the subject effects have the closed form alpha_g = log(Y_g / sum_{i in g}
exp(x_i'beta)) (Y_g = the subject's total count), so the profile likelihood in beta alone is the
conditional multinomial likelihood: the fixed-effects Poisson MLE equals the conditional Poisson
estimator (Hausman, Hall & Griliches 1984; statsmodels ``ConditionalPoisson``). We run Newton on
beta with gradient sum_i x_i (y_i - mu_i) and Hessian sum_i mu_i (x_i - xbar_g)(x_i - xbar_g)',
xbar_g the mu-weighted subject means (within-subject weighted demeaning). No dummy column is ever
formed: rows are processed in blocks of whole subjects with ``np.add.reduceat``, so each Newton
iteration is one pass over X whatever the number of subjects (3 to 5 passes in all).

Numerics: the per-subject scale is carried between passes so exp() stays in range (recentred per
subject if a start is far off); the Hessian is accumulated as total minus between-subject part
around a fixed centre, and recomputed by explicit demeaning when that subtraction would cost more
than 6 digits (a feature whose between-subject spread dwarfs its within-subject spread).

Subjects with no events carry no information (their alpha is -inf, fitted rates 0): they are
dropped from the counts and reported (``n_groups_dropped_all_zero``). Subjects with the same
positive count every day are kept: they do inform beta when x varies. (statsmodels'
``ConditionalPoisson`` drops every group whose outcome has no variance, so it differs from the FE
MLE when such subjects exist; tests/test_models_reference.py shows both cases.)

Small-sample correction of the clustered sandwich: G/(G-1) * (N-1)/(N-K), CRV1 as statsmodels,
with N the rows of subjects used and K the number of slope coefficients only when the subjects are
nested in the clusters (the default: clusters = subjects) - fixed effects nested in clusters are
not counted (fixest's ``fixef.K = "nested"``), because their cluster-score sums are identically
zero. When subjects are not nested in clusters, K also counts the used subject effects. A
statsmodels GLM with explicit subject dummies counts them, K = p + G; its covariance is therefore
ours times (N-p-G)/(N-p) (tests/test_models_reference.py checks this). Inference: normal
reference, as for the population model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.models import estimation
from pipeline.models.estimation import (
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
    sandwich,
    single_threaded_blas,
    warm_start,
)


@dataclass(frozen=True)
class ConditionalPoissonFit:
    """A fitted within-subject Poisson model; arrays aligned with ``names`` (features only).
    ``fitted`` (in the caller's row order) includes the concentrated subject effects, so it sums
    to the observed count within every subject (0 for subjects without events).
    ``group_labels`` lists every group (in row order of first appearance after grouping) and
    ``fixed_effects`` its log baseline rate alpha_g (-inf for a group without events).
    ``n_obs``/``df_resid`` count only rows of groups with events; ``small_sample_factor`` is the
    CRV1 factor applied (see the module docstring)."""

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
    group_labels: np.ndarray = field(repr=False)
    fixed_effects: np.ndarray = field(repr=False)
    n_obs: int
    n_obs_dropped: int
    n_groups_used: int
    n_groups_dropped_all_zero: int
    n_clusters: int
    converged: bool
    n_iter: int
    deviance: float
    pearson_chi2: float
    df_resid: int
    loglik: float
    small_sample_factor: float
    groups_nested_in_clusters: bool

    @property
    def dispersion(self) -> float:
        return self.pearson_chi2 / self.df_resid if self.df_resid > 0 else float("nan")


# The fast Hessian subtracts the between-subject part from the total; when that loses more than
# 6 of 16 digits for some feature the covariance uses an explicitly demeaned Hessian instead.
CANCELLATION_LIMIT = 1e6
# |x'beta + a| beyond which exp() is recentred per group (exp overflows near 709).
EXP_SAFE = 300.0


class _Groups:
    """Rows arranged in contiguous groups: ``order`` (None when the input already is), group
    ``starts``/``counts`` and row blocks made of whole groups."""

    def __init__(self, groups: np.ndarray, n: int):
        codes, n_groups = encode_labels(groups, n, "groups")
        self.order = None
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if n else np.zeros(
            0, dtype=np.intp)
        if starts.size != n_groups:
            # Some group's rows are not contiguous: one group-sorted copy of the data.
            self.order = np.argsort(codes, kind="stable")
            codes = codes[self.order]
            starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        self.starts = starts
        self.counts = np.diff(np.r_[starts, n])
        self.n_groups = n_groups
        # Groups numbered in row order (already so for sorted labels).
        self.codes = np.repeat(np.arange(n_groups, dtype=np.int32), self.counts)
        # Blocks of whole groups of about CHUNK_ROWS rows each.
        targets = np.arange(0, n, estimation.CHUNK_ROWS)
        first = np.unique(np.searchsorted(self.starts, targets, side="left"))
        first = first[first < n_groups]
        bounds = np.r_[first, n_groups]
        self.blocks = [(int(g0), int(g1)) for g0, g1 in zip(bounds[:-1], bounds[1:]) if g1 > g0]

    def rows(self, g0: int, g1: int) -> slice:
        start = int(self.starts[g0])
        stop = int(self.starts[g1]) if g1 < self.n_groups else int(self.starts[-1] +
                                                                     self.counts[-1])
        return slice(start, stop)

    def arrange(self, a: np.ndarray) -> np.ndarray:
        return a if self.order is None else a[self.order]


def _group_ranges(X: np.ndarray, y: np.ndarray, G: _Groups):
    """Per group and column: min, max, and min/max over rows with a positive outcome (inf/-inf
    for a group without one). Blocks are transposed into a buffer so that every reduction runs
    along contiguous memory."""
    p = X.shape[1]
    out = {k: np.empty((G.n_groups, p)) for k in ("lo", "hi")}
    out["plo"] = np.full((G.n_groups, p), np.inf)
    out["phi"] = np.full((G.n_groups, p), -np.inf)
    buf = np.empty((p, max(G.rows(g0, g1).stop - G.rows(g0, g1).start for g0, g1 in G.blocks)))
    for g0, g1 in G.blocks:
        rs = G.rows(g0, g1)
        XT = buf[:, :rs.stop - rs.start]
        np.copyto(XT, X[rs].T)
        loc = G.starts[g0:g1] - rs.start
        out["lo"][g0:g1] = np.minimum.reduceat(XT, loc, axis=1).T
        out["hi"][g0:g1] = np.maximum.reduceat(XT, loc, axis=1).T
        pos = y[rs] > 0
        if pos.any():
            # Rows with events keep their group order: reduce over runs of the same group.
            gpos = G.codes[rs][pos]
            run = np.flatnonzero(np.r_[True, gpos[1:] != gpos[:-1]])
            XpT = XT[:, pos]
            out["plo"][gpos[run]] = np.minimum.reduceat(XpT, run, axis=1).T
            out["phi"][gpos[run]] = np.maximum.reduceat(XpT, run, axis=1).T
    return out


def within_group_variation(X: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """For each column of ``X``: does it vary within at least one group? A column that is
    constant within every group has no within-subject information (its effect is absorbed by the
    subject effects)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    G = _Groups(groups, X.shape[0])
    R = _group_ranges(G.arrange(X), np.zeros(X.shape[0]), G)
    varies = np.any(R["hi"] > R["lo"], axis=0)
    return varies


def fit_conditional_poisson(
    X: np.ndarray,
    y: np.ndarray,
    *,
    groups: np.ndarray,
    clusters: np.ndarray,
    feature_names: Sequence[str],
    tol: float = 1e-10,
    max_iter: int = 100,
    start: np.ndarray | None = None,
) -> ConditionalPoissonFit:
    """Poisson regression with a fixed effect per group, concentrated out; clustered sandwich.

    ``cov_cluster``: CRV1 sandwich, factor G/(G-1) * (N-1)/(N-K) with N the rows of groups with
    events, G the clusters among them, and K = the number of features when groups are nested in
    clusters (the subject effects are not counted, as in fixest), K = features + groups used
    otherwise. Normal reference for z, p-values and 95% CIs.

    Rows need not be sorted by group; when they are not, one group-sorted copy of X is made
    (sorted input, as a subject-day panel is, is used in place). Convergence: relative deviance
    change < tol and Newton decrement g'H^-1 g < tol, as in ``fit_poisson``. ``start``
    (optional): starting coefficients, e.g. from a related model (a dose-response refit).

    Raises ``EstimationError`` for features with no within-group variation (among groups with
    events), within-group separation (every day with events at the subject's lowest, or highest,
    value of a feature), collinearity after removing the group means, no events, fewer than two
    clusters, or non-convergence.

    >>> rng = np.random.default_rng(1)
    >>> subj = np.repeat(np.arange(40), 20); x = rng.normal(size=(800, 1)) + subj[:, None] % 3
    >>> y = rng.poisson(np.exp(rng.normal(size=40)[subj] + 0.4 * x[:, 0]))
    >>> fit = fit_conditional_poisson(x, y, groups=subj, clusters=subj, feature_names=["x"])
    >>> bool(abs(fit.coef[0] - 0.4) < 0.15)
    True
    >>> per_subject = np.bincount(subj, weights=fit.fitted)
    >>> bool(np.allclose(per_subject, np.bincount(subj, weights=y)))
    True
    """
    X, y, names = as_design(X, y, feature_names)
    n, p = X.shape
    G = _Groups(groups, n)
    if clusters is groups:
        cl_codes = G.codes if G.order is None else np.empty_like(G.codes)
        if G.order is not None:
            cl_codes[G.order] = G.codes
    else:
        cl_codes, _ = encode_labels(clusters, n, "clusters")
    X, y, cl_codes = G.arrange(X), G.arrange(y), G.arrange(cl_codes)
    starts, counts = G.starts, G.counts
    Yg = np.add.reduceat(y, starts) if n else np.zeros(0)
    used = Yg > 0
    n_used_groups = int(used.sum())
    if n_used_groups == 0:
        raise EstimationError("no events: every subject has zero episodes, so no within-subject "
                              "rate ratio can be estimated", reason="no_events")
    used_rows = np.repeat(used, counts)
    n_obs = int(counts[used].sum())
    n_clusters = int(np.count_nonzero(np.bincount(cl_codes, weights=used_rows)))
    if n_clusters < 2:
        raise EstimationError(f"cluster-robust errors need at least 2 clusters with events, got "
                              f"{n_clusters}", reason="too_few_clusters")

    R = _group_ranges(X, y, G)
    raise_if_not_finite(names, R["lo"].min(axis=0), R["hi"].max(axis=0))
    lo, hi, plo, phi = (R[k][used] for k in ("lo", "hi", "plo", "phi"))
    varies = np.any(hi > lo, axis=0)
    flat = [names[j] for j in np.flatnonzero(~varies)]
    if flat:
        raise EstimationError(
            f"features without within-subject variation (constant within every subject with "
            f"episodes, so absorbed by the subject effects): {', '.join(flat)}",
            reason="no_variation", features=flat)
    sep = [names[j] for j in range(p)
           if np.all(phi[:, j] <= lo[:, j]) or np.all(plo[:, j] >= hi[:, j])]
    if sep:
        raise EstimationError(
            "within-subject separation: within every subject, all days with episodes have that "
            f"subject's lowest (or highest) value of {', '.join(sep)}, so its rate ratio is 0 or "
            "infinite and cannot be estimated", reason="separation", features=sep)
    if n_obs <= p + n_used_groups:
        raise EstimationError(f"{n_obs} rows for {p} coefficients and {n_used_groups} subject "
                              "effects", reason="invalid_input")
    within_range = np.max(hi - lo, axis=0)

    fitted = np.zeros(n)
    eta_prev = np.zeros(n)
    # Current log group scale: only keeps exp() in range, the pass is exact whatever its value.
    log_scale = np.zeros(G.n_groups)
    log_scale[used] = np.log(Yg[used] / counts[used])
    xbar = np.zeros((G.n_groups, p))
    sum_ylogy, sum_lgamma = count_constants(y)  # rows of dropped groups have y = 0
    y_sum = float(Yg.sum())

    m = max(int(G.rows(g0, g1).stop - G.rows(g0, g1).start) for g0, g1 in G.blocks)
    # Work buffers per worker, reused by every block (fresh temporaries per block cost page
    # faults): eta, exp, residual, scratch, z = x - centre, and mu-weighted z transposed.
    buffers = [(np.empty(m), np.empty(m), np.empty(m), np.empty(m), np.empty((m, p)),
                np.empty((p, m))) for _ in range(estimation.worker_count(len(G.blocks)))]
    centre = (R["lo"].min(axis=0) + R["hi"].max(axis=0)) / 2
    codes = G.codes

    def work(part, worker: int, beta: np.ndarray, hessian: bool):
        """Profile log-likelihood kernel, gradient, optionally the total and between-subject
        parts of the Hessian (storing the weighted group means in ``xbar``), and the largest
        change of x'beta since the last pass, over some blocks of whole groups; fills ``fitted``
        and updates ``log_scale`` for those groups."""
        eta_buf, e_buf, r_buf, tmp_buf, z_buf, wT_buf = buffers[worker]
        grad = np.zeros(p)
        total = np.zeros((p, p)) if hessian else None
        between = np.zeros((p, p)) if hessian else None
        ll = 0.0
        drift = 0.0
        for g0, g1 in part:
            rs = G.rows(g0, g1)
            rows = rs.stop - rs.start
            Xc, yc, cc = X[rs], y[rs], codes[rs]
            eta, e, r, tmp = eta_buf[:rows], e_buf[:rows], r_buf[:rows], tmp_buf[:rows]
            loc = starts[g0:g1] - rs.start
            np.matmul(Xc, beta, out=eta)
            old = eta_prev[rs]
            np.subtract(old, eta, out=tmp)
            drift = max(drift, float(np.abs(tmp, out=tmp).max()))
            old[:] = eta
            np.add(eta, np.take(log_scale, cc, out=tmp), out=e)
            if not -EXP_SAFE < e.min() <= e.max() < EXP_SAFE:
                # Far from the current scale (a distant start): recentre each group on its own
                # maximum before exp(); the result does not depend on the centring.
                shift = np.maximum.reduceat(e, loc)
                log_scale[g0:g1] -= shift
                e -= np.take(shift, cc - g0, out=tmp)
            np.exp(e, out=e)
            S = np.add.reduceat(e, loc)
            ok = used[g0:g1]
            scale = np.zeros(g1 - g0)
            scale[ok] = Yg[g0:g1][ok] / S[ok]
            mu = np.multiply(e, np.take(scale, cc - g0, out=tmp), out=fitted[rs])
            a = log_scale[g0:g1]
            a[ok] += np.log(scale[ok])
            # log mu_i = x_i'beta + a_g, so sum y log mu = y'eta + sum_g Y_g a_g.
            ll += float(yc @ eta) + float(Yg[g0:g1][ok] @ a[ok])
            grad += Xc.T @ np.subtract(yc, mu, out=r)
            if hessian:
                # sum_i mu_i (x_i - xbar_g)(x_i - xbar_g)'
                #   = sum_i mu_i z_i z_i' - sum_g B_g B_g' / Y_g
                # with z = x - centre and B_g = sum_{i in g} mu_i z_i: no per-row demeaning, and
                # the fixed centre (mid-range) keeps the subtraction well conditioned.
                z = np.subtract(Xc, centre, out=z_buf[:rows])
                wT = np.multiply(z.T, mu, out=wT_buf[:, :rows])
                total += wT @ z
                B = np.add.reduceat(wT, loc, axis=1).T
                Bs = B / np.where(ok, Yg[g0:g1], 1.0)[:, None]
                between += B.T @ Bs
                xbar[g0:g1] = Bs + centre
        return ll, grad, total, between, drift

    def evaluate(beta: np.ndarray, hessian: bool):
        """One pass over all blocks (split between workers)."""
        parts = map_blocks(lambda part, w: work(part, w, beta, hessian), G.blocks, len(buffers))
        ll = sum(q[0] for q in parts) - y_sum
        grad = sum(q[1] for q in parts)
        H = None
        if hessian:
            total = sum(q[2] for q in parts)
            H = total - sum(q[3] for q in parts)
            # Digits lost to the subtraction: log10 of total / within, per feature.
            with np.errstate(divide="ignore", invalid="ignore"):
                cancellation[0] = float(np.nanmax(np.diag(total) / np.diag(H)))
        return ll, grad, H, max(q[4] for q in parts)

    cancellation = [1.0]

    def exact_hessian() -> np.ndarray:
        """sum_i mu_i (x_i - xbar_g)(x_i - xbar_g)' by explicit demeaning, for designs whose
        between-subject spread dwarfs the within-subject one (see CANCELLATION_LIMIT)."""
        *_, z_buf, wT_buf = buffers[0]
        H = np.zeros((p, p))
        for g0, g1 in G.blocks:
            rs = G.rows(g0, g1)
            rows = rs.stop - rs.start
            xt = np.take(xbar, codes[rs], axis=0, out=z_buf[:rows])
            np.subtract(X[rs], xt, out=xt)
            wT = np.multiply(xt.T, fitted[rs], out=wT_buf[:, :rows])
            H += wT @ xt
        return H

    # Every 16th row of the group-sorted data is still group-sorted.
    if start is not None:
        beta0 = np.asarray(start, dtype=np.float64)
        if beta0.shape != (p,) or not np.all(np.isfinite(beta0)):
            raise EstimationError(f"start must hold {p} finite values", reason="invalid_input")
    else:
        beta0 = warm_start(lambda sl: fit_conditional_poisson(
            X[sl], y[sl], groups=G.codes[sl], clusters=cl_codes[sl], feature_names=names,
            tol=WARM_START_TOL).coef, n)
    if beta0 is None:
        beta0 = np.zeros(p)

    def first_hessian_check(H):
        raise_if_rank_deficient(H, names)

    with single_threaded_blas():
        res = maximize(evaluate, beta0, deviance_of=lambda ll: 2 * (sum_ylogy - y_sum - ll),
                       tol=tol, max_iter=max_iter, check_hessian=first_hessian_check)
    beta, ll, H, n_iter, converged = res.beta, res.loglik_kernel, res.hessian, res.n_iter, \
        res.converged
    if not converged:
        raise EstimationError(
            f"within-subject Poisson fit did not converge in {max_iter} iterations (check for "
            "separation)", reason="not_converged", features=list(names))
    raise_if_separated(names, np.abs(beta) * within_range, fitted, y, n_iter, " within-subject")
    if cancellation[0] > CANCELLATION_LIMIT:
        H = exact_hessian()

    mu = fitted
    r = y - mu

    z_buf = buffers[0][4]

    def scores(sl):
        xt = np.take(xbar, codes[sl], axis=0, out=z_buf[:sl.stop - sl.start])
        np.subtract(X[sl], xt, out=xt)
        return np.multiply(xt, r[sl, None], out=xt)

    row_slices = [G.rows(g0, g1) for g0, g1 in G.blocks]
    S = cluster_score_sums(scores, row_slices, cl_codes, int(cl_codes.max()) + 1, p)
    group_cluster = cl_codes[starts]
    nested = bool(np.array_equal(cl_codes, np.repeat(group_cluster, counts))) if not (
        clusters is groups) else True
    k = p if nested else p + n_used_groups
    factor = cluster_correction(n_clusters, n_obs, k)
    cov, cov_model = sandwich(H, S, factor)

    pearson = pearson_chi2(y, mu)
    deviance = 2 * (sum_ylogy - y_sum - ll)
    loglik = ll - sum_lgamma
    fe = np.full(G.n_groups, -np.inf)
    with np.errstate(divide="ignore"):
        # alpha_g = log(Y_g / sum exp(x'beta)) = log_scale_g (exp(eta + a) * scale = mu).
        fe[used] = log_scale[used]
    labels = G.arrange(np.asarray(groups).ravel())[starts]
    if G.order is not None:
        out = np.empty(n)
        out[G.order] = mu
        mu = out
    return ConditionalPoissonFit(
        names=names, coef=beta, cov_cluster=cov, cov_model=cov_model,
        **inference(beta, cov), fitted=mu, group_labels=labels, fixed_effects=fe,
        n_obs=n_obs, n_obs_dropped=n - n_obs,
        n_groups_used=n_used_groups, n_groups_dropped_all_zero=G.n_groups - n_used_groups,
        n_clusters=n_clusters, converged=converged, n_iter=n_iter, deviance=float(deviance),
        pearson_chi2=pearson, df_resid=n_obs - p - n_used_groups, loglik=float(loglik),
        small_sample_factor=factor, groups_nested_in_clusters=nested)
