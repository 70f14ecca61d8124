"""``[analysis]`` strata and time adjustment reach every within-subject model of effects.csv.

With lags 0..0 the lag model is the within_subject model (same features, same complete cases),
and the lag model equals statsmodels GLMs with stratum dummies (tests/test_lags_reference.py),
so equal estimates here (rtol 1e-6) carry that reference over to effects.csv."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.analysis_config import AnalysisConfig
from pipeline.features import build_panel
from pipeline.models import fit_models
from pipeline.models.lags import fit_lags
from pipeline.synth import generate


@pytest.fixture(scope="module")
def synth_panel():
    ds = generate(80, 90, seed=3)
    panel = build_panel(ds.daily.lazy(), ds.episodes.lazy(), ds.injuries.lazy(),
                        custom_factors=ds.custom_factors)
    return panel, ds.custom_factors


@pytest.mark.parametrize("analysis", [
    AnalysisConfig(max_lag_days=0, strata="subject_month"),
    AnalysisConfig(max_lag_days=0, strata="subject_month", adjust=("day_of_week",
                                                                   "days_in_study")),
])
def test_within_subject_effects_use_the_chosen_strata(synth_panel, analysis):
    panel, custom = synth_panel
    models = fit_models(panel, custom_factors=custom, dose_response=False, analysis=analysis)
    effects = models.effects.filter(pl.col("model") == "within_subject")
    lags = fit_lags(panel, custom_factors=custom, analysis=analysis).lags.filter(
        pl.col("lag") == "0")
    joined = effects.join(lags, on="feature", suffix="_lag").filter(pl.col("irr").is_not_null())
    assert joined.height >= 10
    np.testing.assert_allclose(joined["irr"].to_numpy(), joined["irr_lag"].to_numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(joined["ci_low"].to_numpy(), joined["ci_low_lag"].to_numpy(),
                               rtol=1e-4)
    assert all(analysis.describe() in note for note in effects["note"])
    assert models.diagnostics["analysis"]["strata"] == "subject_month"
    default = fit_models(panel, custom_factors=custom, dose_response=False)
    d = default.effects.filter(pl.col("model") == "within_subject")["irr"].to_numpy()
    assert not np.allclose(d[~np.isnan(d)], effects["irr"].drop_nulls().to_numpy())


def test_default_analysis_leaves_the_notes_unchanged(synth_panel):
    panel, custom = synth_panel
    models = fit_models(panel, custom_factors=custom, dose_response=False)
    assert not any("strata" in (n or "") for n in models.effects["note"])
    assert models.diagnostics["analysis"]["description"] == "strata: subject"


def test_crv1_counts_only_the_slopes_when_strata_nest_in_the_subject_clusters():
    """conditional.py's CRV1 factor G/(G-1) * (N-1)/(N-K): K = p for subject x month strata
    (nested in subjects, their score sums vanish per cluster), K = p + groups when the groups
    cut across clusters. The GLM comparison of this K is in tests/test_lags_reference.py."""
    from pipeline.models.conditional import fit_conditional_poisson

    rng = np.random.default_rng(0)
    subject = np.repeat(np.arange(40), 60)
    month = np.tile(np.arange(60) // 30, 40)
    x = rng.normal(size=(subject.size, 2))
    y = rng.poisson(np.exp(-1 + 0.2 * x[:, 0]))
    strata = subject * 2 + month
    fit = fit_conditional_poisson(x, y, groups=strata, clusters=subject, feature_names=["a", "b"])
    G, N, p = fit.n_clusters, fit.n_obs, 2
    assert fit.groups_nested_in_clusters
    assert fit.small_sample_factor == pytest.approx(G / (G - 1) * (N - 1) / (N - p), rel=1e-12)
    # Subjects span both months: clustered by month they are not nested in the clusters.
    crossing = fit_conditional_poisson(x, y, groups=subject, clusters=month,
                                       feature_names=["a", "b"])
    S = crossing.n_groups_used
    assert not crossing.groups_nested_in_clusters
    assert crossing.small_sample_factor == pytest.approx(
        2 / 1 * (N - 1) / (N - p - S), rel=1e-12)
