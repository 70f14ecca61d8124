"""Model assembly: effects.csv rows, data sufficiency, complete cases, output files, user errors.

Diaries here are small and hand-built (numpy, fixed seeds) so each test states the one thing it
checks; planted-effect recovery on the synthetic generator lives in test_recovery.py.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from pipeline import schema
from pipeline.errors import UserError
from pipeline.features import build_panel
from pipeline.models import fit_models, write_model_outputs
from pipeline.models import effects as ef
from pipeline.models.multiplicity import benjamini_hochberg

START = date(2026, 1, 1)
NO_INJURIES = pl.LazyFrame(schema={"subject_id": pl.String, "date": pl.Date,
                                   "muscle_group": pl.String})


def diary(n_subjects: int = 60, n_days: int = 60, seed: int = 0, *, log_irr=None,
          columns=None, base_rate: float = 0.3):
    """A daily table and episodes with Poisson counts: log rate = log(base_rate) + subject effect
    + sum(log_irr[c] * column c in model units). ``columns`` maps name -> (n_subjects, n_days)
    array of source values (np.nan = missing; booleans as 0/1 for boolean columns)."""
    rng = np.random.default_rng(seed)
    columns = dict(columns or {
        "stress": rng.integers(0, 11, (n_subjects, n_days)).astype(float),
        "fluid_l": np.round(rng.gamma(8, 0.25, (n_subjects, n_days)), 1),
        "electrolytes": (rng.random((n_subjects, n_days)) < 0.3).astype(float),
    })
    log_irr = log_irr or {}
    eta = np.log(base_rate) + rng.normal(0, 0.3, (n_subjects, 1)) + np.zeros((n_subjects, n_days))
    for name, b in log_irr.items():
        feature = ef.fd.FEATURES.get(name)
        scale = feature.scale if feature else 1.0
        eta = eta + b * np.nan_to_num(columns[name]) / scale
    counts = rng.poisson(np.exp(eta))
    sid = np.repeat([f"s{i:03d}" for i in range(n_subjects)], n_days)
    days = np.tile(np.arange(n_days), n_subjects)
    frame = {"subject_id": sid, "date": [START + timedelta(days=int(d)) for d in days]}
    for name, values in columns.items():
        flat = values.ravel()
        if name in schema.FACTOR_COLUMNS and schema.FACTOR_COLUMNS[name].kind == "bool" or \
                name.startswith("is_"):
            frame[name] = pl.Series(name, flat == 1, dtype=pl.Boolean).scatter(
                np.flatnonzero(np.isnan(flat)), None)
        else:
            frame[name] = pl.Series(name, flat, dtype=pl.Float64, nan_to_null=True)
    daily = pl.DataFrame(frame).lazy()
    rep = counts.ravel()
    ep_sid = np.repeat(sid, rep)
    ep_day = np.repeat(days, rep)
    episodes = pl.DataFrame({
        "subject_id": ep_sid,
        "started_at": [datetime(2026, 1, 1, 12) + timedelta(days=int(d)) for d in ep_day],
    }, schema={"subject_id": pl.String, "started_at": pl.Datetime("us")}).lazy()
    return daily, episodes


def fit(daily, episodes, custom_factors=(), injuries=NO_INJURIES):
    panel = build_panel(daily, episodes, injuries, custom_factors=custom_factors)
    return fit_models(panel, custom_factors=custom_factors)


def row(results, model, feature) -> dict:
    rows = results.effects.filter((pl.col("model") == model) & (pl.col("feature") == feature))
    assert rows.height == 1, (model, feature)
    return rows.row(0, named=True)


@pytest.fixture(scope="module")
def basic():
    return fit(*diary(log_irr={"stress": np.log(1.1), "fluid_l": np.log(0.8)}))


def test_effects_table_has_the_contract_columns_one_row_per_model_and_feature(basic):
    effects = basic.effects
    assert tuple(effects.columns) == ef.EFFECTS_COLUMNS
    assert effects.select("model", "feature").is_duplicated().sum() == 0
    assert effects["model"].unique(maintain_order=True).to_list() == list(ef.MODEL_ORDER)
    # every core feature has a row in each primary model, estimated or not
    for model in ef.PRIMARY_MODELS:
        assert effects.filter(pl.col("model") == model)["feature"].to_list() == [
            f.name for f in ef.fd.CORE_FEATURES]
    # sorted: re-sorting changes nothing
    assert ef.sort_effects(effects.sample(fraction=1.0, shuffle=True, seed=1)).equals(effects)


def test_estimates_and_unit_labels(basic):
    stress = row(basic, "within_subject", "stress")
    assert stress["unit"] == "per 1 point"
    assert stress["ci_low"] < 1.1 < stress["ci_high"]
    fluid = row(basic, "population", "fluid_l")
    assert fluid["ci_low"] < 0.8 < fluid["ci_high"]
    assert row(basic, "population", "electrolytes")["unit"] == "yes vs no"


def test_features_a_study_did_not_log_get_a_row_with_the_reason(basic):
    sitting = row(basic, "population", "sitting_h")
    assert sitting["irr"] is None and sitting["p_value"] is None
    assert sitting["note"] == "not estimated: not logged in this dataset (daily has no 'sitting_h' values)"
    # secondary models say so too
    lagged = row(basic, "within_subject_lagged", "training_load_prev_day")
    assert lagged["irr"] is None and "exercise_min" in lagged["note"]


def test_q_values_are_benjamini_hochberg_within_each_model(basic):
    for model in ef.MODEL_ORDER:
        part = basic.effects.filter((pl.col("model") == model) & pl.col("p_value").is_not_null())
        if part.height:
            expected = benjamini_hochberg(part["p_value"].to_numpy())
            np.testing.assert_allclose(part["q_value"].to_numpy(), expected)
    assert basic.effects.filter(pl.col("p_value").is_null())["q_value"].null_count() == \
        basic.effects.filter(pl.col("p_value").is_null()).height


def test_population_fitted_episodes_sum_to_observed(basic):
    d = basic.diagnostics["models"]["population"]
    assert d["fitted_total"] == pytest.approx(d["observed_total"], rel=1e-8)
    calibration = d["calibration"]
    assert [c["decile"] for c in calibration] == list(range(1, 11))
    assert sum(c["observed_episodes"] for c in calibration) == d["n_episodes"]
    assert 0.5 < d["pearson_dispersion"] < 2


def test_binary_feature_with_under_30_days_at_a_level_gets_no_estimate():
    rng = np.random.default_rng(3)
    n, days = 40, 40
    rare = np.zeros((n, days))
    rare.flat[rng.choice(n * days, 29, replace=False)] = 1  # 29 subject-days "yes"
    cols = {"stress": rng.integers(0, 11, (n, days)).astype(float), "poor_posture": rare}
    results = fit(*diary(n, days, 3, columns=cols))
    for model in ("population", "within_subject"):
        r = row(results, model, "poor_posture")
        assert r["irr"] is None
        assert "only 29 subject-days with poor_posture = yes" in r["note"]
        assert "need at least 30" in r["note"]
        assert "poor_posture" not in results.diagnostics["models"][model]["features_in_design"]
        assert row(results, model, "stress")["irr"] is not None
    info = results.diagnostics["models"]["population"]["sufficiency"]["poor_posture"]
    assert info["status"] == "not_estimated" and info["n_days_yes"] == 29


def test_exactly_30_days_at_a_level_is_enough():
    rng = np.random.default_rng(4)
    n, days = 40, 40
    flag = np.zeros((n, days))
    flag.flat[rng.choice(n * days, 30, replace=False)] = 1
    cols = {"stress": rng.integers(0, 11, (n, days)).astype(float), "poor_posture": flag}
    results = fit(*diary(n, days, 4, columns=cols))
    assert row(results, "population", "poor_posture")["irr"] is not None


def test_a_subject_level_feature_has_no_within_subject_estimate():
    rng = np.random.default_rng(5)
    n, days = 50, 40
    habitual = np.repeat(rng.uniform(0, 10, n)[:, None], days, axis=1)  # constant per subject
    cols = {"stress": rng.integers(0, 11, (n, days)).astype(float), "sitting_h": habitual}
    results = fit(*diary(n, days, 5, columns=cols))
    assert row(results, "population", "sitting_h")["irr"] is not None
    within = row(results, "within_subject", "sitting_h")
    assert within["irr"] is None
    assert "varies within only 0 subject(s)" in within["note"]
    assert row(results, "within_subject", "stress")["irr"] is not None


def test_complete_case_drops_are_counted_and_stated():
    rng = np.random.default_rng(6)
    n, days = 40, 50
    stress = rng.integers(0, 11, (n, days)).astype(float)
    fluid = np.round(rng.gamma(8, 0.25, (n, days)), 1)
    stress.flat[:100] = np.nan  # 100 subject-days without stress
    fluid.flat[50:150] = np.nan  # 50 more without fluid (50 overlap)
    results = fit(*diary(n, days, 6, columns={"stress": stress, "fluid_l": fluid}))
    pop = row(results, "population", "stress")
    assert pop["n_subject_days"] == n * days - 150
    assert "150 of 2,000 subject-days dropped for a missing value" in pop["note"]
    assert results.diagnostics["models"]["population"][
        "n_subject_days_dropped_incomplete"] == 150


def test_a_mostly_missing_feature_is_left_out_rather_than_shrinking_every_estimate():
    rng = np.random.default_rng(7)
    n, days = 40, 50
    caffeine = rng.uniform(0, 400, (n, days))
    caffeine[:, 10:] = np.nan  # logged on 20% of days only
    cols = {"stress": rng.integers(0, 11, (n, days)).astype(float), "caffeine_mg": caffeine}
    results = fit(*diary(n, days, 7, columns=cols))
    r = row(results, "population", "caffeine_mg")
    assert r["irr"] is None and "missing on 1,600 of 2,000 subject-days (80%" in r["note"]
    assert row(results, "population", "stress")["n_subject_days"] == n * days


def test_collinear_custom_factors_keep_the_first_and_explain_the_second():
    rng = np.random.default_rng(8)
    n, days = 40, 40
    airq = rng.uniform(0, 100, (n, days))
    cols = {"stress": rng.integers(0, 11, (n, days)).astype(float), "airq": airq,
            "airq_copy": airq * 2}
    custom = tuple(schema.CustomFactor(column=c, factor="air_quality", label=c, kind="numeric",
                                       unit="index points", scale=10) for c in ("airq",
                                                                                "airq_copy"))
    results = fit(*diary(n, days, 8, columns=cols), custom_factors=custom)
    assert row(results, "population", "airq")["irr"] is not None
    second = row(results, "population", "airq_copy")
    assert second["irr"] is None and "collinear" in second["note"]
    assert row(results, "population", "airq")["unit"] == "per 10 index points"
    assert row(results, "population", "airq")["factor"] == "air_quality"


def test_dose_response_curves_are_relative_to_the_median_within_the_1st_to_99th_percentile(basic):
    curve = basic.dose_response.filter(pl.col("feature") == "fluid_l")
    assert tuple(basic.dose_response.columns) == ("model", "feature", "unit", "x", "reference_x",
                                                  "irr", "ci_low", "ci_high")
    assert curve["model"].unique().to_list() == ["within_subject"]
    assert curve["unit"].unique().to_list() == ["L"]
    reference = curve["reference_x"][0]
    at_reference = curve.filter(pl.col("x") == reference)
    assert at_reference["irr"].to_list() == [pytest.approx(1.0)]
    assert (curve["ci_low"] <= curve["irr"]).all() and (curve["irr"] <= curve["ci_high"]).all()
    assert curve["x"].is_sorted()
    # stress is planted log-linear (IRR 1.1 per point): the curve at +2 points is near 1.21
    stress = basic.dose_response.filter(pl.col("feature") == "stress")
    ref = stress["reference_x"][0]
    near = stress.filter((pl.col("x") - (ref + 2)).abs() < 0.15)
    assert near.height and near["ci_low"][0] < 1.21 < near["ci_high"][0]
    # binary features get no curve
    assert "electrolytes" not in basic.dose_response["feature"].to_list()


def test_write_model_outputs_is_atomic_and_stable(tmp_path, basic):
    write_model_outputs(basic, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["diagnostics.json", "dose_response.csv", "effects.csv"]
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_model_outputs(basic, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    header = first["effects.csv"].decode().splitlines()[0]
    assert header == ",".join(ef.EFFECTS_COLUMNS)
    back = pl.read_csv(tmp_path / "effects.csv", infer_schema_length=0)
    assert back.height == basic.effects.height
    assert back.filter(pl.col("feature") == "sitting_h")["irr"].to_list() == [None, None]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_episodes", "no episodes fall on logged days"),
        ("one_subject", "at least 2 subjects"),
        ("no_factor_columns", "none of the factor columns"),
        ("no_usable_feature", "no feature has enough data.*recent_injury: only 0 subject-days"),
        ("no_daily_rows", "no accepted daily rows"),
    ],
)
def test_a_dataset_too_small_to_fit_is_a_user_error(case, message):
    daily, episodes = diary(6, 20, 9)
    injuries = NO_INJURIES
    if case == "no_episodes":
        episodes = episodes.head(0)
    elif case == "one_subject":
        daily = daily.filter(pl.col("subject_id") == "s000")
    elif case == "no_factor_columns":
        daily = daily.select("subject_id", "date")
        injuries = None
    elif case == "no_usable_feature":
        daily = daily.select("subject_id", "date")  # only recent_injury, never "yes"
    elif case == "no_daily_rows":
        daily = daily.head(0)
    with pytest.raises(UserError, match=message):
        fit(daily, episodes, injuries=injuries)


def test_episodes_only_on_unlogged_days_say_so():
    daily, episodes = diary(6, 20, 10)
    shifted = episodes.with_columns(pl.col("started_at") + pl.duration(days=400))
    with pytest.raises(UserError, match=r"episode\(s\) fell on days without a daily row"):
        fit(daily, shifted)


def test_a_feature_that_separates_is_dropped_with_a_reason_not_a_traceback():
    # No episode ever falls on a day with electrolytes: its IRR would be 0.
    rng = np.random.default_rng(11)
    n, days = 40, 40
    stress = rng.integers(0, 11, (n, days)).astype(float)
    electrolytes = (rng.random((n, days)) < 0.3).astype(float)
    daily, episodes = diary(n, days, 11, columns={"stress": stress,
                                                  "electrolytes": electrolytes})
    panel_days = daily.collect().with_row_index("i")
    yes_days = panel_days.filter(pl.col("electrolytes")).select(
        "subject_id", pl.col("date").cast(pl.Datetime("us")).dt.offset_by("12h").alias(
            "started_at"))
    episodes = episodes.join(yes_days.lazy(), on=["subject_id", "started_at"], how="anti")
    results = fit(daily, episodes)
    r = row(results, "population", "electrolytes")
    assert r["irr"] is None and "separation" in r["note"]
    assert row(results, "population", "stress")["irr"] is not None


def test_dose_response_on_a_large_panel_uses_a_stated_subset_of_whole_subjects(monkeypatch):
    from pipeline.models import dose_response

    monkeypatch.setattr(dose_response, "MAX_SUBJECT_DAYS", 1000)
    results = fit(*diary(60, 60, 12, log_irr={"stress": np.log(1.1)}))
    subset = results.diagnostics["dose_response"]["subset"]
    assert subset["n_subject_days"] <= 1000 < subset["of_subject_days"]
    assert subset["n_subjects"] < subset["of_subjects"] == 60
    assert results.dose_response.filter(pl.col("feature") == "stress").height > 0
    # the effect estimates still use every subject-day
    assert row(results, "within_subject", "stress")["n_subject_days"] == subset["of_subject_days"]


def test_one_subject_with_episodes_cannot_support_a_within_subject_model():
    daily, episodes = diary(6, 40, 13)
    episodes = episodes.filter(pl.col("subject_id") == "s000")
    with pytest.raises(UserError, match="within_subject model: only 1 subject"):
        fit(daily, episodes)


def test_population_rows_match_statsmodels_on_the_same_complete_cases():
    """The assembly (units, complete cases, column mapping) against an independent reference:
    statsmodels GLM Poisson with subject-clustered errors (its default small-sample correction,
    which ``poisson.py`` documents using as well)."""
    import statsmodels.api as sm

    rng = np.random.default_rng(14)
    n, days = 50, 40
    stress = rng.integers(0, 11, (n, days)).astype(float)
    stress.flat[rng.choice(n * days, 80, replace=False)] = np.nan
    heat = rng.normal(15, 8, (n, days)).round(1)
    cols = {"stress": stress, "heat_c": heat,
            "electrolytes": (rng.random((n, days)) < 0.3).astype(float)}
    daily, episodes = diary(n, days, 14, columns=cols,
                            log_irr={"stress": np.log(1.1), "heat_c": np.log(1.05)})
    panel = build_panel(daily, episodes, None)
    results = fit_models(panel, dose_response=False)

    df = panel.frame.drop_nulls(["stress", "heat_c", "electrolytes"])
    X = sm.add_constant(df.select("stress", "heat_c", "electrolytes").to_numpy())
    groups = df["subject_id"].rank("dense").to_numpy()
    ref = sm.GLM(df["episodes"].to_numpy(), X, family=sm.families.Poisson()).fit(
        cov_type="cluster", cov_kwds={"groups": groups})
    ci = np.exp(ref.conf_int())
    for j, name in enumerate(["stress", "heat_c", "electrolytes"], start=1):
        r = row(results, "population", name)
        assert r["irr"] == pytest.approx(np.exp(ref.params[j]), rel=1e-6)
        assert r["ci_low"] == pytest.approx(ci[j, 0], rel=1e-4)
        assert r["ci_high"] == pytest.approx(ci[j, 1], rel=1e-4)
        assert r["n_subject_days"] == df.height
    # heat is per 5 °C: the panel holds °C / 5, so the IRR is exp(5 × per-°C coefficient)
    assert row(results, "population", "heat_c")["unit"] == "per 5 °C"
