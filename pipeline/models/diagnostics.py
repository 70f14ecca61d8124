"""diagnostics.json: how well each model fits and which features had enough data.

Per model: Pearson dispersion (Pearson χ² / residual df; well above 1 means overdispersion, which
the subject-clustered sandwich errors allow for but which a reader should know about), observed
versus predicted episodes by decile of the predicted rate, the complete-case accounting, and
per-feature data sufficiency with reasons.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

N_CALIBRATION_BINS = 10


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
    fitted = np.asarray(fit.fitted, dtype=float)
    if fitted.shape == design.y.shape:
        out["calibration"] = calibration(design.y, fitted)
        out["fitted_total"] = float(fitted.sum())
        out["observed_total"] = float(design.y.sum())
    return out


def calibration(y: np.ndarray, fitted: np.ndarray, bins: int = N_CALIBRATION_BINS) -> list[dict]:
    """Observed versus predicted episodes by bin (decile) of the predicted rate.

    Bins are equal-count groups of subject-days ordered by predicted rate (ties broken by order)."""
    n = y.shape[0]
    if n == 0:
        return []
    frame = pl.DataFrame({"y": y, "mu": fitted}).with_columns(
        ((pl.col("mu").rank("ordinal") - 1) * bins // n + 1).cast(pl.Int64).alias("decile")
    )
    table = (
        frame.group_by("decile")
        .agg(
            pl.len().alias("n_subject_days"),
            pl.col("mu").sum().alias("predicted_episodes"),
            pl.col("y").sum().alias("observed_episodes"),
            pl.col("mu").min().alias("predicted_rate_min"),
            pl.col("mu").max().alias("predicted_rate_max"),
        )
        .sort("decile")
    )
    return table.to_dicts()
