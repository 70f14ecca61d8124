"""Strata and time adjustment of the within-subject models (``[analysis]`` of dataset.toml).

``frame_for_analysis`` turns the subject-day frame into what the estimators need for the chosen
design, so that every within-subject model (effects.csv, dose_response.csv, lags.csv) is fitted
the same way:

- ``strata = "subject_month"``: a stratum code per subject and calendar month (column
  ``STRATUM_CODE``), used as the conditional Poisson's fixed effects, while the robust errors stay
  clustered by subject (the time-stratified case time series design; Gasparrini, Epidemiology
  2021). Strata are nested in subjects, so the CRV1 factor counts only the slopes
  (``conditional.py``); a stratum without episodes carries no information and is left out by the
  estimator.
- ``adjust``: ``day_of_week`` adds six weekday indicators (Monday the reference);
  ``days_in_study`` adds a natural cubic spline (``DAYS_IN_STUDY_INTERIOR_QUANTILES`` interior knots,
  boundary knots at day 0 and the longest follow-up; the constant is absorbed by the strata) of the
  days since the subject's first diary day. These enter every within-subject design as extra
  columns, adjusted for but never reported.

A pure function of a bucket of whole subjects except for the spline's knots, which are computed
once from the whole panel's days-in-study (``days_in_study_knots``) and passed in.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.analysis_config import AnalysisConfig
from pipeline.features import dictionary as fd
from pipeline.models.lag_basis import natural_spline_basis

STRATUM_CODE = "_stratum"
WEEKDAYS = ("tue", "wed", "thu", "fri", "sat", "sun")
DAYS_IN_STUDY_INTERIOR_QUANTILES = (0.25, 0.5, 0.75)
DAYS_IN_STUDY = "_days_in_study"


def _adjuster(name: str, kind: str, definition: str) -> fd.Feature:
    return fd.Feature(name=name, factor="adjustment", kind=kind, role="adjustment",
                      definition=definition, source_columns=("date",))


def days_in_study(frame: pl.DataFrame | pl.LazyFrame) -> pl.Expr:
    """Days since the subject's first diary day (0 on that day)."""
    return (pl.col("date") - pl.col("date").min().over("subject_id")).dt.total_days().cast(
        pl.Float64).alias(DAYS_IN_STUDY)


def days_in_study_knots(frame: pl.DataFrame) -> np.ndarray:
    """Boundary knots 0 and the longest follow-up, interior knots at the quantiles: the whole
    panel's, so every bucket uses the same basis."""
    d = frame.select(days_in_study(frame)).to_series()
    top = float(d.max() or 0.0)
    inner = [float(d.quantile(q, "linear")) for q in DAYS_IN_STUDY_INTERIOR_QUANTILES]
    return np.unique(np.r_[0.0, inner, top])


def frame_for_analysis(frame: pl.DataFrame, analysis: AnalysisConfig,
                       knots: np.ndarray | None = None) -> tuple[pl.DataFrame, list[fd.Feature]]:
    """``frame`` (sorted by subject and date) with the stratum code and adjustment columns of
    ``analysis``, and the adjustment columns as design features."""
    adjusters: list[fd.Feature] = []
    new: list[pl.Expr | pl.Series] = []
    if analysis.strata == "subject_month":
        month = pl.col("date").dt.year().cast(pl.Int64) * 12 + pl.col("date").dt.month()
        changed = ((pl.col("subject_id") != pl.col("subject_id").shift(1))
                   | (month != month.shift(1))).fill_null(True)
        new.append((changed.cum_sum() - 1).cast(pl.Int64).alias(STRATUM_CODE))
    if "day_of_week" in analysis.adjust:
        for i, day in enumerate(WEEKDAYS, start=2):
            name = f"_dow_{day}"
            new.append((pl.col("date").dt.weekday() == i).cast(pl.Float64).alias(name))
            adjusters.append(_adjuster(name, "binary", f"day of week is {day} (vs Monday)"))
    out = frame.with_columns(new) if new else frame
    if "days_in_study" in analysis.adjust and out.height:
        knots = days_in_study_knots(out) if knots is None else knots
        if knots.size >= 2:
            d = out.select(days_in_study(out)).to_series().to_numpy()
            basis = natural_spline_basis(d / knots[-1], knots / knots[-1])[:, 1:]
            columns = []
            for j in range(basis.shape[1]):
                name = f"_days_in_study_s{j + 1}"
                columns.append(pl.Series(name, basis[:, j]))
                adjusters.append(_adjuster(name, "numeric",
                                           f"days since the first diary day, spline term {j + 1}"))
            out = out.with_columns(columns)
    return out, adjusters


def strata_codes(frame: pl.DataFrame, rows: np.ndarray | None = None) -> np.ndarray | None:
    """The stratum code of each row (``rows``: a mask or index), or None for subject strata."""
    if STRATUM_CODE not in frame.columns:
        return None
    codes = frame[STRATUM_CODE].to_numpy()
    return codes if rows is None else codes[rows]
