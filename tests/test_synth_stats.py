"""The planted truth is recoverable: statsmodels fits on generated panels find the planted effects.

The reference panel here is built independently of ``pipeline.features`` (a test of the generator,
not of the feature code): one row per logged day, episodes counted on that calendar date,
``recent_injury`` = any injury on d-30..d-1, complete cases only (the blanking is MCAR), each
feature divided by its documented unit.

Tolerances: with the true model, each estimate's z = (estimate - planted) / SE is ~N(0, 1). We ask
|z| ≤ 3.5 for every feature (13 features: a family-wise false alarm rate under 1% per panel) and,
for the confounded scenario, a pooled bias of more than 3 cluster-robust SEs. Seeds are fixed, so
the tests are deterministic; the slow test checks coverage over several seeds.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from statsmodels.discrete.conditional_models import ConditionalPoisson

from pipeline import synth

Z_MAX = 3.5


def panel(ds: synth.SynthDataset) -> tuple[pl.DataFrame, list[str]]:
    """Complete-case subject-day panel in the documented units, plus the feature names."""
    recent = (
        ds.daily.select("subject_id", "date")
        .join(ds.injuries.select("subject_id", pl.col("date").alias("injured")), on="subject_id")
        .filter(pl.col("injured").is_between(pl.col("date") - pl.duration(days=30),
                                             pl.col("date") - pl.duration(days=1)))
        .select("subject_id", "date").unique().with_columns(recent_injury=pl.lit(True))
    )
    counts = ds.episodes.group_by("subject_id", pl.col("started_at").dt.date().alias("date")).len(
        "episodes")
    features = list(ds.truth["planted"])
    per = {f: v["per"] for f, v in ds.truth["planted"].items()}
    p = (ds.daily.join(recent, on=["subject_id", "date"], how="left")
         .join(counts, on=["subject_id", "date"], how="left")
         .with_columns(pl.col("recent_injury").fill_null(False), pl.col("episodes").fill_null(0))
         .drop_nulls()
         .select("subject_id", "episodes",
                 *[(pl.col(f).cast(pl.Float64) / per[f]).alias(f) for f in features]))
    return p, features


def within_subject_fit(p: pl.DataFrame, features: list[str]):
    groups = p["subject_id"].cast(pl.Categorical).to_physical().to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # subjects without variation are dropped, as they should be
        return ConditionalPoisson(p["episodes"].to_numpy(), p.select(features).to_numpy(),
                                  groups=groups).fit(disp=0)


def pooled_fit(p: pl.DataFrame, features: list[str]):
    groups = p["subject_id"].cast(pl.Categorical).to_physical().to_numpy()
    X = sm.add_constant(p.select(features).to_numpy())
    return sm.GLM(p["episodes"].to_numpy(), X, family=sm.families.Poisson()).fit(
        cov_type="cluster", cov_kwds={"groups": groups})


def z_scores(fit, features, planted, offset=0) -> dict[str, float]:
    return {f: (fit.params[i + offset] - planted[f]["log_coef"]) / fit.bse[i + offset]
            for i, f in enumerate(features)}


@pytest.fixture(scope="module")
def plain():
    return synth.generate(400, 120, seed=101)


@pytest.fixture(scope="module")
def confounded():
    return synth.generate(400, 120, seed=101, confounded=True)


def test_within_subject_poisson_recovers_every_planted_effect(plain):
    p, features = panel(plain)
    z = z_scores(within_subject_fit(p, features), features, plain.truth["planted"])
    assert {f: round(v, 2) for f, v in z.items() if abs(v) > Z_MAX} == {}
    assert np.mean(np.abs(list(z.values()))) < 1.5


def test_pooled_poisson_is_unbiased_without_confounding(plain):
    p, features = panel(plain)
    z = z_scores(pooled_fit(p, features), features, plain.truth["planted"], offset=1)
    assert {f: round(v, 2) for f, v in z.items() if abs(v) > Z_MAX} == {}


def test_confounding_biases_the_pooled_model_upward_for_stress_and_sitting(plain, confounded):
    planted = confounded.truth["planted"]
    p, features = panel(confounded)
    pooled = pooled_fit(p, features)
    z = z_scores(pooled, features, planted, offset=1)
    assert z["stress"] > 3 and z["sitting_h"] > 3
    # The pooled IRRs exceed the truth by a clinically visible margin, unlike without confounding.
    est = dict(zip(features, np.exp(pooled.params[1:])))
    p0, _ = panel(plain)
    est0 = dict(zip(features, np.exp(pooled_fit(p0, features).params[1:])))
    for f in ("stress", "sitting_h"):
        assert est[f] > planted[f]["irr"] * 1.04
        assert est[f] - est0[f] > 0.03
    # The within-subject model is not fooled.
    zw = z_scores(within_subject_fit(p, features), features, planted)
    assert {f: round(v, 2) for f, v in zw.items() if abs(v) > Z_MAX} == {}


def test_confounding_is_a_between_subject_association_as_documented(plain, confounded):
    gain = confounded.truth["confounding"]["log_frailty_gain_per_unit_of_habitual_level"]
    slope = confounded.truth["subject_level_log_frailty_slope"]
    slope0 = plain.truth["subject_level_log_frailty_slope"]
    assert plain.truth["confounding"] is None
    # Same seed, same gamma draws: the confounding adds exactly gamma to the (OLS) slope of log
    # frailty on the habitual levels; without it the slope is chance alone.
    for f in ("stress", "sitting_h"):
        assert slope[f] - slope0[f] == pytest.approx(gain[f]["gamma"], abs=2e-6)
        assert abs(slope0[f]) < 0.1
    # Same seed: the daily exposures are identical, only the rates (hence episodes) differ.
    assert plain.daily.equals(confounded.daily)
    assert confounded.truth["within_subject_truth"] == plain.truth["within_subject_truth"]

    def subject_slope(ds):
        """Poisson slope of each subject's episode total on their mean stress (offset: days)."""
        per_subject = (ds.daily.group_by("subject_id").agg(pl.len().alias("days"),
                                                           pl.col("stress").mean())
                       .join(ds.episodes.group_by("subject_id").len("episodes"), on="subject_id",
                             how="left").with_columns(pl.col("episodes").fill_null(0)))
        fit = sm.GLM(per_subject["episodes"].to_numpy(),
                     sm.add_constant(per_subject["stress"].to_numpy()),
                     family=sm.families.Poisson(),
                     offset=np.log(per_subject["days"].to_numpy())).fit()
        return fit.params[1]

    assert subject_slope(confounded) - subject_slope(plain) > 0.1


@pytest.mark.slow
def test_within_subject_intervals_cover_the_truth_over_seeds():
    """95% Wald intervals over 6 seeds × 13 features: coverage consistent with 95%."""
    covered, total = 0, 0
    for seed in range(6):
        ds = synth.generate(250, 90, seed=1000 + seed, confounded=seed % 2 == 1)
        p, features = panel(ds)
        z = z_scores(within_subject_fit(p, features), features, ds.truth["planted"])
        covered += sum(abs(v) <= 1.96 for v in z.values())
        total += len(z)
    # Binomial(78, 0.95): the 0.5% lower quantile is 68.
    assert covered >= 68, f"{covered}/{total}"
