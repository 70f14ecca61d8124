"""Invariants and refusals of the count-model estimators, as specifications.

- A Poisson model with an intercept reproduces the observed total: fitted episodes sum to observed
  episodes (the intercept's score equation). With subject effects it holds subject by subject.
- A model that cannot be estimated says so, naming the features, instead of printing a number.
- Benjamini-Hochberg q-values equal statsmodels' ``fdr_bh`` adjusted p-values, ignoring NaNs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from pipeline.errors import UserError
from pipeline.models import (
    EstimationError,
    benjamini_hochberg,
    fit_conditional_poisson,
    fit_poisson,
    within_group_variation,
)


def table(text: str) -> dict[str, np.ndarray]:
    """Parse a small whitespace-separated table with a header row into float columns."""
    lines = [line.split() for line in text.strip().splitlines()]
    header, rows = lines[0], lines[1:]
    return {h: np.array([float(r[i]) for r in rows]) for i, h in enumerate(header)}


def panel(seed=0, n_subjects=30, days=20):
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), days)
    n = subject.size
    frailty = rng.normal(0, 0.5, n_subjects)
    X = np.column_stack([rng.normal(size=n), (rng.random(n) < 0.4).astype(float),
                         rng.uniform(0, 3, n)])
    y = rng.poisson(np.exp(-0.5 + frailty[subject] + X @ [0.3, -0.5, 0.2])).astype(float)
    return X, y, subject


NAMES = ["stress", "poor_posture", "fluid_l"]


# ------------------------------------------------------------------ fitted totals


def test_fitted_episodes_sum_to_observed_episodes_with_an_intercept():
    X, y, subject = panel()
    fit = fit_poisson(X, y, clusters=subject, feature_names=NAMES)
    assert fit.fitted.sum() == pytest.approx(y.sum(), rel=1e-10)
    # ... and the same for every feature's score equation: sum x_j (y - mu) = 0.
    np.testing.assert_allclose(X.T @ (y - fit.fitted), 0, atol=1e-7 * y.sum())


def test_fitted_episodes_sum_to_observed_with_an_exposure_offset():
    X, y, subject = panel(seed=1)
    offset = np.log(np.random.default_rng(2).uniform(0.2, 2, y.size))
    fit = fit_poisson(X, y, clusters=subject, offset=offset, feature_names=NAMES)
    assert fit.fitted.sum() == pytest.approx(y.sum(), rel=1e-10)


def test_within_subject_fitted_episodes_sum_to_observed_within_every_subject():
    X, y, subject = panel(seed=3)
    y[subject == 4] = 0  # a subject without episodes: fitted 0, dropped and counted
    fit = fit_conditional_poisson(X, y, groups=subject, clusters=subject, feature_names=NAMES)
    observed = np.bincount(subject, weights=y)
    np.testing.assert_allclose(np.bincount(subject, weights=fit.fitted), observed,
                               rtol=1e-10, atol=1e-12)
    assert fit.n_groups_dropped_all_zero == 1 and fit.fixed_effects[4] == -np.inf
    assert fit.n_obs == y.size - 20 and fit.n_obs_dropped == 20
    # log mu = x'beta + alpha_subject
    np.testing.assert_allclose(np.log(fit.fitted[subject != 4]),
                               (X @ fit.coef + fit.fixed_effects[subject])[subject != 4],
                               rtol=1e-10, atol=1e-10)


def test_rescaling_a_feature_rescales_its_coefficient_only():
    """Units matter: caffeine per mg vs per 100 mg gives IRRs that are powers of each other."""
    X, y, subject = panel(seed=5)
    a = fit_conditional_poisson(X, y, groups=subject, clusters=subject, feature_names=NAMES)
    X2 = X.copy()
    X2[:, 2] *= 100
    b = fit_conditional_poisson(X2, y, groups=subject, clusters=subject, feature_names=NAMES)
    np.testing.assert_allclose(b.coef * [1, 1, 100], a.coef, rtol=1e-8)
    np.testing.assert_allclose(b.p_value, a.p_value, rtol=1e-7)


def test_subject_level_shifts_of_a_feature_leave_the_within_subject_estimate_unchanged():
    """Within-subject estimates use only deviations from each person's own days: adding a
    subject-level constant to a feature (here a huge one, 5000 units, which would overflow a
    naive exp() and cost 9 digits in a naive Hessian) must change nothing."""
    X, y, subject = panel(seed=4)
    shifted = X.copy()
    shifted[:, 0] += 5000.0 * (subject % 2)
    a = fit_conditional_poisson(X, y, groups=subject, clusters=subject, feature_names=NAMES)
    b = fit_conditional_poisson(shifted, y, groups=subject, clusters=subject,
                                feature_names=NAMES)
    np.testing.assert_allclose(b.coef, a.coef, rtol=1e-9)
    np.testing.assert_allclose(b.cov_model, a.cov_model, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(b.cov_cluster, a.cov_cluster, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(b.fitted, a.fitted, rtol=1e-9)


def test_intervals_contain_the_estimate_and_p_values_agree_with_them():
    X, y, subject = panel(seed=6)
    for fit in (fit_poisson(X, y, clusters=subject, feature_names=NAMES),
                fit_conditional_poisson(X, y, groups=subject, clusters=subject,
                                        feature_names=NAMES)):
        assert np.all((fit.ci_low < fit.irr) & (fit.irr < fit.ci_high))
        excludes_one = (fit.ci_low > 1) | (fit.ci_high < 1)
        np.testing.assert_array_equal(excludes_one, fit.p_value < 0.05)


# ------------------------------------------------------------------ refusals


def test_a_constant_feature_is_refused_by_name():
    X, y, subject = panel()
    X = np.column_stack([X, np.full(y.size, 2.0)])
    with pytest.raises(EstimationError, match="without variation.*heat_c") as err:
        fit_poisson(X, y, clusters=subject, feature_names=[*NAMES, "heat_c"])
    assert err.value.reason == "no_variation" and err.value.features == ("heat_c",)
    assert isinstance(err.value, UserError)  # the CLI turns it into one message, exit 2


def test_a_yes_no_level_without_episodes_is_separation():
    """
    electrolytes  episodes
           0          2
           0          0
           0          1
           1          0      <- no episode on any 'yes' day: IRR would be 0
           1          0
    """
    t = table("""
        stress electrolytes episodes subject
        1.0    0            2        1
        0.5    0            0        1
        2.0    0            1        2
        1.5    1            0        2
        0.2    1            0        3
        1.1    0            3        3
    """)
    X = np.column_stack([t["stress"], t["electrolytes"]])
    with pytest.raises(EstimationError, match="separation.*electrolytes") as err:
        fit_poisson(X, t["episodes"], clusters=t["subject"],
                    feature_names=["stress", "electrolytes"])
    assert err.value.reason == "separation" and err.value.features == ("electrolytes",)


def test_a_yes_no_level_with_all_the_episodes_is_separation_too():
    X, y, subject = panel()
    X[:, 1] = (y > 0).astype(float)
    with pytest.raises(EstimationError, match="poor_posture"):
        fit_poisson(X, y, clusters=subject, feature_names=NAMES)


def test_collinear_features_are_named():
    X, y, subject = panel()
    total = X[:, 0] + 2 * X[:, 2]
    X = np.column_stack([X, total])
    with pytest.raises(EstimationError, match="collinear") as err:
        fit_poisson(X, y, clusters=subject, feature_names=[*NAMES, "load"])
    assert err.value.reason == "collinear"
    assert set(err.value.features) == {"stress", "fluid_l", "load"}


def test_a_duplicate_of_the_intercept_is_named_without_an_intercept():
    X, y, subject = panel()
    X = np.column_stack([np.ones(y.size), X, np.full(y.size, 3.0)])
    with pytest.raises(EstimationError, match="collinear") as err:
        fit_poisson(X, y, clusters=subject, feature_names=["one", *NAMES, "three"],
                    add_intercept=False)
    assert set(err.value.features) == {"one", "three"}


def test_no_episodes_one_cluster_and_missing_values_are_refused():
    X, y, subject = panel()
    with pytest.raises(EstimationError, match="no events") as err:
        fit_poisson(X, np.zeros_like(y), clusters=subject, feature_names=NAMES)
    assert err.value.reason == "no_events"
    with pytest.raises(EstimationError, match="at least 2 clusters"):
        fit_poisson(X, y, clusters=np.zeros_like(subject), feature_names=NAMES)
    X[5, 1] = np.nan
    with pytest.raises(EstimationError, match="missing or infinite.*poor_posture"):
        fit_poisson(X, y, clusters=subject, feature_names=NAMES)
    with pytest.raises(EstimationError, match="missing or infinite.*poor_posture"):
        fit_conditional_poisson(X, y, groups=subject, clusters=subject, feature_names=NAMES)
    with pytest.raises(EstimationError, match="2 feature names for 3"):
        fit_poisson(X, y, clusters=subject, feature_names=NAMES[:2])


def test_a_subject_level_feature_has_no_within_subject_estimate():
    """Sex, or a subject's usual intake: constant within each person, absorbed by the subject
    effect."""
    X, y, subject = panel()
    usual = np.random.default_rng(0).normal(size=30)[subject]
    X = np.column_stack([X, usual])
    assert within_group_variation(X, subject).tolist() == [True, True, True, False]
    with pytest.raises(EstimationError, match="within-subject variation.*usual_fluid_l") as err:
        fit_conditional_poisson(X, y, groups=subject, clusters=subject,
                                feature_names=[*NAMES, "usual_fluid_l"])
    assert err.value.reason == "no_variation" and err.value.features == ("usual_fluid_l",)
    # The population model can estimate it (between-subject information).
    fit_poisson(X, y, clusters=subject, feature_names=[*NAMES, "usual_fluid_l"])


def test_within_group_variation_spec():
    t = table("""
        subject  stress  electrolytes  sex  episodes
        2        3       0             1    0
        1        1       1             0    1
        2        3       1             1    0
        1        2       1             0    2
        3        4       0             1    1
        3        1       0             1    0
    """)
    X = np.column_stack([t["stress"], t["electrolytes"], t["sex"]])
    assert within_group_variation(X, t["subject"]).tolist() == [True, True, False]
    # electrolytes varies only within subject 2, who has no episodes: no usable variation.
    with pytest.raises(EstimationError, match="within-subject variation") as err:
        fit_conditional_poisson(X[:, :2], t["episodes"], groups=t["subject"],
                                clusters=t["subject"], feature_names=["stress", "electrolytes"])
    assert err.value.features == ("electrolytes",)


def test_within_subject_separation_is_refused():
    """Within every subject, the days with episodes are that subject's lowest-fluid days."""
    X, y, subject = panel(seed=8)
    order = np.lexsort((y, subject))             # within subject: ascending episodes
    X, y = X[order], y[order]
    rank = np.zeros(y.size)
    for s in np.unique(subject):                 # lowest fluid on the days with episodes
        rows = np.flatnonzero(subject == s)
        rank[rows] = np.where(y[rows] > 0, 0.0, 1.0 + np.arange(rows.size))
    X[:, 2] = rank
    with pytest.raises(EstimationError, match="within-subject separation.*fluid_l"):
        fit_conditional_poisson(X, y, groups=subject, clusters=subject, feature_names=NAMES)


