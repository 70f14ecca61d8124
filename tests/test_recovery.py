"""Planted-effect recovery on synthetic data (``pipeline.synth``), over several seeds.

Tolerances (binomial, stated once here):

- Coverage: each of the 13 planted IRRs (12 core + the custom magnesium factor) in ``population``
  and ``within_subject`` over ``SEEDS`` datasets gives n = 13 × 2 × 10 = 260 intervals. If the
  95% intervals are right, the number that miss the truth is Binomial(260, 0.05): mean 13, and
  4 ≤ misses ≤ 25 holds with probability > 0.998 (the 0.1% and 99.9% quantiles). Per model
  (n = 130) misses ≤ 15. Intervals from one dataset share its noise, so the count is
  over-dispersed relative to a binomial; the seeds are fixed, so the test is deterministic.
- Nulls: the planted nulls (poor_posture, caffeine_mg, alcohol_units) in both primary models,
  plus the lagged load features (the generator's rate depends on same-day values only, so given
  the core features they are null): n = 3 × 2 × 10 + 2 × 10 = 80 tests, each reaching q < 0.05
  with probability at most 0.05 (q ≥ p); we allow at most 11 (99.9% quantile of
  Binomial(80, 0.05)).
- Confounded scenario: subjects with higher habitual stress and sitting are frailer; the pooled
  ``population`` model must be biased upward (its whole 95% CI above the planted IRR) while
  ``within_subject`` covers the planted IRR, on each of two seeds.

Panel size: 300 subjects × 120 days (about 30,000 subject-days) per seed, about 0.3 s per fit.
"""

from __future__ import annotations

import polars as pl
import pytest
from scipy import stats

from pipeline.features import build_panel
from pipeline.models import fit_models
from pipeline.synth import generate

SEEDS = tuple(range(10))
N_SUBJECTS, N_DAYS = 300, 120
CONFIDENCE = 0.95
TAIL = 0.001
LAGGED_NULLS = ("training_load_prev_day", "acute_chronic_load_ratio")
PRIMARY = ("population", "within_subject")

pytestmark = pytest.mark.slow


def _fit(seed: int, *, confounded: bool = False, dose_response: bool = False):
    ds = generate(N_SUBJECTS, N_DAYS, seed, confounded=confounded)
    panel = build_panel(ds.daily.lazy(), ds.episodes.lazy(), ds.injuries.lazy(),
                        custom_factors=ds.custom_factors)
    results = fit_models(panel, custom_factors=ds.custom_factors, dose_response=dose_response)
    return ds, results


@pytest.fixture(scope="module")
def runs() -> pl.DataFrame:
    frames = []
    for seed in SEEDS:
        ds, results = _fit(seed)
        truth = {k: v["irr"] for k, v in ds.truth["within_subject_truth"].items()}
        nulls = set(ds.truth["null_features"])
        frames.append(results.effects.with_columns(
            seed=pl.lit(seed),
            truth=pl.col("feature").replace_strict(truth, default=None, return_dtype=pl.Float64),
            planted_null=pl.col("feature").is_in(nulls),
        ))
    return pl.concat(frames)


def test_95_percent_intervals_cover_the_planted_irrs_at_a_95_percent_rate(runs):
    planted = runs.filter(pl.col("model").is_in(PRIMARY) & pl.col("truth").is_not_null())
    assert planted["irr"].null_count() == 0, "every planted feature is estimated"
    planted = planted.with_columns(
        miss=~pl.col("truth").is_between(pl.col("ci_low"), pl.col("ci_high")))
    n = planted.height
    assert n == 13 * 2 * len(SEEDS)
    misses = int(planted["miss"].sum())
    low, high = (stats.binom.ppf(q, n, 1 - CONFIDENCE) for q in (TAIL, 1 - TAIL))
    assert low <= misses <= high, f"{misses} of {n} intervals miss (allowed {low:.0f}–{high:.0f})"
    for model in PRIMARY:
        part = planted.filter(pl.col("model") == model)
        allowed = stats.binom.ppf(1 - TAIL, part.height, 1 - CONFIDENCE)
        assert part["miss"].sum() <= allowed, model


def test_null_factors_reach_q_below_005_no_more_often_than_chance(runs):
    nulls = runs.filter(
        (pl.col("model").is_in(PRIMARY) & pl.col("planted_null"))
        | ((pl.col("model") == "within_subject_lagged") & pl.col("feature").is_in(LAGGED_NULLS))
    )
    n = nulls.height
    assert n == (3 * 2 + 2) * len(SEEDS)
    assert nulls["q_value"].null_count() == 0
    significant = int((nulls["q_value"] < 0.05).sum())
    allowed = stats.binom.ppf(1 - TAIL, n, 0.05)
    assert significant <= allowed, f"{significant} of {n} null tests with q < 0.05"


def test_strong_planted_effects_are_found_within_subject(runs):
    # Not a tolerance but a power sanity check: these effects are large for 30,000 subject-days.
    strong = runs.filter((pl.col("model") == "within_subject")
                         & pl.col("feature").is_in(["recent_injury", "stress", "exercise_rpe"]))
    assert (strong["q_value"] < 0.05).all()


@pytest.mark.parametrize("seed", [101, 102])
def test_confounded_scenario_population_is_biased_within_subject_is_not(seed):
    ds, results = _fit(seed, confounded=True)
    truth = ds.truth["within_subject_truth"]
    for feature in ("stress", "sitting_h"):
        planted = truth[feature]["irr"]
        pop = results.effects.filter((pl.col("model") == "population")
                                     & (pl.col("feature") == feature)).row(0, named=True)
        within = results.effects.filter((pl.col("model") == "within_subject")
                                        & (pl.col("feature") == feature)).row(0, named=True)
        assert pop["ci_low"] > planted, f"population {feature} not visibly biased: {pop}"
        assert within["ci_low"] <= planted <= within["ci_high"], f"within {feature}: {within}"


def test_dose_response_curve_follows_a_planted_log_linear_effect():
    ds, results = _fit(SEEDS[0], dose_response=True)
    planted = ds.truth["within_subject_truth"]["stress"]["irr"]  # per 1 point
    curve = results.dose_response.filter(pl.col("feature") == "stress")
    expected = planted ** (curve["x"] - curve["reference_x"])
    inside = ((curve["ci_low"] <= expected) & (expected <= curve["ci_high"])).mean()
    # Pointwise bands over a 41-point grid are strongly correlated; a correct curve sits inside
    # almost everywhere.
    assert inside >= 0.9
