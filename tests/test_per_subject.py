"""Stage one of the per-patient estimates: each person's own Poisson fit (``per_subject.py``).

Reference: statsmodels ``GLM(y, [1, X], Poisson())`` on that person's complete days, with the
features the person's diary can inform. Tolerances: coefficients to 1e-7 (both solvers converge
to ~1e-10; statsmodels is run with tol=1e-12), model-based variances to a relative 1e-5 (ours
are the inverse Hessian one Newton step before the optimum: ~1e-6 relative).
The minimum-data rules are spec tests on small hand-made diaries.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm

from pipeline import synth
from pipeline.features import build_panel
from pipeline.features import dictionary as fd
from pipeline.models import fit_models
from pipeline.models.per_subject import MIN_DAYS_PER_LEVEL, MIN_EPISODES, fit_subject_bucket
from pipeline.models.subject_effects import subject_buckets, within_features


@pytest.fixture(scope="module")
def fitted():
    ds = synth.generate(60, 200, seed=11)
    panel = build_panel(ds.daily.lazy(), ds.episodes.lazy(), ds.injuries.lazy(),
                        custom_factors=ds.custom_factors)
    models = fit_models(panel, custom_factors=ds.custom_factors, dose_response=False)
    features, start = within_features(models.effects, ds.custom_factors)
    rows = fit_subject_bucket(panel.frame, features, start)
    return panel, features, rows


def test_own_estimates_equal_statsmodels_poisson_on_the_persons_rows(fitted):
    panel, features, rows = fitted
    names = [f.name for f in features]
    complete = panel.frame.drop_nulls(names)
    estimated = rows.filter(pl.col("log_irr").is_not_null())
    subjects = estimated["subject_id"].unique().sort().to_list()
    # Every estimated person (60 subjects: cheap), including those with features left out.
    assert len(subjects) >= 30
    assert rows.filter(pl.col("log_irr").is_not_null() & ~pl.col("adjusted_for_all")).height > 0
    for sid in subjects:
        mine = estimated.filter(pl.col("subject_id") == sid)
        use = mine["feature"].to_list()
        d = complete.filter(pl.col("subject_id") == sid)
        X = sm.add_constant(d.select(use).to_numpy(), has_constant="add")
        ref = sm.GLM(d["episodes"].to_numpy(), X, family=sm.families.Poisson()).fit(tol=1e-12)
        np.testing.assert_allclose(mine["log_irr"].to_numpy(), ref.params[1:], atol=1e-7)
        np.testing.assert_allclose(mine["variance"].to_numpy(), ref.bse[1:] ** 2, rtol=1e-5)
        assert mine["n_days"][0] == d.height
        assert mine["n_episodes"][0] == d["episodes"].sum()


def test_buckets_of_whole_subjects_give_the_same_rows_as_one_bucket(fitted):
    panel, features, rows = fitted
    parts = [fit_subject_bucket(b, features) for b in subject_buckets(panel.frame, 7)]
    again = pl.concat(parts)
    assert again.select("subject_id", "feature", "reason").equals(
        rows.select("subject_id", "feature", "reason"))
    np.testing.assert_allclose(again["log_irr"].to_numpy(), rows["log_irr"].to_numpy(),
                               atol=1e-8, equal_nan=True)


def _diary(days: int, *, episodes, **columns) -> pl.DataFrame:
    """One subject's panel rows: ``episodes`` and feature columns as lists (or a scalar)."""
    start = date(2026, 1, 1)
    data = {"subject_id": ["S1"] * days, "date": [start + timedelta(d) for d in range(days)],
            "episodes": episodes}
    for name, values in columns.items():
        data[name] = values if isinstance(values, list) else [values] * days
    return pl.DataFrame(data).with_columns(pl.col("episodes").cast(pl.Int64),
                                           pl.exclude("subject_id", "date", "episodes")
                                           .cast(pl.Float64))


F = fd.FEATURES
RNG = np.random.default_rng(5)
SITTING = list(RNG.uniform(4, 10, 40).round(1))
EPISODES = [1, 0] * 20  # 20 episodes on 40 days


@pytest.mark.parametrize("case, features, diary, expected", [
    # case                   features                     diary -> reason (None: estimated)
    ("enough",               ["sitting_h"],
     _diary(40, episodes=EPISODES, sitting_h=SITTING), {"sitting_h": None}),
    ("too_few_episodes",     ["sitting_h"],
     _diary(40, episodes=[1] * (MIN_EPISODES - 1) + [0] * (41 - MIN_EPISODES),
            sitting_h=SITTING), {"sitting_h": "only 9 episode(s)"}),
    ("constant_feature",     ["sitting_h", "stress"],
     _diary(40, episodes=EPISODES, sitting_h=SITTING, stress=3.0),
     {"sitting_h": None, "stress": "no variation"}),
    ("two_days_at_yes",      ["sitting_h", "electrolytes"],
     _diary(40, episodes=EPISODES, sitting_h=SITTING,
            electrolytes=[1.0] * (MIN_DAYS_PER_LEVEL - 1) + [0.0] * (41 - MIN_DAYS_PER_LEVEL)),
     {"sitting_h": None, "electrolytes": "only 2 day(s) with electrolytes = yes"}),
    ("all_episodes_at_no",   ["electrolytes"],
     _diary(40, episodes=EPISODES, electrolytes=[0.0, 1.0] * 20),
     {"electrolytes": "all of this person's episodes fell on days with electrolytes = no"}),
    ("all_at_highest_value", ["sitting_h"],
     _diary(40, episodes=EPISODES, sitting_h=[9.0, 5.0] * 20),
     {"sitting_h": "the days of their highest sitting_h"}),
    ("collinear_copy",       ["sitting_h", "stress"],
     _diary(40, episodes=EPISODES, sitting_h=SITTING, stress=[s / 2 for s in SITTING]),
     {"sitting_h": None, "stress": "collinear"}),
])
def test_minimum_data_rules(case, features, diary, expected):
    rows = fit_subject_bucket(diary, [F[n] for n in features])
    for name, reason in expected.items():
        row = rows.filter(pl.col("feature") == name).row(0, named=True)
        if reason is None:
            assert row["log_irr"] is not None and row["reason"] is None, case
        else:
            assert row["log_irr"] is None and reason in row["reason"], (case, row["reason"])


def test_a_feature_left_out_of_a_persons_design_is_stated_on_the_others():
    diary = _diary(40, episodes=EPISODES, sitting_h=SITTING, stress=3.0)
    rows = fit_subject_bucket(diary, [F["sitting_h"], F["stress"]])
    sitting = rows.filter(pl.col("feature") == "sitting_h").row(0, named=True)
    assert sitting["adjusted_for_all"] is False


def test_an_empty_bucket_and_no_features_give_no_rows():
    diary = _diary(40, episodes=EPISODES, sitting_h=SITTING)
    assert fit_subject_bucket(diary.head(0), [F["sitting_h"]]).height == 0
    assert fit_subject_bucket(diary, []).height == 0


def test_a_person_with_missing_values_is_fitted_on_their_complete_days():
    sitting = SITTING[:]
    sitting[0] = None
    diary = _diary(40, episodes=EPISODES, sitting_h=sitting)
    row = fit_subject_bucket(diary, [F["sitting_h"]]).row(0, named=True)
    assert row["n_days"] == 39 and row["n_episodes"] == 19