def test_within_subject_collinearity_after_demeaning_is_named():
    X, y, subject = panel()
    shift = np.random.default_rng(1).normal(size=30)[subject]   # subject-level, absorbed
    X = np.column_stack([X, X[:, 0] + shift])                   # = stress within subjects
    with pytest.raises(EstimationError, match="collinear") as err:
        fit_conditional_poisson(X, y, groups=subject, clusters=subject,
                                feature_names=[*NAMES, "stress_plus_trait"])
    assert set(err.value.features) == {"stress", "stress_plus_trait"}


def test_separation_by_a_combination_of_features_is_refused():
    """No single feature separates, but 'a yes and b no' days never have episodes: the a - b
    direction runs to -infinity. Both models must refuse, naming a and b."""
    rng = np.random.default_rng(0)
    subject = np.repeat(np.arange(100), 20)
    kind = rng.integers(0, 3, subject.size)          # (a, b) = (0, 0), (1, 1) or (1, 0)
    a, b = (kind >= 1).astype(float), (kind == 1).astype(float)
    y = np.where(kind == 2, 0, rng.poisson(1.0, subject.size)).astype(float)
    X = np.column_stack([a, b, rng.normal(size=subject.size)])
    for fit, kwargs in ((fit_poisson, {"clusters": subject}),
                        (fit_conditional_poisson, {"groups": subject, "clusters": subject})):
        with pytest.raises(EstimationError, match="separation") as err:
            fit(X, y, feature_names=["a", "b", "c"], **kwargs)
        assert err.value.reason == "separation" and err.value.features == ("a", "b")


