"""The distributed-lag model (``within_subject_lags``) against statsmodels, the trusted reference.

The reference builds its own lag columns by joining the panel to itself on (subject, date - lag)
(so an unlogged day or the time before the first diary day gives no value, and the row is
dropped: the complete-window rule, independently of ``lags.py``), then fits a Poisson GLM with
explicit dummies per stratum (subject, or subject x calendar month) and subject-clustered errors.

Tolerances, and why:
- IRRs: rtol 1e-6 (asked for). Both solve the same score equations; the GLM runs with tol 1e-12.
- clustered CIs: rtol 1e-4 (asked for) after the documented correction: the CRV1 factor is
  G/(G-1) * (N-1)/(N-K); statsmodels counts the S stratum dummies in K = p + S, we do not (strata
  nested in subject clusters, fixest's "nested" rule; ``conditional.py``), so our covariance is the
  GLM's times (N-p-S)/(N-p). With subject x month strata S is the number of strata, not of
  subjects, and the factor is checked as such.
- strata without any episode carry no information (their dummy's MLE is -inf): the GLM is fitted
  on the rows of strata with episodes, which leaves the MLE unchanged.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from threadpoolctl import threadpool_limits

from pipeline.analysis_config import AnalysisConfig
from pipeline.features import build_panel
from pipeline.models.lags import fit_lags
from pipeline.synth import generate


KEPT = ("exercise_min", "fluid_l", "electrolytes", "alcohol_units", "magnesium_mg")


@pytest.fixture(scope="module")
def panel_and_ds():
    ds = generate(60, 100, seed=11, lagged=True)
    # A few factors (continuous, yes/no, custom) keep the dummy GLM quick; the others are
    # absent from the panel and get rows saying so.
    daily = ds.daily.select("subject_id", "date", *KEPT)
    panel = build_panel(daily.lazy(), ds.episodes.lazy(), None, custom_factors=ds.custom_factors)
    return panel, ds


def reference_design(frame: pl.DataFrame, lags: dict[str, int]) -> pl.DataFrame:
    """Explicit lag columns by self-join on the calendar date; complete windows only."""
    out = frame.select("subject_id", "date", "episodes")
    for name, L in lags.items():
        for lag in range(L + 1):
            shifted = frame.select("subject_id", (pl.col("date") + pl.duration(days=lag))
                                   .alias("date"), pl.col(name).alias(f"{name}_l{lag}"))
            out = out.join(shifted, on=["subject_id", "date"], how="left")
    return out.drop_nulls()


def glm(frame: pl.DataFrame, columns: list[str], strata: pl.Series):
    codes = strata.to_numpy()
    dummies = (codes[:, None] == np.unique(codes)[None, :]).astype(float)
    X = np.column_stack([frame.select(columns).to_numpy(), dummies])
    subjects = frame["subject_id"].to_numpy()
    with threadpool_limits(1):  # a small dense problem: BLAS threads only contend
        fit = _glm(X, frame, subjects)
    return fit, dummies.shape[1]


def _glm(X, frame, subjects):
    return sm.GLM(frame["episodes"].to_numpy().astype(float), X,
                  family=sm.families.Poisson()).fit(
        cov_type="cluster", cov_kwds={"groups": np.unique(subjects, return_inverse=True)[1]},
        tol=1e-12, maxiter=300)


def _with_events(frame: pl.DataFrame, stratum: pl.Expr) -> pl.DataFrame:
    return frame.with_columns(stratum.alias("_s")).filter(
        pl.col("episodes").sum().over("_s") > 0)


@pytest.mark.parametrize("strata", ["subject", "subject_month"])
def test_lag_model_equals_glm_with_stratum_dummies_and_explicit_lags(panel_and_ds, strata):
    panel, ds = panel_and_ds
    analysis = AnalysisConfig(max_lag_days=2, strata=strata)
    res = fit_lags(panel, custom_factors=ds.custom_factors, analysis=analysis)
    lags = res.diagnostics["max_lag_days"]
    assert set(lags) == set(KEPT), res.diagnostics["not_estimated"]
    ref = reference_design(panel.frame, lags)
    # Same rows: the complete-window rule reproduced by the join.
    assert ref.height == res.diagnostics["n_subject_days"]
    stratum = (pl.col("subject_id") if strata == "subject" else
               pl.concat_str("subject_id", pl.col("date").dt.strftime("%Y-%m")))
    ref = _with_events(ref, stratum)
    columns = [f"{n}_l{lag}" for n, L in lags.items() for lag in range(L + 1)]
    fit, n_strata = glm(ref, columns, ref["_s"])
    n, p = ref.height, len(columns)
    beta, cov = fit.params[:p], fit.cov_params()[:p, :p] * (n - p - n_strata) / (n - p)
    if strata == "subject_month":
        assert n_strata > 2 * ref["subject_id"].n_unique()  # really finer than subjects

    got = res.lags.filter(~pl.col("lag").str.contains("-"))
    i = 0
    for name, L in lags.items():
        rows = got.filter(pl.col("feature") == name).sort(pl.col("lag").cast(pl.Int64))
        b, V = beta[i:i + L + 1], cov[i:i + L + 1, i:i + L + 1]
        se = np.sqrt(np.diag(V))
        np.testing.assert_allclose(rows["irr"].to_numpy(), np.exp(b), rtol=1e-6)
        np.testing.assert_allclose(rows["ci_low"].to_numpy(), np.exp(b - 1.959963984540054 * se),
                                   rtol=1e-4)
        np.testing.assert_allclose(rows["ci_high"].to_numpy(),
                                   np.exp(b + 1.959963984540054 * se), rtol=1e-4)
        cum = res.lags.filter((pl.col("feature") == name) & (pl.col("lag") == f"0-{L}"))
        s, s_se = b.sum(), np.sqrt(V.sum())
        np.testing.assert_allclose(cum["irr"][0], np.exp(s), rtol=1e-6)
        np.testing.assert_allclose(cum["ci_high"][0], np.exp(s + 1.959963984540054 * s_se),
                                   rtol=1e-4)
        i += L + 1


def test_day_of_week_adjustment_equals_glm_with_weekday_dummies(panel_and_ds):
    panel, ds = panel_and_ds
    analysis = AnalysisConfig(max_lag_days=1, adjust=("day_of_week",))
    res = fit_lags(panel, custom_factors=ds.custom_factors, analysis=analysis)
    lags = res.diagnostics["max_lag_days"]
    ref = _with_events(reference_design(panel.frame, lags), pl.col("subject_id"))
    weekday = [f"wd{d}" for d in range(2, 8)]
    ref = ref.with_columns((pl.col("date").dt.weekday() == d).cast(pl.Float64).alias(f"wd{d}")
                           for d in range(2, 8))
    columns = [f"{n}_l{lag}" for n, L in lags.items() for lag in range(L + 1)]
    fit, _ = glm(ref, columns + weekday, ref["subject_id"])
    got = res.lags.filter((pl.col("feature") == "alcohol_units") & (pl.col("lag") == "1"))
    np.testing.assert_allclose(got["irr"][0], np.exp(fit.params[columns.index(
        "alcohol_units_l1")]), rtol=1e-6)
