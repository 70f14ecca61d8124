"""The lag design as a specification: complete windows only, never a 0 for a day nobody logged.

Each case is a small diary (subject, day, exposure) and the rows the lag model keeps with their
lagged values."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from pipeline.analysis_config import AnalysisConfig
from pipeline.dataset_config import load_dataset_config
from pipeline.errors import UserError
from pipeline.features import dictionary as fd
from pipeline.models.lags import (LAGS, LagTerm, combine_buckets, lag_design_bucket,
                                  sort_lags)
from pipeline.models.time_strata import frame_for_analysis

FEATURE = next(f for f in fd.CORE_FEATURES if f.name == "exercise_min")
D0 = date(2026, 3, 1)


def diary(text: str) -> pl.DataFrame:
    """``subject day x episodes`` lines; x ``.`` is a missing value."""
    rows = [line.split() for line in text.strip().splitlines()[1:]]
    return pl.DataFrame({
        "subject_id": [r[0] for r in rows],
        "date": [D0 + timedelta(days=int(r[1])) for r in rows],
        "exercise_min": [None if r[2] == "." else float(r[2]) for r in rows],
        "episodes": [int(r[3]) for r in rows],
    })


def design(frame: pl.DataFrame, L: int):
    return lag_design_bucket(frame, [LagTerm(FEATURE, L, np.eye(L + 1))])


DIARY = diary("""
subject day exercise episodes
A       0   10       0
A       1   20       1
A       2   30       0
A       4   40       2
A       5   50       0
A       6   .        1
A       7   70       0
A       8   80       1
B       9   90       1
B       10  100      0
""")


def test_lag_one_keeps_only_days_whose_previous_day_was_logged():
    # Kept: A1 (A0 logged), A2, A5 (A4), A8 (A7), B10 (B9). Dropped: A0 and B9 (first diary
    # day), A4 (day 3 unlogged), A6 (missing value), A7 (its previous day A6 is missing).
    d = design(DIARY, 1)
    assert d.X.tolist() == [[20, 10], [30, 20], [50, 40], [80, 70], [100, 90]]
    assert d.y.tolist() == [1, 0, 0, 1, 0]
    assert d.subjects.tolist() == [0, 0, 0, 0, 1]
    assert (d.n_window_incomplete, d.n_value_missing) == (3, 2)


def test_a_gap_is_never_read_as_zero():
    d = design(DIARY, 2)
    # Lag 2: only A2 (A0 and A1 logged); A8 is dropped too, as A6 is missing.
    assert d.X.tolist() == [[30, 20, 10]]
    assert not np.any(d.X == 0)


def test_a_lag_never_reaches_into_the_previous_subject():
    # B9 is the day after A8 in the calendar, but another person's diary.
    d = design(DIARY, 1)
    assert [100, 90] in d.X.tolist() and [90, 80] not in d.X.tolist()


def test_buckets_of_whole_subjects_give_the_design_of_the_whole_panel():
    whole = design(DIARY, 1)
    parts = [design(DIARY.filter(pl.col("subject_id") == s), 1) for s in ("A", "B")]
    combined = combine_buckets(parts)
    np.testing.assert_array_equal(combined.X, whole.X)
    np.testing.assert_array_equal(combined.subjects, whole.subjects)
    assert combined.n_window_incomplete == whole.n_window_incomplete


def test_subject_month_strata_and_weekday_columns():
    frame = diary("""
