"""diagnostics.json: how well each model fits and which features had enough data.

Per model: Pearson dispersion (Pearson χ² / residual df; well above 1 means overdispersion, which
the subject-clustered sandwich errors allow for but which a reader should know about), observed
versus predicted episodes by decile of the predicted rate, the complete-case accounting, and
per-feature data sufficiency with reasons. ``calibration`` takes arrays in memory;
``calibration_by_buckets`` (``calibration.py``) gives the same table from per-bucket statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The same table over subject buckets whose fitted values are never gathered (re-exported here).
from pipeline.models.calibration import (  # noqa: F401 - calibration_by_buckets re-exported
    N_CALIBRATION_BINS,
    calibration_by_buckets,
    decile_table,
)


def policy() -> dict[str, Any]:
    """The sufficiency thresholds in force (named constants of ``effects.py``)."""
    from pipeline.models import design as ef

    return {
        "min_subject_days_per_binary_level": ef.MIN_DAYS_PER_LEVEL,
        "max_missing_fraction": ef.MAX_MISSING_FRACTION,
        "min_subjects_with_within_variation": ef.MIN_SUBJECTS_WITH_VARIATION,
        "collinear_tolerance": ef.COLLINEAR_TOLERANCE,
        "confidence_level": 0.95,
        "missing_values": "complete-case analysis per model",
    }


def model_diagnostics(design, fit, failure: str | None) -> dict[str, Any]:
    """The diagnostics.json entry of one model."""
    out: dict[str, Any] = {
        "kind": "conditional_poisson" if design.conditional else "poisson",
        "fitted": fit is not None,
        "failure": failure,
        "features_in_design": design.names,
        "n_subjects": design.n_subjects,
        "n_subject_days": design.n_subject_days,
        "n_episodes": design.n_episodes,
        "n_candidate_subject_days": design.n_candidate_days,
        "n_subject_days_dropped_incomplete": design.n_dropped_incomplete,
        "sufficiency": {name: design.sufficiency.get(name, {}) for name in
                        [f.name for f in design.features]},
    }
    if design.conditional:
        out["n_subjects_without_episodes"] = design.n_subjects_without_episodes
        out["n_subject_days_of_subjects_without_episodes"] = \
            design.n_days_without_episodes_subject
    if fit is None:
        return out
    df_resid = float(fit.df_resid)
    out.update(
        converged=bool(fit.converged),
        n_clusters=int(fit.n_clusters),
        deviance=float(fit.deviance),
        pearson_chi2=float(fit.pearson_chi2),
        df_resid=df_resid,
        pearson_dispersion=float(fit.pearson_chi2) / df_resid if df_resid > 0 else None,
    )
    if design.buckets is not None:
        # The fitted rates stayed with their buckets: the calibration reads them bucket by bucket.
        out.update(bucketed_calibration(design.buckets))
        return out
    fitted = np.asarray(fit.fitted, dtype=float)
    if fitted.shape == design.y.shape:
        out["calibration"] = calibration(design.y, fitted)
        out["fitted_total"] = float(fitted.sum())
        out["observed_total"] = float(design.y.sum())
    return out


def bucketed_calibration(handles) -> dict[str, Any]:
    """The calibration table and totals of a fit whose buckets kept their fitted rates on disk
    (``design_buckets.outcome_and_fitted``): per-bucket passes on the run's executor
    (``calibration_by_buckets``: exact deciles without gathering a value per row)."""
    from pipeline import execution
    from pipeline.models.design_buckets import outcome_and_fitted

    ex = execution.current()
    totals = ex.map(_bucket_totals, list(handles))
    return {"calibration": calibration_by_buckets(list(handles), outcome_and_fitted, ex.map),
            "fitted_total": float(sum(t[1] for t in totals)),
            "observed_total": float(sum(t[0] for t in totals))}


def _bucket_totals(handle) -> tuple[float, float]:
    from pipeline.models.design_buckets import outcome_and_fitted

    y, mu = outcome_and_fitted(handle)
    return float(y.sum()), float(mu.sum())


def calibration(y: np.ndarray, fitted: np.ndarray, bins: int = N_CALIBRATION_BINS) -> list[dict]:
    """Observed versus predicted episodes by bin (decile) of the predicted rate.

    Bins are equal-count groups of subject-days ordered by predicted rate (ties broken by order):
    the subject-day at 0-based position r of that order is in bin r * bins // n + 1.

    No full sort: one ``np.partition`` finds the predicted rates at the bin edges, each row is
    placed by comparison with them, and only rows tied with an edge value are placed by their
    row order. Counts and sums are ``np.bincount``s over the bin numbers."""
    y = np.asarray(y, dtype=float)
    mu = np.asarray(fitted, dtype=float)
    n = y.shape[0]
    if n == 0:
        return []
    # First position of each bin 1..bins-1 in the sorted order, and the last of the bin before.
    # (With n < bins some coincide; each still counts, as the bins between them are empty.)
    first = np.array([(b * n + bins - 1) // bins for b in range(1, bins)], dtype=np.int64)
    first = first[first < n]
    kth = np.unique(np.r_[0, n - 1, first, first - 1])
    part = np.partition(mu, kth)
    sorted_at = dict(zip(kth.tolist(), part[kth].tolist()))
    # Rows strictly between edge values: bin = number of edges (first positions) at or below.
    edges = part[first]
    decile = np.zeros(n, dtype=np.uint8 if bins < 256 else np.intp)
    for edge in edges:
        decile += mu > edge
    # Rows equal to an edge value take the positions below/above it in row order.
    for v in np.unique(edges):
        tied = np.flatnonzero(mu == v)
        below = int(np.count_nonzero(mu < v))
        decile[tied] = (below + np.arange(tied.size)) * bins // n
    counts = np.bincount(decile, minlength=bins)
    predicted = np.bincount(decile, weights=mu, minlength=bins)
    observed = np.bincount(decile, weights=y, minlength=bins)
    return decile_table(counts, predicted, observed, sorted_at)