def test_the_large_data_warm_start_does_not_change_the_answer(monkeypatch):
    """Above WARM_START_MIN_ROWS Newton starts from a fit on every 16th row; force that path on
    small data and compare with the cold start."""
    import pipeline.models.estimation as estimation

    X, y, subject = panel(seed=9, n_subjects=200, days=40)
    cold_pop = fit_poisson(X, y, clusters=subject, feature_names=NAMES)
    cold_fe = fit_conditional_poisson(X, y, groups=subject, clusters=subject,
                                      feature_names=NAMES)
    monkeypatch.setattr(estimation, "WARM_START_MIN_ROWS", 1000)
    warm_pop = fit_poisson(X, y, clusters=subject, feature_names=NAMES)
    warm_fe = fit_conditional_poisson(X, y, groups=subject, clusters=subject,
                                      feature_names=NAMES)
    for cold, warm in ((cold_pop, warm_pop), (cold_fe, warm_fe)):
        np.testing.assert_allclose(warm.coef, cold.coef, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(warm.cov_cluster, cold.cov_cluster, rtol=1e-7, atol=1e-14)
        assert warm.n_iter <= cold.n_iter
    # An explicit start (e.g. a related model's estimates) is honoured and changes nothing.
    restarted = fit_conditional_poisson(X, y, groups=subject, clusters=subject,
                                        feature_names=NAMES, start=cold_fe.coef)
    np.testing.assert_allclose(restarted.coef, cold_fe.coef, rtol=1e-9, atol=1e-12)
    assert restarted.n_iter <= 2  # one step, to see the deviance settle
    with pytest.raises(EstimationError, match="start must hold 4"):
        fit_poisson(X, y, clusters=subject, feature_names=NAMES, start=np.zeros(3))


def test_threaded_passes_give_the_single_threaded_answer(monkeypatch):
    """Large data is streamed in blocks split between threads; force tiny blocks and three
    workers on small data and compare with one block per pass."""
    import pipeline.models.estimation as estimation

    X, y, subject = panel(seed=10, n_subjects=60, days=30)
    one = (fit_poisson(X, y, clusters=subject, feature_names=NAMES),
           fit_conditional_poisson(X, y, groups=subject, clusters=subject, feature_names=NAMES))
    monkeypatch.setattr(estimation, "CHUNK_ROWS", 50)
    monkeypatch.setattr(estimation, "worker_count", lambda n_blocks: 3)
    many = (fit_poisson(X, y, clusters=subject, feature_names=NAMES),
            fit_conditional_poisson(X, y, groups=subject, clusters=subject, feature_names=NAMES))
    for a, b in zip(one, many):
        np.testing.assert_allclose(b.coef, a.coef, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(b.cov_cluster, a.cov_cluster, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(b.fitted, a.fitted, rtol=1e-10)


def test_no_subject_with_episodes_is_refused():
    X, y, subject = panel()
    with pytest.raises(EstimationError, match="no events"):
        fit_conditional_poisson(X, np.zeros_like(y), groups=subject, clusters=subject,
                                feature_names=NAMES)


# ------------------------------------------------------------------ Benjamini-Hochberg


def test_benjamini_hochberg_spec():
    """
    p       q      (m = 4 non-missing; q_i = min_{j >= i} p_(j) m / j)
    0.010   0.040
    0.020   0.040
    NaN     NaN    (feature not estimated: not counted)
    0.030   0.040
    0.500   0.500
    """
    t = table("""
        p      q
        0.010  0.040
        0.020  0.040
        nan    nan
        0.030  0.040
        0.500  0.500
    """)
    np.testing.assert_allclose(benjamini_hochberg(t["p"]), t["q"], equal_nan=True)


def test_benjamini_hochberg_of_nothing_and_of_all_missing():
    assert benjamini_hochberg(np.array([])).shape == (0,)
    assert np.isnan(benjamini_hochberg(np.array([np.nan, np.nan]))).all()
    with pytest.raises(ValueError):
        benjamini_hochberg(np.array([0.2, 1.5]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1), st.just(float("nan")),
                          st.sampled_from([0.0, 0.01, 0.05, 1.0])), min_size=1, max_size=40))
def test_benjamini_hochberg_matches_statsmodels(p):
    p = np.array(p)
    q = benjamini_hochberg(p)
    ok = ~np.isnan(p)
    assert np.array_equal(np.isnan(q), ~ok)
    if ok.any():
        ref = multipletests(p[ok], method="fdr_bh")[1]
        np.testing.assert_allclose(q[ok], ref, rtol=1e-12, atol=1e-15)
        assert np.all(q[ok] >= p[ok] - 1e-15)


@pytest.mark.parametrize("module", ["poisson", "conditional", "multiplicity"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"pipeline.models.{module}"))
    assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------------------ any input: a fit or a reason


@st.composite
def small_designs(draw):
    """Tiny panels: 2-8 subjects of 1-12 days, 1-3 features (continuous, yes/no, sparse
    integer, constant, subject-level, or a copy of the previous one), sparse counts."""
    n_subjects = draw(st.integers(2, 8))
    days = draw(st.lists(st.integers(1, 12), min_size=n_subjects, max_size=n_subjects))
    subject = np.repeat(np.arange(n_subjects), days)
    n = subject.size
    p = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    cols = []
    kinds = ["normal", "binary", "count", "constant", "subject", "copy"]
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=p, max_size=p)):
        if kind == "copy" and cols:
            cols.append(2 * cols[-1])
        elif kind == "constant":
            cols.append(np.full(n, 1.5))
        elif kind == "subject":
            cols.append(rng.normal(size=n_subjects)[subject])
        elif kind == "normal":
            cols.append(rng.normal(size=n))
        elif kind == "binary":
            cols.append((rng.random(n) < draw(st.floats(0.05, 0.95))).astype(float))
        else:
            cols.append(rng.poisson(0.5, n).astype(float))
    X = np.column_stack(cols)
    y = (rng.poisson(draw(st.floats(0.05, 2.0)), n) * (rng.random(n) < 0.7)).astype(float)
    return X, y, subject


@settings(max_examples=40, deadline=None)
@given(small_designs())
def test_any_small_panel_gives_a_fit_or_a_stated_reason(design):
    """Never a solver traceback: either a finite estimate satisfying the score equations, or an
    EstimationError saying why."""
    X, y, subject = design
    names = [f"f{j}" for j in range(X.shape[1])]
    for fit, kwargs in ((fit_poisson, {"clusters": subject}),
                        (fit_conditional_poisson, {"groups": subject, "clusters": subject})):
        try:
            result = fit(X, y, feature_names=names, **kwargs)
        except EstimationError as err:
            assert err.reason and str(err)
            continue
        assert np.all(np.isfinite(result.coef)) and np.all(np.isfinite(result.se))
        assert np.all(result.se >= 0)
        if fit is fit_poisson:
            assert result.fitted.sum() == pytest.approx(y.sum(), rel=1e-8)
        else:
            np.testing.assert_allclose(np.bincount(subject, weights=result.fitted),
                                       np.bincount(subject, weights=y), rtol=1e-8, atol=1e-10)