subject day exercise episodes
A       29  1        0
A       30  1        0
A       31  1        0
B       0   1        0
""")  # March 30 and 31 are one stratum, April 1 the next; B its own
    out, adjusters = frame_for_analysis(frame, AnalysisConfig(strata="subject_month",
                                                              adjust=("day_of_week",)))
    assert out["_stratum"].to_list() == [0, 0, 1, 2]
    assert [f.name for f in adjusters] == ["_dow_tue", "_dow_wed", "_dow_thu", "_dow_fri",
                                           "_dow_sat", "_dow_sun"]
    # 2026-03-30 is a Monday (the reference), 03-31 a Tuesday, 04-01 a Wednesday.
    assert out["_dow_tue"].to_list() == [0, 1, 0, 0] and out["_dow_wed"].to_list() == [0, 0, 1, 0]


def test_lags_csv_columns_are_exactly_the_issue_s():
    assert LAGS.names == ("model", "factor", "feature", "unit", "lag", "irr", "ci_low",
                          "ci_high", "p_value", "n_subjects", "n_subject_days", "n_episodes",
                          "note")


def test_rows_sort_by_factor_feature_and_lag_with_the_cumulative_last():
    rows = pl.DataFrame({c: [None] * 4 for c in LAGS.names}, schema=LAGS.schema()).with_columns(
        model=pl.lit("within_subject_lags"), factor=pl.lit("fatigue_overuse"),
        feature=pl.lit("exercise_min"), lag=pl.Series(["0-10", "10", "2", "0"]))
    assert sort_lags(rows)["lag"].to_list() == ["0", "2", "10", "0-10"]


# [analysis] in dataset.toml

def _config(tmp_path, text):
    (tmp_path / "dataset.toml").write_text(text)
    return load_dataset_config(tmp_path)


def test_analysis_defaults_and_choices(tmp_path):
    assert _config(tmp_path, "").analysis == AnalysisConfig(3, "subject", ())
    config = _config(tmp_path, '[analysis]\nmax_lag_days = 7\nstrata = "subject_month"\n'
                               'adjust = ["days_in_study", "day_of_week"]\n')
    assert config.analysis == AnalysisConfig(7, "subject_month", ("day_of_week", "days_in_study"))


@pytest.mark.parametrize("text, names", [
    ('[analysis]\nlag = 3\n', ["lag", "adjust, max_lag_days, strata"]),
    ('[analysis]\nstrata = "month"\n', ["strata", '"subject", "subject_month"']),
    ('[analysis]\nadjust = ["season"]\n', ["adjust", '"day_of_week", "days_in_study"']),
    ('[analysis]\nadjust = "day_of_week"\n', ["adjust", '"day_of_week"']),
    ('[analysis]\nmax_lag_days = 29\n', ["max_lag_days", "0 to 28"]),
    ('[analysis]\nmax_lag_days = 2.5\n', ["max_lag_days", "0 to 28"]),
    ('[[custom_factors]]\ncolumn = "airq"\nfactor = "air"\nlabel = "Air"\nkind = "numeric"\n'
     'max_lag_days = -1\n', ["max_lag_days", "0 to 28"]),
])
def test_bad_analysis_settings_name_the_key_and_the_allowed_values(tmp_path, text, names):
    with pytest.raises(UserError) as error:
        _config(tmp_path, text)
    for name in names:
        assert name in str(error.value)


def test_a_custom_factor_may_set_its_own_lag(tmp_path):
    config = _config(tmp_path, '[[custom_factors]]\ncolumn = "airq"\nfactor = "air"\n'
                               'label = "Air"\nkind = "numeric"\nmax_lag_days = 10\n')
    assert config.custom_factors[0].max_lag_days == 10


def test_the_subset_for_large_panels_holds_whole_subjects_and_is_stable():
    from pipeline.models.lags import subject_subset

    frame = pl.DataFrame({"subject_id": [f"S{i:04d}" for i in range(1000) for _ in range(10)],
                          "x": range(10_000)})
    sub, note = subject_subset(frame, 3000)
    again, _ = subject_subset(frame.reverse(), 3000)
    assert set(sub["subject_id"]) == set(again["subject_id"])          # order-free, by id
    assert (sub.group_by("subject_id").len()["len"] == 10).all()        # whole subjects
    assert 2400 < sub.height < 3600 and note["n_subjects"] == sub.height // 10
    assert subject_subset(frame, 20_000) == (frame, None)


# The whole job: `cramp synth --lagged`, a dataset.toml with [analysis] and a 10-day custom
# factor, `cramp run --no-report` -> lags.csv and its diagnostics.

@pytest.mark.slow
def test_cramp_run_writes_lags_csv_with_the_dataset_s_analysis_choices(tmp_path):
    from tests.test_cli import cramp

    data = tmp_path / "data"
    result = cramp("synth", "--out", str(data), "--subjects", "60", "--days", "75", "--seed",
                   "4", "--lagged")
    assert result.returncode == 0, result.stderr
    truth = (tmp_path / "data.truth.json").read_text()
    assert '"planted_lags"' in truth and '"alcohol_units"' in truth
    toml = (data / "dataset.toml").read_text().replace(
        'description = "Magnesium', 'max_lag_days = 10\ndescription = "Magnesium')
    (data / "dataset.toml").write_text(
        toml + '\n[analysis]\nmax_lag_days = 2\nstrata = "subject_month"\n'
               'adjust = ["day_of_week"]\n')
    out = tmp_path / "out"
    result = cramp("run", "--data", str(data), "--out", str(out), "--no-report")
    assert result.returncode == 0, result.stderr
    lags = pl.read_csv(out / "lags.csv")
    assert tuple(lags.columns) == LAGS.names
    mg = lags.filter(pl.col("feature") == "magnesium_mg")
    assert mg["lag"].to_list() == [str(k) for k in range(11)] + ["0-10"]
    ex = lags.filter(pl.col("feature") == "exercise_min")
    assert ex["lag"].to_list() == ["0", "1", "2", "0-2"]
    assert ex["note"][0].startswith("strata: subject x calendar month (time-stratified), "
                                    "adjusted for day of week")
    import json

    diagnostics = json.loads((out / "diagnostics.json").read_text())
    assert diagnostics["analysis"]["strata"] == "subject_month"
    assert diagnostics["lags"]["lag_basis"]["magnesium_mg"].startswith("natural cubic spline")
    assert "flat_lag_curve" in diagnostics["lags"]["joint_tests"]["exercise_min"]
    effects = pl.read_csv(out / "effects.csv").filter(pl.col("model") == "within_subject")
    assert all("subject x calendar month" in n for n in effects["note"] if n)


def test_a_bad_analysis_value_is_one_message_and_exit_2(tmp_path):
    from tests.test_cli import assert_user_error, cramp

    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.toml").write_text('[analysis]\nstrata = "weekly"\n')
    result = cramp("run", "--data", str(data), "--out", str(tmp_path / "out"), "--no-report")
    assert_user_error(result, "strata", '"subject", "subject_month"')
