"""dose_response.csv: a spline curve per continuous core feature, within subject.

For each continuous feature estimated in the ``within_subject`` model, the linear term is replaced by
a cubic B-spline basis (``sklearn.preprocessing.SplineTransformer``, knots at the 5th, 35th, 65th and
95th percentiles as Harrell recommends for four knots, linear beyond the boundary knots) while every
other feature stays linear, and the model is refitted by conditional Poisson with subject-clustered
errors. The curve is the IRR at x relative to the reference value (the median), with pointwise 95%
bands from the cluster-robust covariance, over the 1st–99th percentile range of the feature.

The basis drops one spline (``include_bias=False``): the splines sum to one, so the full basis
would be collinear with the subject fixed effects. Curves are in the source unit (minutes, °C, ...),
not in the per-scale model unit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy import stats
from sklearn.preprocessing import SplineTransformer

KNOT_QUANTILES = (0.05, 0.35, 0.65, 0.95)
RANGE_QUANTILES = (0.01, 0.99)
REFERENCE_QUANTILE = 0.5
N_GRID = 41
DEGREE = 3
Z = float(stats.norm.ppf(0.975))

DOSE_COLUMNS = ("model", "feature", "unit", "x", "reference_x", "irr", "ci_low", "ci_high")
DOSE_SCHEMA = {"model": pl.String, "feature": pl.String, "unit": pl.String, "x": pl.Float64,
               "reference_x": pl.Float64, "irr": pl.Float64, "ci_low": pl.Float64,
               "ci_high": pl.Float64}


def fit_dose_response(design) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Curves for the continuous core features of a fitted within-subject ``Design``.

    Returns the dose_response table and, per feature, a note (knots used, or why no curve)."""
    frames: list[pl.DataFrame] = []
    notes: dict[str, Any] = {}
    if design.X is None or not design.kept:
        return pl.DataFrame(schema=DOSE_SCHEMA), notes
    for j, feature in enumerate(design.kept):
        if feature.kind != "numeric" or feature.role != "core":
            continue
        try:
            curve, note = _curve(design, j)
        except Exception as exc:  # noqa: BLE001 - a failed curve must not sink the whole run
            from pipeline.models.poisson import EstimationError

            if not isinstance(exc, (EstimationError, ValueError, np.linalg.LinAlgError)):
                raise
            curve, note = None, {"status": "not_estimated", "reason": f"spline fit failed ({exc})"}
        notes[feature.name] = note
        if curve is not None:
            frames.append(curve)
    if not frames:
        return pl.DataFrame(schema=DOSE_SCHEMA), notes
    return pl.concat(frames).select(DOSE_COLUMNS), notes


def _curve(design, j: int):
    from pipeline.models.conditional import fit_conditional_poisson

    feature = design.kept[j]
    x = design.X[:, j]
    knots = np.unique(np.quantile(x, KNOT_QUANTILES))
    if knots.size < 3:
        return None, {"status": "not_estimated",
                      "reason": f"only {knots.size} distinct knot value(s) at the "
                      f"{', '.join(f'{q:.0%}' for q in KNOT_QUANTILES)} percentiles"}
    spline = SplineTransformer(knots=knots[:, None], degree=DEGREE, extrapolation="linear",
                               include_bias=False)
    basis = spline.fit_transform(x[:, None])
    others = [i for i in range(design.X.shape[1]) if i != j]
    X = np.empty((x.shape[0], basis.shape[1] + len(others)), order="F")
    X[:, : basis.shape[1]] = basis
    X[:, basis.shape[1]:] = design.X[:, others]
    spline_names = [f"{feature.name}__s{k}" for k in range(basis.shape[1])]
    names = spline_names + [design.kept[i].name for i in others]
    fit = fit_conditional_poisson(X, design.y, groups=design.groups, clusters=design.groups,
                                  feature_names=names)
    if not fit.converged:
        return None, {"status": "not_estimated", "reason": "the solver did not converge"}
    k = basis.shape[1]
    beta = np.asarray(fit.coef)[:k]
    cov = np.asarray(fit.cov_cluster)[:k, :k]

    low, high = np.quantile(x, RANGE_QUANTILES)
    reference = float(np.quantile(x, REFERENCE_QUANTILE))
    grid = np.unique(np.concatenate([np.linspace(low, high, N_GRID), [reference]]))
    contrast = spline.transform(grid[:, None]) - spline.transform(np.array([[reference]]))
    log_irr = contrast @ beta
    se = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", contrast, cov, contrast), 0.0, None))
    scale = feature.scale
    curve = pl.DataFrame({
        "model": "within_subject",
        "feature": feature.name,
        "unit": feature.source_unit or "",
        "x": grid * scale,
        "reference_x": np.full(grid.shape, reference * scale),
        "irr": np.exp(log_irr),
        "ci_low": np.exp(log_irr - Z * se),
        "ci_high": np.exp(log_irr + Z * se),
    }, schema=DOSE_SCHEMA)
    note = {"status": "estimated", "knots": [float(v * scale) for v in knots],
            "reference": "median", "reference_x": reference * scale,
            "range": [float(low * scale), float(high * scale)],
            "n_spline_terms": int(k)}
    return curve, note
