"""Each person's own Poisson fit: stage one of the per-patient estimates (issue 13).

For every subject, a Poisson regression of their daily episode count on the ``within_subject``
features with an intercept, fitted on their own complete days only. With one subject, the intercept
*is* the subject fixed effect, so this is the conditional (within-subject) Poisson model of
``effects.csv`` restricted to one person: the log rate ratio compares the person's days with their
own other days. The fit is **adjusted** for the person's other features exactly as the cohort model
is, so a person's own estimate and the cohort's estimate the same quantity; a feature the person's
diary cannot inform (rules below) leaves *their* design, and the rest is fitted without it (the note
of the other features then says so).

Variance: model-based (inverse Fisher information), as statsmodels' ``GLM(..., Poisson()).fit()``
reports it. A per-person cluster-robust variance is not available (one cluster), and a per-person
sandwich (HC0) from a few dozen episodes is too noisy to weight a meta-analysis with; overdispersion
within a person would make these variances too small (the interval coverage test in
``tests/test_per_subject_pooling.py`` checks the result on planted data).

Minimum-data rules (named constants below; a person or feature that fails gets no estimate and the
reason in the note):

- fewer than ``MIN_EPISODES`` episodes or ``MIN_DAYS`` complete days: no own fit at all;
- binary feature: fewer than ``MIN_DAYS_PER_LEVEL`` days at either level (the rule Bearable uses
  before it shows a per-person factor effect), or every episode at one level (the rate ratio's
  maximum-likelihood estimate is then 0 or infinite);
- numeric feature: no variation in the person's complete days, or every episode on the days of the
  feature's highest (or lowest) value (separation);
- collinear with the person's other features (1 − R² below ``COLLINEAR_TOLERANCE``, later features
  in dictionary order are dropped first, as in the cohort model);
- the fit does not converge, or a log rate ratio leaves ±``MAX_ABS_LOG_IRR`` (quasi-separation).

Computation: a pure function of one bucket of whole subjects (:func:`fit_subject_bucket`) returning
one row per subject and feature; no Python loop over subjects. Subjects are padded into
``(subjects, days, parameters)`` arrays in a few batches of similar length, and Newton's method runs
on every subject at once (batched matrix products and ``np.linalg.solve`` on the stacked
``p × p`` systems), with a per-subject step-halving line search on the log-likelihood.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import polars as pl

from pipeline.features import dictionary as fd
from pipeline.features.panel import OUTCOME

MIN_EPISODES = 10
MIN_DAYS = 14
MIN_DAYS_PER_LEVEL = 3
#: 1 − R² of a feature on the person's other features (within the person) below which it counts
#: as collinear. Looser than the cohort's 1e-8: one person's design has a few hundred rows at most.
COLLINEAR_TOLERANCE = 1e-6
#: |log rate ratio| per documented unit beyond which a fit counts as (quasi-)separated: e^10 is a
#: 22,000-fold rate ratio per unit, far outside anything a diary can show.
MAX_ABS_LOG_IRR = 10.0
MAX_ITER = 60
#: Convergence: a subject's Newton decrement (about twice the log-likelihood still to gain)
#: below this.
DECREMENT_TOL = 1e-10
MAX_HALVINGS = 30
#: Padded cells (subjects × longest diary in the batch) per batch. Small enough that a batch's
#: arrays (cells × parameters × 8 bytes: 25,000 × 14 × 8 ≈ 2.8 MB) stay in cache across the
#: passes of one Newton iteration: measured on 2,000 subjects × 365 days, 0.67 s CPU against
#: 1.07 s with 500,000-cell batches (identical results).
CELLS_PER_BATCH = 25_000

#: Reason codes of the per-subject rows (``None``: estimated).
REASONS = {
    "few_episodes": "only {n} episode(s) on this person's complete days (need at least "
                    f"{MIN_EPISODES} for an own estimate)",
    "few_days": "only {n} complete day(s) in this person's diary (need at least "
                f"{MIN_DAYS} for an own estimate)",
    "few_level_days": "only {n} day(s) with {feature} = {level} in this person's diary (need at "
                      f"least {MIN_DAYS_PER_LEVEL} at each level)",
    "no_variation": "no variation in this person's diary",
    "separated": "all of this person's episodes fell on days with {feature} = {level}: the rate "
                 "ratio would be 0 or infinite",
    "separated_numeric": "all of this person's episodes fell on the days of their {level} "
                         "{feature}: the rate ratio would be 0 or infinite",
    "collinear": "collinear with this person's other features (adds no information)",
    "not_converged": "this person's own fit did not converge (quasi-separation)",
}

#: Columns of the per-subject rows :func:`fit_subject_bucket` returns.
SUBJECT_ROWS_SCHEMA = {
    "subject_id": pl.String, "feature": pl.String, "log_irr": pl.Float64,
    "variance": pl.Float64, "n_days": pl.Int64, "n_episodes": pl.Int64,
    "reason": pl.String, "adjusted_for_all": pl.Boolean,
}

_CODES = {name: i for i, name in enumerate(REASONS)}
_OK = -1


def fit_subject_bucket(bucket: pl.DataFrame, features: Sequence[fd.Feature],
                       start: dict[str, float] | None = None) -> pl.DataFrame:
    """Own Poisson fits of every subject in ``bucket`` (all panel rows of some whole subjects).

    ``features``: the ``within_subject`` model's estimated features (a cohort-level decision, made
    once and passed to every bucket); ``start``: optional starting log rate ratios by feature
    (the cohort's estimates: fewer Newton steps, same optimum). Returns
    :data:`SUBJECT_ROWS_SCHEMA` rows, one per subject and feature in ``features`` order, sorted
    by subject: ``log_irr``/``variance`` empty with the reason when there is no own estimate;
    ``adjusted_for_all`` false when some other feature left this person's design.
    """
    features = tuple(features)
    names = [f.name for f in features]
    if isinstance(bucket, pl.LazyFrame):
        bucket = bucket.collect()
    subjects = bucket.select(pl.col("subject_id").unique().sort()).to_series()
    if not names or subjects.len() == 0:
        return pl.DataFrame(schema=SUBJECT_ROWS_SCHEMA)
    complete = bucket.filter(pl.all_horizontal(pl.col(names).is_not_null()))
    if not complete["subject_id"].is_sorted():  # rows of a subject must be contiguous
        complete = complete.sort("subject_id", "date")
    G = subjects.len()
    code = subjects.search_sorted(complete["subject_id"]).to_numpy().astype(np.int64)
    X = complete.select(pl.col(names).cast(pl.Float64)).to_numpy()
    y = complete[OUTCOME].cast(pl.Float64).to_numpy()

    n_days = np.bincount(code, minlength=G)
    n_ep = np.bincount(code, weights=y, minlength=G)
    status, level_n, level_yes = _eligibility(X, y, n_days, n_ep, features)
    beta0 = np.array([(start or {}).get(n, 0.0) for n in names])
    beta, var = _fit_batched(X, y, code, n_days, status, beta0)
    estimated = status == _OK
    adjusted = estimated.all(axis=1, keepdims=True) | ~estimated
    return _rows(subjects, features, beta, var, status, level_n, level_yes, n_days, n_ep,
                 np.broadcast_to(adjusted, estimated.shape))


def _eligibility(X, y, n_days, n_ep, features):
    """Per subject and feature: reason code (``_OK`` when it enters the person's fit), and the
    count / level a reason's text names. Rows are sorted by subject (reduceat over runs)."""
    G, p = n_days.size, len(features)
    status = np.full((G, p), _OK, dtype=np.int64)
    level_n = np.zeros((G, p), dtype=np.int64)
    level_yes = np.zeros((G, p), dtype=bool)  # level named: yes (True) / no, or highest / lowest
    few_ep = n_ep < MIN_EPISODES
    few_days = (n_days < MIN_DAYS) & ~few_ep
    status[few_ep] = _CODES["few_episodes"]
    level_n[few_ep] = np.rint(n_ep[few_ep, None]).astype(np.int64)
    status[few_days] = _CODES["few_days"]
    level_n[few_days] = n_days[few_days, None]
    present = np.flatnonzero(n_days > 0)
    if present.size == 0:
        return status, level_n, level_yes
    starts = np.r_[0, np.cumsum(n_days[present])[:-1]]
    big = np.finfo(np.float64).max
    has_ep = y > 0
    yp = y

    def per_subject(ufunc, values, fill):
        out = np.full(G, fill, dtype=np.float64)
        out[present] = ufunc.reduceat(values, starts)
        return out

    ep_total = n_ep
    for j, f in enumerate(features):  # a loop over features (a dozen), not subjects
        x = np.ascontiguousarray(X[:, j])
        open_ = status[:, j] == _OK
        xmax, xmin = per_subject(np.maximum, x, -big), per_subject(np.minimum, x, big)
        flat = open_ & ~(xmax > xmin)
        status[flat, j] = _CODES["no_variation"]
        open_ &= ~flat
        if f.kind == "binary":
            yes = per_subject(np.add, x, 0.0)
            no = n_days - yes
            few = open_ & (np.minimum(yes, no) < MIN_DAYS_PER_LEVEL)
            status[few, j] = _CODES["few_level_days"]
            level_n[few, j] = np.rint(np.minimum(yes, no)[few]).astype(np.int64)
            level_yes[few, j] = (yes < no)[few]
            open_ &= ~few
            ep_yes = per_subject(np.add, x * yp, 0.0)
            sep = open_ & ((ep_yes == 0) | (ep_yes == ep_total))
            status[sep, j] = _CODES["separated"]
            level_yes[sep, j] = (ep_yes == ep_total)[sep]
        else:
            ep_min = per_subject(np.minimum, np.where(has_ep, x, big), big)
            ep_max = per_subject(np.maximum, np.where(has_ep, x, -big), -big)
            at_top, at_bottom = ep_min >= xmax, ep_max <= xmin
            sep = open_ & (at_top | at_bottom)
            status[sep, j] = _CODES["separated_numeric"]
            level_yes[sep, j] = at_top[sep]
    return status, level_n, level_yes


def _fit_batched(X, y, code, n_days, status, beta0):
    """Newton on every subject at once, in batches of subjects of similar diary length (so the
    padding stays small). Updates ``status`` in place (collinear features, failed fits); returns
    coefficients and variances (G × p; NaN where not estimated)."""
    G, p = status.shape
    beta_out = np.full((G, p), np.nan)
    var_out = np.full((G, p), np.nan)
    todo = np.flatnonzero((status == _OK).any(axis=1))
    if todo.size == 0:
        return beta_out, var_out
    first = np.r_[0, np.cumsum(n_days)[:-1]]
    position = np.arange(code.size) - first[code]
    todo = todo[np.argsort(-n_days[todo], kind="stable")]
    local = np.full(G, -1)
    i = 0
    while i < todo.size:
        T = int(n_days[todo[i]])
        batch = todo[i:i + max(1, CELLS_PER_BATCH // max(T, 1))]
        i += batch.size
        local[:] = -1
        local[batch] = np.arange(batch.size)
        rows = np.flatnonzero(local[code] >= 0)
        g, t = local[code[rows]], position[rows]
        Z = np.zeros((batch.size, T, p + 1))
        Z[g, t, 0] = 1.0
        Z[g, t, 1:] = X[rows]
        Y = np.zeros((batch.size, T))
        Y[g, t] = y[rows]
        sub = status[batch]
        _mark_collinear(Z, sub)
        b, v, ok = _newton(Z, Y, sub == _OK, beta0)
        bad = ~ok[:, None] | (np.abs(np.nan_to_num(b)) > MAX_ABS_LOG_IRR)
        sub[(sub == _OK) & bad.any(axis=1, keepdims=True)] = _CODES["not_converged"]
        status[batch] = sub
        beta_out[batch], var_out[batch] = b, v
        del Z, Y
    return beta_out, var_out


def _mark_collinear(Z, status) -> None:
    """Within-person collinearity, features in order (later ones dropped first): the residual
    1 − R² of each feature on the person's earlier kept features, from the centred
    cross-products (one stacked system per feature)."""
    M = np.matmul(Z.transpose(0, 2, 1), Z)
    n = np.maximum(M[:, 0, 0], 1.0)
    S = M[:, 1:, 1:] - M[:, 0, 1:, None] * M[:, None, 0, 1:] / n[:, None, None]
    d = np.sqrt(np.clip(np.einsum("gii->gi", S), 1e-300, None))
    R = S / d[:, :, None] / d[:, None, :]
    G, p = status.shape
    kept = np.zeros((G, p), dtype=bool)
    for j in range(p):  # a loop over features, not subjects
        open_ = status[:, j] == _OK
        if j and open_.any():
            m = kept[:, :j]
            eye = np.eye(j)
            A = R[:, :j, :j] * (m[:, :, None] & m[:, None, :]) + eye * ~m[:, :, None]
            r = R[:, :j, j] * m
            residual = 1.0 - np.einsum("gi,gi->g", r, np.linalg.solve(A, r[:, :, None])[..., 0])
            bad = open_ & (residual < COLLINEAR_TOLERANCE)
            status[bad, j] = _CODES["collinear"]
            open_ &= ~bad
        kept[:, j] = open_


def _newton(Z, Y, use, beta0):
    """Batched Newton with per-subject step halving. ``Z`` (subjects × days × 1+p, zero rows as
    padding, column 0 the intercept), ``use`` (subjects × p) the features of each person's design.

    A subject finishes when its Newton decrement grad'H^-1 grad (twice the log-likelihood still to
    gain) falls below ``DECREMENT_TOL``: its last Newton step is taken (quadratic convergence makes
    the coefficients exact to ~1e-12) and the covariance is the inverse of the Hessian just
    computed (relative error of the order of that last step, ~1e-6). Finished, stalled and
    diverging subjects leave the active set, so a few slow ones do not make every subject pay for
    their iterations. Returns (coefficients, variances, converged)."""
    Gb, T, q = Z.shape
    Z[:, :, 1:] *= use[:, None, :]  # a feature outside a person's design is a zero column
    valid = Z[:, :, 0]
    free = np.concatenate([np.ones((Gb, 1), bool), use], axis=1)
    pin = np.einsum("gi,ij->gij", (~free).astype(float), np.eye(q))  # keeps those at 0
    beta = np.zeros((Gb, q))
    beta[:, 1:] = np.where(use, beta0, 0.0)
    # Start the intercept where the person's fitted total equals their observed total.
    eta = _eta(Z, beta)
    with np.errstate(over="ignore"):
        beta[:, 0] = (np.log(np.maximum(Y.sum(1), 1e-300))
                      - np.log(np.maximum((np.exp(eta) * valid).sum(1), 1e-300)))
    eta += beta[:, 0, None]
    cov = np.full((Gb, q, q), np.nan)
    converged = np.zeros(Gb, dtype=bool)
    active = np.arange(Gb)
    Za, Ya, Va, Pa, Ea = Z, Y, valid, pin, eta
    La = _loglik(Ea, Ya, Va)
    buffer = np.empty_like(Z)
    for _ in range(MAX_ITER):
        b = beta[active]
        mu = np.exp(Ea) * Va
        grad = np.matmul(Za.transpose(0, 2, 1), (Ya - mu)[:, :, None])[..., 0]
        W = np.multiply(Za, np.sqrt(mu)[:, :, None], out=buffer[:active.size])
        H = np.matmul(W.transpose(0, 2, 1), W) + Pa
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            Hinv = np.linalg.inv(H)
        step = np.einsum("gij,gj->gi", Hinv, grad)
        decrement = np.einsum("gi,gi->g", grad, step)
        trial = b + step
        e_new = _eta(Za, trial)
        l_new = _loglik(e_new, Ya, Va)
        tolerance = 1e-10 * np.abs(La)
        worse = ~(l_new >= La - tolerance) & ~(decrement < DECREMENT_TOL)
        scale = np.ones(active.size)
        for _h in range(MAX_HALVINGS):  # only the subjects whose step made things worse
            w = np.flatnonzero(worse)
            if w.size == 0:
                break
            scale[w] *= 0.5
            trial[w] = b[w] + scale[w, None] * step[w]
            e_new[w] = _eta(Za[w], trial[w])
            l_new[w] = _loglik(e_new[w], Ya[w], Va[w])
            worse[w] = ~(l_new[w] >= La[w] - tolerance[w])
        accept = ~worse
        beta[active[accept]] = trial[accept]
        Ea, La = np.where(accept[:, None], e_new, Ea), np.where(accept, l_new, La)
        done = decrement < DECREMENT_TOL
        converged[active[done]] = True
        diverged = np.abs(trial[:, 1:]).max(axis=1, initial=0.0) > MAX_ABS_LOG_IRR
        finished = done | worse | diverged
        cov[active[finished]] = Hinv[finished]
        if finished.all():
            break
        if finished.any():
            keep = ~finished
            active = active[keep]
            Za, Ya, Va, Pa, Ea, La = Za[keep], Ya[keep], Va[keep], Pa[keep], Ea[keep], La[keep]
    var = np.einsum("gii->gi", cov)[:, 1:]
    ok = converged & np.isfinite(beta).all(1) & np.isfinite(var).all(1)
    return np.where(use, beta[:, 1:], np.nan), np.where(use, var, np.nan), ok


def _eta(Z, beta):
    return np.matmul(Z, beta[:, :, None])[..., 0]


def _loglik(eta, Y, valid):
    with np.errstate(over="ignore", invalid="ignore"):
        return ((Y * eta - np.exp(eta)) * valid).sum(axis=1)


def _rows(subjects, features, beta, var, status, level_n, level_yes, n_days, n_ep,
          adjusted) -> pl.DataFrame:
    G, p = status.shape
    estimated = status == _OK
    binary = np.array([f.kind == "binary" for f in features])
    level = np.where(binary[None, :], np.where(level_yes, "yes", "no"),
                     np.where(level_yes, "highest", "lowest"))
    frame = pl.DataFrame({
        "subject_id": np.repeat(subjects.to_numpy(), p),
        "feature": np.tile(np.array([f.name for f in features], dtype=object), G),
        "log_irr": np.where(estimated, beta, np.nan).ravel(),
        "variance": np.where(estimated, var, np.nan).ravel(),
        "n_days": np.repeat(n_days, p).astype(np.int64),
        "n_episodes": np.repeat(np.rint(n_ep), p).astype(np.int64),
        "_code": status.ravel(),
        "_n": level_n.ravel(),
        "_level": level.ravel(),
        "adjusted_for_all": np.asarray(adjusted).ravel(),
    })
    # Reason texts by expression (one template per reason code), not a loop over rows.
    reason = pl.lit(None, dtype=pl.String)
    columns = {"n": pl.col("_n"), "feature": pl.col("feature"), "level": pl.col("_level")}
    for name, template in REASONS.items():
        keys = re.findall(r"\{(\w+)\}", template)
        text = pl.format(re.sub(r"\{\w+\}", "{}", template), *(columns[k] for k in keys))
        reason = pl.when(pl.col("_code") == _CODES[name]).then(text).otherwise(reason)
    return (frame.with_columns(reason.alias("reason"),
                               pl.col("log_irr", "variance").fill_nan(None))
            .select(list(SUBJECT_ROWS_SCHEMA)).cast(SUBJECT_ROWS_SCHEMA))
