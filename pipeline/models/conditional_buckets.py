"""The within-subject estimator's work on ONE BUCKET of whole subjects, as pure functions.

``conditional.py`` drives Newton on the sums these return; an executor (``pipeline/execution.py``)
decides where each bucket's function runs (a thread here, a Dask worker elsewhere). A bucket holds
all rows of some subjects (groups), rows of a group contiguous; clusters never cross buckets (a
cluster is a subject, or a set of whole subjects). Nothing here keeps state between calls: the
per-subject scale that keeps exp() in range is recomputed each pass (from the group's own maximum
linear predictor), and the drift of the linear predictors since the previous pass is computed from
the coefficient change the driver sends. Every function returns sums (vectors, p x p matrices) or
per-subject values, never anything that depends on the other buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.models import estimation
from pipeline.models.estimation import count_constants, encode_labels


@dataclass(frozen=True)
class GroupedBucket:
    """One bucket: ``X`` (rows x p), ``y``, group code per row (0..G_b-1, contiguous runs) and
    cluster code per row (0..C_b-1). Build with ``grouped_bucket``."""

    X: np.ndarray
    y: np.ndarray
    codes: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    Yg: np.ndarray
    clusters: np.ndarray
    n_clusters: int
    blocks: tuple[tuple[int, int], ...]

    @property
    def n_groups(self) -> int:
        return int(self.starts.size)

    def rows(self, g0: int, g1: int) -> slice:
        stop = int(self.starts[g1]) if g1 < self.n_groups else int(self.y.shape[0])
        return slice(int(self.starts[g0]), stop)


def resolve(bucket) -> GroupedBucket:
    """The bucket itself, or the ``GroupedBucket`` a ``design_buckets.DesignFile`` handle names,
    memory-mapped here (where this pass runs)."""
    if isinstance(bucket, GroupedBucket):
        return bucket
    from pipeline.models.design_buckets import load

    return load(bucket)


def grouped_bucket(X: np.ndarray, y: np.ndarray, groups: np.ndarray,
                   clusters: np.ndarray | None = None) -> GroupedBucket:
    """A bucket from arrays whose rows of one group are contiguous (``groups`` any labels;
    ``clusters`` None means one cluster per group)."""
    n = y.shape[0]
    g = np.asarray(groups).ravel()
    if n:
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    else:
        starts = np.zeros(0, dtype=np.intp)
    counts = np.diff(np.r_[starts, n]).astype(np.intp)
    codes = np.repeat(np.arange(starts.size, dtype=np.int32), counts)
    Yg = np.add.reduceat(y, starts) if n else np.zeros(0)
    if clusters is None:
        cl, n_cl = codes, int(starts.size)
    else:
        cl, n_cl = encode_labels(clusters, n, "clusters")
    # Blocks of whole groups of about CHUNK_ROWS rows each (cache-sized pieces of the bucket).
    targets = np.arange(0, n, estimation.CHUNK_ROWS)
    first = np.unique(np.searchsorted(starts, targets, side="left"))
    first = first[first < starts.size]
    bounds = np.r_[first, starts.size]
    blocks = tuple((int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a)
    return GroupedBucket(X=X, y=y, codes=codes, starts=starts, counts=counts, Yg=Yg,
                         clusters=cl, n_clusters=n_cl, blocks=blocks)


def subsample(bucket: GroupedBucket, stride: int) -> GroupedBucket:
    """Every ``stride``-th day of each group (its 1st, (stride+1)-th, ...): the warm start's
    subsample, the same whatever the bucketing (it depends only on each subject's own rows)."""
    bucket = resolve(bucket)
    n = bucket.y.shape[0]
    position = np.arange(n) - np.repeat(bucket.starts, bucket.counts)
    keep = np.flatnonzero(position % stride == 0)
    return grouped_bucket(np.asfortranarray(bucket.X[keep]), bucket.y[keep], bucket.codes[keep],
                          bucket.clusters[keep])


def summarize(bucket: GroupedBucket) -> dict:
    """Checks and counts before fitting, as reducible pieces (see ``conditional.reduce_summaries``):
    column minima/maxima over all rows; over groups with events, whether each column varies within
    some group, whether every group's event days sit at its minimum (maximum), and the largest
    within-group range; counts and the constant parts of the log-likelihood."""
    bucket = resolve(bucket)
    X, y = bucket.X, bucket.y
    p = X.shape[1]
    used = bucket.Yg > 0
    out = {
        "lo": np.full(p, np.inf), "hi": np.full(p, -np.inf),
        "varies": np.zeros(p, dtype=bool), "sep_low": np.ones(p, dtype=bool),
        "sep_high": np.ones(p, dtype=bool), "within_range": np.zeros(p),
        "n_rows": int(y.shape[0]), "n_groups": bucket.n_groups,
        "n_used_groups": int(used.sum()), "n_obs": int(bucket.counts[used].sum()),
        "y_sum": float(bucket.Yg.sum()), "max_block_rows": 0,
        "n_clusters_with_events": int(np.count_nonzero(np.bincount(
            bucket.clusters, weights=np.repeat(used, bucket.counts),
            minlength=bucket.n_clusters))) if y.shape[0] else 0,
        "nested": bool(np.array_equal(bucket.clusters, np.repeat(bucket.clusters[bucket.starts],
                                                                 bucket.counts))),
    }
    out["sum_ylogy"], out["sum_lgamma"] = count_constants(y)
    for g0, g1 in bucket.blocks:
        rs = bucket.rows(g0, g1)
        out["max_block_rows"] = max(out["max_block_rows"], rs.stop - rs.start)
        XT = np.ascontiguousarray(X[rs].T)  # reductions along contiguous rows are ~10x faster
        loc = bucket.starts[g0:g1] - rs.start
        lo = np.minimum.reduceat(XT, loc, axis=1).T
        hi = np.maximum.reduceat(XT, loc, axis=1).T
        np.minimum(out["lo"], lo.min(axis=0), out=out["lo"])
        np.maximum(out["hi"], hi.max(axis=0), out=out["hi"])
        plo = np.full((g1 - g0, p), np.inf)
        phi = np.full((g1 - g0, p), -np.inf)
        pos = y[rs] > 0
        if pos.any():
            gpos = bucket.codes[rs][pos] - g0
            run = np.flatnonzero(np.r_[True, gpos[1:] != gpos[:-1]])
            XpT = XT[:, pos]
            plo[gpos[run]] = np.minimum.reduceat(XpT, run, axis=1).T
            phi[gpos[run]] = np.maximum.reduceat(XpT, run, axis=1).T
        u = used[g0:g1]
        if u.any():
            lo_u, hi_u = lo[u], hi[u]
            out["varies"] |= np.any(hi_u > lo_u, axis=0)
            out["sep_low"] &= np.all(phi[u] <= lo_u, axis=0)
            out["sep_high"] &= np.all(plo[u] >= hi_u, axis=0)
            np.maximum(out["within_range"], np.max(hi_u - lo_u, axis=0), out=out["within_range"])
    return out


def _block_rates(bucket: GroupedBucket, rs: slice, loc: np.ndarray, g0: int, g1: int,
                 eta: np.ndarray):
    """Fitted rates mu (profiled subject effects) and log subject effects a_g for one block:
    a_g = log Y_g - log sum_{i in g} exp(eta_i), computed around each group's maximum m_g as
    log(Y_g / sum exp(eta_i - m_g)) - m_g."""
    cc = bucket.codes[rs] - g0
    shift = np.maximum.reduceat(eta, loc)
    e = np.exp(eta - shift[cc])
    S = np.add.reduceat(e, loc)
    Yg = bucket.Yg[g0:g1]
    ok = Yg > 0
    scale = np.where(ok, Yg / np.where(ok, S, 1.0), 0.0)
    mu = e * scale[cc]
    a = np.full(g1 - g0, -np.inf)
    a[ok] = np.log(scale[ok]) - shift[ok]
    return mu, a, ok, cc


def newton_pass(bucket: GroupedBucket, beta: np.ndarray, step: np.ndarray, centre: np.ndarray,
                hessian: bool):
    """One Newton pass over the bucket at ``beta``: (profile log-likelihood kernel sum y log mu,
    gradient, total and between-subject parts of the Hessian around ``centre`` or None, the
    largest |x'step| = change of any linear predictor since the previous pass at beta - step)."""
    bucket = resolve(bucket)
    p = beta.shape[0]
    grad = np.zeros(p)
    total = np.zeros((p, p)) if hessian else None
    between = np.zeros((p, p)) if hessian else None
    ll = 0.0
    drift = 0.0
    B2 = np.column_stack([beta, step])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for g0, g1 in bucket.blocks:
            rs = bucket.rows(g0, g1)
            Xc, yc = bucket.X[rs], bucket.y[rs]
            loc = bucket.starts[g0:g1] - rs.start
            E = Xc @ B2
            eta = E[:, 0]
            drift = max(drift, float(np.abs(E[:, 1]).max()))
            mu, a, ok, _ = _block_rates(bucket, rs, loc, g0, g1, eta)
            # log mu_i = eta_i + a_g, so sum y log mu = y'eta + sum_g Y_g a_g.
            ll += float(yc @ eta) + float(bucket.Yg[g0:g1][ok] @ a[ok])
            grad += Xc.T @ (yc - mu)
            if hessian:
                # sum_i mu_i (x_i - xbar_g)(x_i - xbar_g)' = sum_i mu_i z_i z_i' - sum_g B_g B_g'/Y_g
                # with z = x - centre and B_g = sum_{i in g} mu_i z_i: no per-row demeaning; the
                # fixed centre (mid-range) keeps the subtraction well conditioned.
                z = Xc - centre
                wT = z.T * mu
                total += wT @ z
                Bm = np.add.reduceat(wT, loc, axis=1).T
                Bs = Bm / np.where(ok, bucket.Yg[g0:g1], 1.0)[:, None]
                between += Bm.T @ Bs
    return ll, grad, total, between, drift


def final_pass(bucket: GroupedBucket, beta: np.ndarray, exact_hessian: bool,
               centre: np.ndarray | None = None) -> dict:
    """At the solution: cluster-score outer products (the sandwich's meat, clusters local to the
    bucket), Pearson chi2 pieces, fitted rates and log subject effects (per row and per group of
    this bucket), the separation check's statistics, and the explicitly demeaned Hessian when the
    driver saw cancellation in the fast one.

    A group's score sum_i (x_i - xbar_g) r_i equals sum_i (x_i - centre) r_i because the
    residuals r = y - mu of a group sum to zero (the profiled rates add up to the group's count;
    both are 0 in a group without events), so no per-row demeaning is needed; ``centre`` (the
    Newton passes' mid-range centre) only keeps the sums well conditioned.

    A bucket on disk (a ``DesignFile``) keeps its fitted rates beside it (``fitted`` is then
    None: the driver never gathers a value per row)."""
    handle, bucket = bucket, resolve(bucket)
    p = beta.shape[0]
    n = bucket.y.shape[0]
    fitted = np.zeros(n)
    fe = np.full(bucket.n_groups, -np.inf)
    S = np.zeros((bucket.n_clusters, p))
    H = np.zeros((p, p)) if exact_hessian else None
    c0 = (np.zeros(p) if centre is None else np.asarray(centre, dtype=np.float64))[:, None]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for g0, g1 in bucket.blocks:
            rs = bucket.rows(g0, g1)
            Xc, yc = bucket.X[rs], bucket.y[rs]
            loc = bucket.starts[g0:g1] - rs.start
            mu, a, ok, cc = _block_rates(bucket, rs, loc, g0, g1, Xc @ beta)
            fitted[rs] = mu
            fe[g0:g1] = a
            c = bucket.clusters[rs]
            first = c[loc]
            nested = np.array_equal(np.repeat(first, bucket.counts[g0:g1]), c)
            if nested:  # every group inside one cluster (the usual case): add group scores
                zrT = (Xc.T - c0) * (yc - mu)  # p x rows, C order: contiguous reductions
                np.add.at(S, first, np.add.reduceat(zrT, loc, axis=1).T)
            d = None
            if exact_hessian or not nested:
                Bm = np.add.reduceat(Xc * mu[:, None], loc, axis=0)
                xbar = Bm / np.where(ok, bucket.Yg[g0:g1], 1.0)[:, None]
                d = Xc - xbar[cc]
            if not nested:  # a group spanning clusters: its part in each, explicitly demeaned
                run = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
                np.add.at(S, c[run], np.add.reduceat(d * (yc - mu)[:, None], run, axis=0))
            if exact_hessian:
                H += (d.T * mu) @ d
    pos = bucket.y > 0
    yp = bucket.y[pos]
    zero = (bucket.y == 0) & (fitted > 0)
    return {
        "meat": S.T @ S,
        "pearson_pos": float((yp * yp / fitted[pos]).sum()),
        "mu_sum": float(fitted.sum()),
        "n_mu_pos": int(np.count_nonzero(fitted)),
        "min_mu_zero_y": float(fitted[zero].min()) if zero.any() else np.inf,
        "fitted": _keep_fitted(handle, fitted),
        "fixed_effects": fe,
        "exact_hessian": H,
    }


def _keep_fitted(handle, fitted: np.ndarray) -> np.ndarray | None:
    if isinstance(handle, GroupedBucket):
        return fitted
    from pipeline.models.design_buckets import write_fitted

    write_fitted(handle, fitted)
    return None
