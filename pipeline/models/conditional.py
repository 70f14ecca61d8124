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

Each pass is a sum over subject buckets: a pure function of one bucket of whole subjects
(``conditional_buckets.py``) returns the bucket's log-likelihood, score and information, and an
executor (``pipeline/execution.py``: threads here, Dask workers elsewhere) decides where it runs;
``fit_conditional_buckets`` is the driver, ``fit_conditional_poisson`` cuts an in-memory design
into buckets. A cluster never crosses buckets, so the sandwich's meat is a sum over buckets too.

Numerics: exp() is taken around each subject's largest linear predictor, so it stays in range
whatever the start; the Hessian is accumulated as total minus between-subject part
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
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline import execution
from pipeline.models import conditional_buckets as cb
from pipeline.models import estimation
from pipeline.models.estimation import (
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
    executor: execution.Executor | None = None,
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
    ``executor`` (default: ``execution.for_design``, the run's executor, or the driver's
    own pool for a small in-memory design when the run's is remote) runs the per-bucket passes; the
    rows are cut into buckets of whole groups and clusters (``fit_conditional_buckets``).

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
    same = clusters is groups
    if not same:
        cl_codes, _ = encode_labels(clusters, n, "clusters")
        cl_codes = G.arrange(cl_codes)
    X, y = G.arrange(X), G.arrange(y)
    ex = executor or execution.for_design(X.nbytes + y.nbytes)
    bounds = _bucket_bounds(G, None if same else cl_codes, _bucket_target(ex, len(G.blocks)))
    buckets = []
    for g0, g1 in bounds:
        rs = G.rows(g0, g1)
        buckets.append(cb.grouped_bucket(X[rs], y[rs], G.codes[rs],
                                         None if same else cl_codes[rs]))
    fit = fit_conditional_buckets(ex.scatter(buckets), names, executor=ex, tol=tol,
                                  max_iter=max_iter, start=start)
    labels = G.arrange(np.asarray(groups).ravel())[G.starts]
    mu = fit.fitted
    if G.order is not None:
        mu = np.empty(n)
        mu[G.order] = fit.fitted
    return replace(fit, fitted=mu, group_labels=labels)


def _bucket_target(executor, n_blocks: int) -> int:
    """Buckets for an in-memory design: one per worker thread locally (each at least
    MIN_BLOCKS_PER_WORKER blocks, else fewer), two per worker on a cluster."""
    if isinstance(executor, execution.LocalExecutor):
        return min(estimation.worker_count(n_blocks), max(1, executor.workers))
    return max(1, 2 * executor.workers)


def _bucket_bounds(G: _Groups, cl_codes: np.ndarray | None, n_buckets: int):
    """``n_buckets`` (or fewer) contiguous ranges of whole groups of about equal rows, cut only
    where no cluster spans the cut (so a cluster never crosses buckets)."""
    n = int(G.counts.sum())
    if n_buckets <= 1 or G.n_groups <= 1:
        return [(0, G.n_groups)]
    valid = np.ones(G.n_groups, dtype=bool)  # may a bucket start at group g?
    if cl_codes is not None:
        rows = np.arange(n)
        k = int(cl_codes.max()) + 1
        first = np.full(k, n)
        last = np.zeros(k, dtype=np.intp)
        np.minimum.at(first, cl_codes, rows)
        np.maximum.at(last, cl_codes, rows)
        cover = np.zeros(n + 1, dtype=np.intp)  # clusters open across each row boundary
        np.add.at(cover, first + 1, 1)
        np.add.at(cover, last + 1, -1)
        valid = np.cumsum(cover)[G.starts] == 0
    cuts = np.searchsorted(G.starts, np.linspace(0, n, n_buckets + 1)[1:-1])
    cuts = [int(c) for c in cuts if 0 < c < G.n_groups]
    starts = np.flatnonzero(valid)
    chosen = sorted({int(starts[min(np.searchsorted(starts, c), starts.size - 1)])
                     for c in cuts} - {0})
    edges = [0, *chosen, G.n_groups]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def reduce_summaries(parts: list[dict]) -> dict:
    """Combine ``conditional_buckets.summarize`` results (bucket order)."""
    s = dict(parts[0])
    for q in parts[1:]:
        s["lo"] = np.minimum(s["lo"], q["lo"])
        s["hi"] = np.maximum(s["hi"], q["hi"])
        s["varies"] = s["varies"] | q["varies"]
        s["sep_low"] = s["sep_low"] & q["sep_low"]
        s["sep_high"] = s["sep_high"] & q["sep_high"]
        s["within_range"] = np.maximum(s["within_range"], q["within_range"])
        s["nested"] = s["nested"] and q["nested"]
        s["max_block_rows"] = max(s["max_block_rows"], q["max_block_rows"])
        for key in ("n_rows", "n_groups", "n_used_groups", "n_obs", "y_sum",
                    "n_clusters_with_events", "sum_ylogy", "sum_lgamma"):
            s[key] = s[key] + q[key]
    return s


def fit_conditional_buckets(
    handles: Sequence,
    feature_names: Sequence[str],
    *,
    executor: execution.Executor,
    tol: float = 1e-10,
    max_iter: int = 100,
    start: np.ndarray | None = None,
) -> ConditionalPoissonFit:
    """The within-subject fit from buckets of whole groups (``conditional_buckets.GroupedBucket``,
    as placed by ``executor.scatter``): every pass is one ``executor.map`` of a pure per-bucket
    function, and the driver only sends coefficients and sums p-vectors and p x p matrices.
    ``fitted``, ``fixed_effects`` and ``group_labels`` are in bucket order (labels: 0..G-1).
    The result does not depend on how subjects are spread over buckets beyond the order of
    floating-point summation."""
    names = tuple(str(n) for n in feature_names)
    p = len(names)
    s = reduce_summaries(executor.map(cb.summarize, handles))
    if s["n_used_groups"] == 0:
        raise EstimationError("no events: every subject has zero episodes, so no within-subject "
                              "rate ratio can be estimated", reason="no_events")
    n_clusters = s["n_clusters_with_events"]
    if n_clusters < 2:
        raise EstimationError(f"cluster-robust errors need at least 2 clusters with events, got "
                              f"{n_clusters}", reason="too_few_clusters")
    raise_if_not_finite(names, s["lo"], s["hi"])
    flat = [names[j] for j in np.flatnonzero(~s["varies"])]
    if flat:
        raise EstimationError(
            f"features without within-subject variation (constant within every subject with "
            f"episodes, so absorbed by the subject effects): {', '.join(flat)}",
            reason="no_variation", features=flat)
    sep = [names[j] for j in np.flatnonzero(s["sep_low"] | s["sep_high"])]
    if sep:
        raise EstimationError(
            "within-subject separation: within every subject, all days with episodes have that "
            f"subject's lowest (or highest) value of {', '.join(sep)}, so its rate ratio is 0 or "
            "infinite and cannot be estimated", reason="separation", features=sep)
    n_obs, n_used_groups = s["n_obs"], s["n_used_groups"]
    if n_obs <= p + n_used_groups:
        raise EstimationError(f"{n_obs} rows for {p} coefficients and {n_used_groups} subject "
                              "effects", reason="invalid_input")
    y_sum, sum_ylogy = s["y_sum"], s["sum_ylogy"]
    centre = (s["lo"] + s["hi"]) / 2
    cancellation = [1.0]
    last_beta = [np.zeros(p)]  # the previous pass's coefficients (drift of the predictors)

    def evaluate(beta: np.ndarray, hessian: bool):
        step = beta - last_beta[0]
        last_beta[0] = beta.copy()
        parts = executor.map(cb.newton_pass, handles, beta, step, centre, hessian)
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

    if start is not None:
        beta0 = np.asarray(start, dtype=np.float64)
        if beta0.shape != (p,) or not np.all(np.isfinite(beta0)):
            raise EstimationError(f"start must hold {p} finite values", reason="invalid_input")
    else:
        beta0 = warm_start(lambda _: fit_conditional_buckets(
            executor.apply(cb.subsample, handles, estimation.WARM_START_STRIDE),
            names, executor=executor, tol=WARM_START_TOL).coef, s["n_rows"])
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
    exact = cancellation[0] > CANCELLATION_LIMIT
    with single_threaded_blas():
        finals = executor.map(cb.final_pass, handles, beta, exact, centre)
    n_mu_pos = sum(f["n_mu_pos"] for f in finals)
    min_mu = min((f["min_mu_zero_y"] for f in finals), default=np.inf)
    raise_if_separated_by(names, np.abs(beta) * s["within_range"], y_sum, n_mu_pos, min_mu,
                          n_iter, " within-subject")
    if exact:
        H = sum(f["exact_hessian"] for f in finals)
    nested = s["nested"]
    k = p if nested else p + n_used_groups
    factor = cluster_correction(n_clusters, n_obs, k)
    cov, cov_model = sandwich(H, None, factor, meat=sum(f["meat"] for f in finals))
    mu_sum = sum(f["mu_sum"] for f in finals)
    pearson = sum(f["pearson_pos"] for f in finals) - 2 * y_sum + mu_sum
    deviance = 2 * (sum_ylogy - y_sum - ll)
    loglik = ll - s["sum_lgamma"]
    fitted = estimation.gathered_fitted([f["fitted"] for f in finals])
    fe = np.concatenate([f["fixed_effects"] for f in finals])
    return ConditionalPoissonFit(
        names=names, coef=beta, cov_cluster=cov, cov_model=cov_model,
        **inference(beta, cov), fitted=fitted, group_labels=np.arange(fe.size),
        fixed_effects=fe, n_obs=n_obs, n_obs_dropped=s["n_rows"] - n_obs,
        n_groups_used=n_used_groups, n_groups_dropped_all_zero=s["n_groups"] - n_used_groups,
        n_clusters=n_clusters, converged=converged, n_iter=n_iter, deviance=float(deviance),
        pearson_chi2=float(pearson), df_resid=n_obs - p - n_used_groups, loglik=float(loglik),
        small_sample_factor=factor, groups_nested_in_clusters=nested)
