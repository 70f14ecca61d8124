"""The natural-spline lag basis (L > 7): dlnm's knots, the natural cubic spline space, and the lag
estimates of a long-lag custom factor against a GLM with an independently built cross-basis.

The spline check: scipy's natural cubic interpolating splines through the same knots span the
natural cubic spline space, so each must be reproduced exactly by our basis (residual < 1e-10).
Lag estimates are invariant to the basis of that space, so a GLM on ``x_lag @ B`` with B built
from scipy's splines gives the same per-lag IRRs (rtol 1e-6) and CIs (rtol 1e-4, documented CRV1
correction as in test_lags_reference.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.interpolate import CubicSpline

from pipeline.analysis_config import AnalysisConfig
from pipeline.features import build_panel
from pipeline.models.lag_basis import FREE_LAGS_UP_TO, lag_basis, log_knots
from pipeline.models.lags import fit_lags
from pipeline.schema import CustomFactor
from pipeline.synth import generate, truth
from tests.test_lags_reference import glm, reference_design, _with_events


def test_knots_are_dlnms_logknots():
    # dlnm: logknots(21, 3) = 0 + exp(((1 + log(21)) / 4) * 1:3 - 1), by hand:
    # (1 + 3.0445224) / 4 = 1.0111306 -> exp(0.0111306), exp(1.0222612), exp(2.0333917)
    np.testing.assert_allclose(log_knots(21), [1.011193, 2.779473, 7.639956], rtol=1e-6)
    assert log_knots(10).tolist() == sorted(log_knots(10).tolist())


def test_up_to_a_week_each_lag_is_free():
    for L in range(FREE_LAGS_UP_TO + 1):
        C, _ = lag_basis(L)
        np.testing.assert_array_equal(C, np.eye(L + 1))


@pytest.mark.parametrize("L", [8, 10, 21, 28])
def test_spline_basis_spans_the_natural_cubic_splines(L):
    C, text = lag_basis(L)
    knots = np.r_[0.0, log_knots(L), float(L)]
    assert C.shape == (L + 1, knots.size) and "natural cubic spline" in text
    lags = np.arange(L + 1)
    for k in range(knots.size):
        values = np.eye(knots.size)[k]
        target = CubicSpline(knots, values, bc_type="natural")(lags)
        coef, *_ = np.linalg.lstsq(C, target, rcond=None)
        assert np.abs(C @ coef - target).max() < 1e-10


def test_custom_factor_with_ten_lags_and_month_strata_matches_a_glm():
    ds = generate(40, 100, seed=5, lagged=True)
    custom = (CustomFactor(**{**truth.CUSTOM_FACTOR, "max_lag_days": 10}),)
    daily = ds.daily.select("subject_id", "date", "exercise_min", "magnesium_mg")
    panel = build_panel(daily.lazy(), ds.episodes.lazy(), None, custom_factors=custom)
    res = fit_lags(panel, custom_factors=custom,
                   analysis=AnalysisConfig(max_lag_days=1, strata="subject_month"))
    assert res.diagnostics["max_lag_days"] == {"exercise_min": 1, "magnesium_mg": 10}
    mg = res.lags.filter(pl.col("feature") == "magnesium_mg")
    assert mg["lag"].to_list() == [str(k) for k in range(11)] + ["0-10"]
    assert mg["irr"].null_count() == 0

    ref = reference_design(panel.frame, res.diagnostics["max_lag_days"])
    assert ref.height == res.diagnostics["n_subject_days"]
    ref = _with_events(ref, pl.concat_str("subject_id", pl.col("date").dt.strftime("%Y-%m")))
    knots = np.r_[0.0, log_knots(10), 10.0]
    B = np.column_stack([CubicSpline(knots, np.eye(knots.size)[k], bc_type="natural")(
        np.arange(11)) for k in range(knots.size)])
    xlag = ref.select([f"magnesium_mg_l{lag}" for lag in range(11)]).to_numpy()
    ref = ref.with_columns(pl.Series(f"mg_b{k}", xlag @ B[:, k]) for k in range(knots.size))
    columns = ["exercise_min_l0", "exercise_min_l1"] + [f"mg_b{k}" for k in range(knots.size)]
    fit, n_strata = glm(ref, columns, ref["_s"])
    n, p = ref.height, len(columns)
    theta = fit.params[2:p]
    V = fit.cov_params()[2:p, 2:p] * (n - p - n_strata) / (n - p)
    beta, se = B @ theta, np.sqrt(np.diag(B @ V @ B.T))
    per_lag = mg.filter(~pl.col("lag").str.contains("-"))
    np.testing.assert_allclose(per_lag["irr"].to_numpy(), np.exp(beta), rtol=1e-6)
    np.testing.assert_allclose(per_lag["ci_low"].to_numpy(), np.exp(beta - 1.959964 * se),
                               rtol=1e-4)
    cum_se = np.sqrt(np.ones(11) @ B @ V @ B.T @ np.ones(11))
    np.testing.assert_allclose(mg["irr"][-1], np.exp(beta.sum()), rtol=1e-6)
    np.testing.assert_allclose(mg["ci_high"][-1], np.exp(beta.sum() + 1.959964 * cum_se),
                               rtol=1e-4)
