"""The population estimator's work on ONE BUCKET of whole clusters (subjects), as pure functions.

``poisson.py`` drives Newton on the sums these return; an executor (``pipeline/execution.py``)
decides where each runs. A cluster never crosses buckets, so each bucket's cluster-score outer
products add up to the sandwich's meat. No state is kept between calls: the drift of the linear
predictors since the previous pass comes from the coefficient change the driver sends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.models.estimation import count_constants, encode_labels, row_chunks


@dataclass(frozen=True)
class ClusterBucket:
    """One bucket: ``X`` (rows x p, no intercept column), ``y``, optional ``offset`` and the
    cluster code per row (0..C_b-1; a cluster's rows need not be contiguous)."""

    X: np.ndarray
    y: np.ndarray
    offset: np.ndarray | None
    clusters: np.ndarray
    n_clusters: int


def resolve(bucket) -> ClusterBucket:
    """The bucket itself, or the ``ClusterBucket`` a ``design_buckets.DesignFile`` handle names,
    memory-mapped here (where this pass runs)."""
    if isinstance(bucket, ClusterBucket):
        return bucket
    from pipeline.models.design_buckets import load

    return load(bucket)


def cluster_bucket(X: np.ndarray, y: np.ndarray, clusters: np.ndarray,
                   offset: np.ndarray | None = None) -> ClusterBucket:
    codes, k = encode_labels(clusters, y.shape[0], "clusters")
    return ClusterBucket(X=X, y=y, offset=offset, clusters=codes, n_clusters=k)


def subsample(bucket: ClusterBucket, stride: int) -> ClusterBucket:
    """Every ``stride``-th row of each cluster (its 1st, (stride+1)-th, ...), whatever the
    bucketing: the warm start's subsample."""
    bucket = resolve(bucket)
    c = bucket.clusters
    order = np.argsort(c, kind="stable")
    first = np.searchsorted(c[order], np.arange(bucket.n_clusters))
    position = np.empty(c.size, dtype=np.intp)
    position[order] = np.arange(c.size) - first[c[order]]
    keep = np.flatnonzero(position % stride == 0)
    return ClusterBucket(X=np.asfortranarray(bucket.X[keep]), y=bucket.y[keep],
                         offset=None if bucket.offset is None else bucket.offset[keep],
                         clusters=c[keep], n_clusters=bucket.n_clusters)


def summarize(bucket: ClusterBucket) -> dict:
    """Column minima/maxima over all rows and over rows with events, counts, the constant parts
    of the log-likelihood and the exposure total (for the null start)."""
    bucket = resolve(bucket)
    X, y = bucket.X, bucket.y
    p = X.shape[1]
    lo, hi = np.full(p, np.inf), np.full(p, -np.inf)
    plo, phi = np.full(p, np.inf), np.full(p, -np.inf)
    for sl in row_chunks(y.shape[0]):
        XT = np.ascontiguousarray(X[sl].T)  # reductions along contiguous rows are ~10x faster
        np.minimum(lo, XT.min(axis=1), out=lo)
        np.maximum(hi, XT.max(axis=1), out=hi)
        pos = y[sl] > 0
        if pos.any():
            XpT = XT[:, pos]
            np.minimum(plo, XpT.min(axis=1), out=plo)
            np.maximum(phi, XpT.max(axis=1), out=phi)
    ylogy, lgamma = count_constants(y)
    return {"lo": lo, "hi": hi, "plo": plo, "phi": phi, "n_rows": int(y.shape[0]),
            "n_clusters": bucket.n_clusters, "y_sum": float(y.sum()), "sum_ylogy": ylogy,
            "sum_lgamma": lgamma,
            "exposure": float(np.exp(bucket.offset).sum()) if bucket.offset is not None
            else float(y.shape[0])}


def _eta(bucket: ClusterBucket, sl: slice, B: np.ndarray, b0: float) -> np.ndarray:
    E = bucket.X[sl] @ B
    E[:, 0] += b0
    if bucket.offset is not None:
        E[:, 0] += bucket.offset[sl]
    return E


def newton_pass(bucket: ClusterBucket, beta: np.ndarray, step: np.ndarray, intercept: bool,
                hessian: bool):
    """(sum y eta - sum mu, gradient, negative Hessian or None, largest |change of eta| since
    the pass at beta - step) over the bucket; ``beta`` starts with the intercept if fitted."""
    bucket = resolve(bucket)
    ic = 1 if intercept else 0
    k = beta.shape[0]
    grad = np.zeros(k)
    H = np.zeros((k, k)) if hessian else None
    ll = 0.0
    drift = 0.0
    B2 = np.column_stack([beta[ic:], step[ic:]])
    b0 = float(beta[0]) if intercept else 0.0
    d0 = float(step[0]) if intercept else 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for sl in row_chunks(bucket.y.shape[0]):
            Xc, yc = bucket.X[sl], bucket.y[sl]
            E = _eta(bucket, sl, B2, b0)
            eta = E[:, 0]
            drift = max(drift, float(np.abs(E[:, 1] + d0).max()))
            mu = np.exp(eta)
            r = yc - mu
            ll += float(yc @ eta) - float(mu.sum())
            grad[ic:] += Xc.T @ r
            if intercept:
                grad[0] += r.sum()
            if hessian:
                H[ic:, ic:] += Xc.T @ (Xc * mu[:, None])
                if intercept:
                    xmu = Xc.T @ mu
                    H[0, 0] += mu.sum()
                    H[0, 1:] += xmu
                    H[1:, 0] += xmu
    return ll, grad, H, drift


def final_pass(bucket: ClusterBucket, beta: np.ndarray, intercept: bool) -> dict:
    """At the solution: the bucket's cluster-score outer products (meat), Pearson pieces, the
    fitted rates, and the separation check's statistics."""
    handle, bucket = bucket, resolve(bucket)
    ic = 1 if intercept else 0
    k = beta.shape[0]
    n = bucket.y.shape[0]
    fitted = np.empty(n)
    S = np.zeros((bucket.n_clusters, k))
    with np.errstate(over="ignore", invalid="ignore"):
        for sl in row_chunks(n):
            E = _eta(bucket, sl, beta[ic:, None], float(beta[0]) if intercept else 0.0)
            mu = np.exp(E[:, 0])
            fitted[sl] = mu
            r = bucket.y[sl] - mu
            block = np.empty((sl.stop - sl.start, k))
            if intercept:
                block[:, 0] = r
            np.multiply(bucket.X[sl], r[:, None], out=block[:, ic:])
            c = bucket.clusters[sl]
            run = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
            np.add.at(S, c[run], np.add.reduceat(block, run, axis=0))
    y = bucket.y
    pos = y > 0
    yp = y[pos]
    zero = (y == 0) & (fitted > 0)
    return {"meat": S.T @ S, "pearson_pos": float((yp * yp / fitted[pos]).sum()),
            "mu_sum": float(fitted.sum()), "n_mu_pos": int(np.count_nonzero(fitted)),
            "min_mu_zero_y": float(fitted[zero].min()) if zero.any() else np.inf,
            "fitted": _keep_fitted(handle, fitted)}


def _keep_fitted(handle, fitted: np.ndarray) -> np.ndarray | None:
    """A bucket on disk keeps its fitted rates beside it (the driver gathers none)."""
    if isinstance(handle, ClusterBucket):
        return fitted
    from pipeline.models.design_buckets import write_fitted

    write_fitted(handle, fitted)
    return None
